"""`python -m qsft.cli` (used by `accelerate launch -m qsft.cli ...`)."""

import sys

from qsft.cli import main

if __name__ == "__main__":  # spawned workers (qsft bench --jobs) import this module as __mp_main__
    sys.exit(main())
