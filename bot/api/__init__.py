"""The front door's HTTP API (/api/v1) for principals holding a bearer token, and the CLI's client of it."""
