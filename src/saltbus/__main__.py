"""``python -m saltbus``: the ``saltbus`` command, for when its script is not on PATH."""

from __future__ import annotations

import sys

from saltbus.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
