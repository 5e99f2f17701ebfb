"""Helpers shared by the subcommand modules."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from qsft.errors import ConfigError, QSFTError


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


def parse_env_args(pairs: list[str] | None) -> dict[str, Any]:
    """`--env-arg KEY=VALUE` options as environment keyword arguments (VALUE read as JSON when it parses)."""
    kwargs: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--env-arg expects KEY=VALUE, got {pair!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs
