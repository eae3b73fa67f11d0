"""``python -m featurestore``: the same command line as the ``featurestore`` console script."""

import sys

from featurestore.cli import main

if __name__ == "__main__":
    sys.exit(main())
