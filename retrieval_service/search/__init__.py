"""The pure search engine: FAISS candidates on the Hellinger embedding, exact divergence re-ranking, and the
memory-mapped histogram store. Imports nothing else of the service (checked by import-linter)."""
