"""The shipped per-environment settings (`<env>.yaml`, each chosen by a sweep recorded in its comments).

An environment YAML has a `train:` section for every method, `algos.<algo>:` on top of it, a `pretrain:`
section for `qsft pretrain`, `data:` for generation and `eval:` for decoding. `qsft train`, `qsft pretrain`
and `qsft bench` read the same file, so a run started by hand trains like the bench's.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import yaml

PRETRAIN_SECTION = "pretrain"
CORPUS = "corpus"  # pretrain: corpus: {episodes, policy}: extra scripted episodes, for `qsft bench` only


def env_config_file(env: str) -> Traversable | None:
    """The shipped YAML of `env` (or of its family: every `chess-*` shares chess.yaml), if there is one."""
    family = env.split("-")[0] if env.startswith("chess") else env
    for name in (env, family):
        resource = resources.files(__name__) / f"{name}.yaml"
        if resource.is_file():
            return resource
    return None


def env_defaults(env: str) -> dict[str, Any]:
    """Per-environment hyperparameters from qsft/configs/<env>.yaml ({} when none ships)."""
    resource = env_config_file(env)
    return (yaml.safe_load(resource.read_text()) or {}) if resource is not None else {}


def is_env_config(loaded: dict[str, Any]) -> bool:
    """An environment YAML (sections) rather than a flat mapping of config fields."""
    return isinstance(loaded.get("train"), dict)


def method_settings(loaded: dict[str, Any], algo: str, known: set[str]) -> dict[str, Any]:
    """The config fields an environment YAML sets for `algo`: `train` then `algos.<algo>` on top (for
    `pretrain`, the `train` fields that pretraining has, then the `pretrain` section)."""
    if algo == PRETRAIN_SECTION:
        shared = {k: v for k, v in loaded["train"].items() if k in known}
        own = {k: v for k, v in (loaded.get(PRETRAIN_SECTION) or {}).items() if k != CORPUS}
        return {**shared, **own}
    return {**loaded["train"], **((loaded.get("algos") or {}).get(algo) or {})}
