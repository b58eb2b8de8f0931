"""The aiohttp API: jobs, inventory, queue. `make_app` builds it; `orchestrator.cli api` serves it."""
