"""Entry point: ``python -m retrieval_service build|serve`` (see ``cli.py``)."""

import sys

from retrieval_service.cli import main

if __name__ == "__main__":
    sys.exit(main())
