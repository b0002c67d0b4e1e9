"""``python -m parity``: the command line lives in :mod:`parity.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
