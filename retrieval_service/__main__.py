"""``python -m retrieval_service build|serve|verify`` (see ``cli.py``; installed as ``sjft-retrieval``)."""

import sys

from retrieval_service.cli import main

if __name__ == "__main__":
    sys.exit(main())
