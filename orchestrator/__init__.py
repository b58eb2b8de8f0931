"""vmorch control plane: settings, Redis stores, the API, the router, the CLI and the lab."""
