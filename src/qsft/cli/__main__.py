"""`python -m qsft.cli` (used by `accelerate launch -m qsft.cli ...`)."""

import sys

from qsft.cli import main

sys.exit(main())
