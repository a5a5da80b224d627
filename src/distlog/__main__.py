"""``python -m distlog``: the ``distlog`` command (show, plot, demo) without its script."""

import sys

from distlog.cli import main

if __name__ == "__main__":
    sys.exit(main())
