"""embserve service: HTTP (FastAPI) and gRPC transports over one core API and one table store."""
