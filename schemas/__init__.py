"""vmorch contracts: pydantic models for everything that crosses a process boundary.

This package imports nothing else of vmorch and does no I/O.
"""
