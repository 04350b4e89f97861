"""The HTTP layer: the FastAPI app factory, settings, service state, errors, middleware, metrics, query
handling and the routes."""
