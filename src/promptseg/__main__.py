"""``python -m promptseg``: the ``promptseg`` command (:func:`promptseg.cli.main`)."""

import sys

from promptseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
