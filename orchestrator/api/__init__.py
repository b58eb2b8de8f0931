"""The aiohttp API: jobs, inventory, queue. `make_app` builds it; `vmorch api` serves it."""
