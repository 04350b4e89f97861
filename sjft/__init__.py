"""The project's own namespace (``sjft``, its name on PyPI) for what has no place in the three folders the
design fixes (``services/``, ``retrieval_service/``, ``trainer/``): ``sjft.demo``."""
