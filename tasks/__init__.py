"""Workflows and their steps, run by Celery workers through the engine runner."""
