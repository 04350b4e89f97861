"""Code version recorded in every index (``index.json`` ``code_version``); keep in step with pyproject."""

__version__ = "0.1.0"
