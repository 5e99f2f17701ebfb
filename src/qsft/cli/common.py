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
    return dict(_key_value(pair, "--env-arg", "KEY=VALUE") for pair in pairs or [])


def parse_method_sets(pairs: list[str] | None, algorithms) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`--set [ALGO.]KEY=VALUE` options: (settings for every method, {algorithm: its own settings})."""
    shared: dict[str, Any] = {}
    per_algo: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        name, value = _key_value(pair, "--set", "[ALGO.]KEY=VALUE", dotted=True)
        algo, dot, key = name.rpartition(".")
        if not dot:
            shared[key] = value
        elif algo in algorithms:
            per_algo.setdefault(algo, {})[key] = value
        else:
            raise ConfigError(f"--set {pair!r}: unknown algorithm {algo!r}; choose from {', '.join(algorithms)}")
    return shared, per_algo


def _key_value(pair: str, flag: str, shape: str, dotted: bool = False) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as JSON when it parses (`1e-3`, `true`, `[1, 2]`), else kept as text."""
    key, sep, value = pair.partition("=")
    if not sep or not all(part.isidentifier() for part in (key.split(".", 1) if dotted else [key])):
        raise ConfigError(f"{flag} expects {shape}, got {pair!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
