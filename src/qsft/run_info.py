"""A run's description, OUT/qsft.json: what `train()` writes and every reader of a run (decoding, eval,
scoring, bench) loads. Its own module so that readers do not import the training stack."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from qsft.data.tokenize import TokenMDPConfig
from qsft.errors import ConfigError
from qsft.io import atomic_write_json
from qsft.models.loading import bos_token_id

RUN_FILE = "qsft.json"


@dataclass
class RunInfo:
    """The contents of OUT/qsft.json."""

    algo: str
    behavior_model: str | None = None  # relative to the run dir when inside it
    loss_variant: str | None = None
    dummy_token: str | None = None
    dummy_token_id: int | None = None
    gamma: float | None = None
    support_threshold: float | None = None
    reward: dict[str, Any] | None = None
    history_turns: int | None = None
    max_length: int = 512
    reply_tokens: int | None = None  # tokens reserved after each state's context (None: a run from before it)
    data: str | None = None
    env: str | None = None
    data_stats: dict[str, Any] | None = None
    lora: bool = False  # the Q-model (run dir) and behavior model are LoRA adapters of `base_model`
    base_model: str | None = None  # relative to the run dir when inside it
    extra: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # config fields set away from their defaults

    def save(self, run_dir: str | Path) -> None:
        atomic_write_json(Path(run_dir) / RUN_FILE, {f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, run_dir: str | Path) -> RunInfo:
        path = Path(run_dir) / RUN_FILE
        if not path.is_file():
            raise ConfigError(f"{run_dir} is not a qsft run: {RUN_FILE} is missing (train with `qsft train`)")
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def behavior_path(self, run_dir: str | Path) -> Path | None:
        return _resolve(run_dir, self.behavior_model)

    def token_mdp_config(self, tokenizer) -> TokenMDPConfig:
        """The context layout this run trained with, for reading its states again (policy, critic).

        gamma only shapes targets, not contexts; `reserve` None marks a run from before reply_tokens.
        """
        return TokenMDPConfig(self.gamma or 1.0, self.max_length, bos_token_id(tokenizer), tokenizer.eos_token_id,
                              history_turns=self.history_turns, reserve=self.reply_tokens)

    def base_path(self, run_dir: str | Path) -> Path | None:
        return _resolve(run_dir, self.base_model)


def _resolve(run_dir: str | Path, path: str | None) -> Path | None:
    if path is None:
        return None
    return Path(path) if Path(path).is_absolute() else Path(run_dir) / path
