"""Helpers shared by the subcommand modules."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from qsft.errors import QSFTError


def reports_errors(handler: Callable) -> Callable:
    """Turn a `QSFTError` into one line on stderr and exit code 2 (no traceback soup)."""

    @functools.wraps(handler)
    def wrapped(args) -> int:
        try:
            return int(handler(args) or 0)
        except QSFTError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapped
