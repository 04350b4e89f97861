"""What several service processes share through Redis: the connection (with its outage handling), the result
cache, the job registry and the rate limits. Never imports FastAPI."""
