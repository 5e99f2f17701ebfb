"""`train()`: the one call behind `qsft train`, `qsft bench` and `qsft demo`.

Output directory layout (everything `qsft eval` needs):
    OUT/model.safetensors, config.json, tokenizer files   the trained model (from_pretrained)
    OUT/qsft.json                                         decoding-time facts (see RunInfo)
    OUT/behavior/                                         behavior model trained in-run (Q-SFT)
    OUT/checkpoint-N/                                     Trainer checkpoints (+ target/)
    OUT/runs/                                             TensorBoard logs
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import set_seed

from qsft.data.episode import Episode
from qsft.data.io import load_episodes
from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.errors import ConfigError
from qsft.io import atomic_write_json
from qsft.models.loading import build_tiny_model, ensure_dummy_token, load_model, load_tokenizer
from qsft.training.bc import BCTrainer
from qsft.training.checkpoints import latest_complete_checkpoint
from qsft.training.config import BCConfig, FilteredBCConfig, QSFTConfig
from qsft.training.data import qsft_dataset, select_top_episodes, sft_dataset
from qsft.training.ilql import ILQLConfig, train_ilql
from qsft.training.qsft_trainer import QSFTTrainer

RUN_FILE = "qsft.json"
ALGORITHMS = ("bc", "filtered_bc", "qsft", "ilql")
CONFIG_CLASSES = {"bc": BCConfig, "filtered_bc": FilteredBCConfig, "qsft": QSFTConfig, "ilql": ILQLConfig}


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
    data: str | None = None
    env: str | None = None
    data_stats: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

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
        if self.behavior_model is None:
            return None
        path = Path(self.behavior_model)
        return path if path.is_absolute() else Path(run_dir) / path


def make_config(algo: str, out: str | Path, overrides: dict[str, Any] | None = None):
    """The method's config with `overrides` (YAML/flags) applied; unknown keys are one clear error."""
    if algo not in CONFIG_CLASSES:
        raise ConfigError(f"unknown algorithm {algo!r}; choose from {', '.join(ALGORITHMS)}")
    cls = CONFIG_CLASSES[algo]
    overrides = dict(overrides or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) for --algo {algo}: {', '.join(unknown)}")
    overrides["output_dir"] = str(out)
    return cls(**overrides)


def _data_sidecar(data: str | Path) -> dict[str, Any] | None:
    path = Path(f"{data}.stats.json")
    return json.loads(path.read_text()) if path.is_file() else None


def _base_model_and_tokenizer(model: str, episodes: list[Episode], config):
    if model == "tiny":
        tokenizer = build_tiny_tokenizer((t.text for ep in episodes for t in ep.turns), config.tokenizer_level)
        n_positions = max(64, config.max_length)
        return build_tiny_model(tokenizer, config.model_preset, n_positions, seed=config.seed), tokenizer
    return load_model(model), load_tokenizer(model)


def _train_sft(model, tokenizer, episodes: list[Episode], config, out: Path) -> None:
    trainer = BCTrainer(model, config, sft_dataset(episodes, tokenizer, config), tokenizer)
    trainer.train(resume_from_checkpoint=_resume_arg(config, out))
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))


def _resume_arg(config, out: Path):
    """`resume_from_checkpoint`: a path, True/'auto' (newest complete checkpoint, if any) or None."""
    resume = config.resume_from_checkpoint
    if resume in (True, "true", "True", "auto"):
        return latest_complete_checkpoint(out)
    return resume or None


def train(algo: str, data: str | Path | list[Episode], model: str = "tiny", out: str | Path = "qsft-run",
          overrides: dict[str, Any] | None = None, env: str | None = None) -> Path:
    """Train `algo` on episodes from `data`, starting from `model` ('tiny' or a local HF dir); returns OUT."""
    out = Path(out)
    config = make_config(algo, out, overrides)
    set_seed(config.seed)
    episodes = load_episodes(data) if not isinstance(data, list) else data
    sidecar = _data_sidecar(data) if not isinstance(data, list) else None
    info = RunInfo(algo=algo, history_turns=config.history_turns, max_length=config.max_length,
                   data=None if isinstance(data, list) else str(Path(data).resolve()),
                   env=env or (sidecar or {}).get("env"), data_stats=sidecar)
    out.mkdir(parents=True, exist_ok=True)

    if algo in ("bc", "filtered_bc"):
        if algo == "filtered_bc":
            episodes = select_top_episodes(episodes, config.top)
            info.extra["episodes_kept"] = len(episodes)
        base, tokenizer = _base_model_and_tokenizer(model, episodes, config)
        _train_sft(base, tokenizer, episodes, config, out)
        info.save(out)
        return out

    if algo == "ilql":  # LM + Q/V heads trained together from the base model (Snell et al. 2022)
        base, tokenizer = _base_model_and_tokenizer(model, episodes, config)
        report = train_ilql(base, tokenizer, episodes, config, _resume_arg(config, out))
        info.gamma, info.reward = config.gamma, report.to_dict()
        info.extra.update(beta=config.beta, tau_expectile=config.tau_expectile, cql_weight=config.cql_weight)
        info.save(out)
        return out

    # --- Q-SFT (paper Algorithm 1): behavior model first, then Q-model + target from the same weights ---
    if config.behavior not in (None, "", "cotrain"):
        behavior_dir = Path(config.behavior)
        behavior, tokenizer = load_model(behavior_dir), load_tokenizer(behavior_dir)
        base = load_model(model) if model != "tiny" and config.q_init == "model" else None
        info.behavior_model = str(behavior_dir.resolve())
    else:
        base, tokenizer = _base_model_and_tokenizer(model, episodes, config)
        if config.behavior == "cotrain":
            behavior = copy.deepcopy(base)
            info.behavior_model = "behavior"
        else:
            behavior_dir = out / "behavior"
            if not (behavior_dir / RUN_FILE).is_file():  # a resumed run keeps its finished behavior model
                bc_fields = {f.name for f in fields(BCConfig)}
                bc_overrides = {k: v for k, v in (overrides or {}).items() if k in bc_fields}
                bc_overrides["max_steps"] = config.behavior_max_steps or config.max_steps
                bc_config = make_config("bc", behavior_dir, bc_overrides)
                _train_sft(copy.deepcopy(base), tokenizer, episodes, bc_config, behavior_dir)
                RunInfo(algo="bc", history_turns=config.history_turns, max_length=config.max_length,
                        data=info.data, env=info.env, data_stats=sidecar).save(behavior_dir)
            behavior = load_model(behavior_dir)
            info.behavior_model = "behavior"
    q_model = copy.deepcopy(behavior) if config.q_init == "behavior" or base is None else base

    variant = config.loss_variant or ("dummy" if model == "tiny" else "uniform")
    config.loss_variant = variant
    dummy_id = None
    if variant == "dummy":
        dummy_id = ensure_dummy_token(tokenizer, q_model, config.dummy_token)
        if behavior.get_input_embeddings().weight.shape[0] < len(tokenizer):
            behavior.resize_token_embeddings(len(tokenizer))
    dataset, report = qsft_dataset(episodes, tokenizer, config, dummy_id)
    trainer = QSFTTrainer(q_model, behavior, config, dataset, tokenizer, dummy_token_id=dummy_id)
    trainer.train(resume_from_checkpoint=_resume_arg(config, out))
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    if config.behavior == "cotrain":
        trainer.behavior_model.save_pretrained(str(out / "behavior"))
        tokenizer.save_pretrained(str(out / "behavior"))
    info.loss_variant, info.dummy_token, info.dummy_token_id = variant, config.dummy_token, dummy_id
    info.gamma, info.support_threshold, info.reward = config.gamma, config.support_threshold, report.to_dict()
    info.save(out)
    return out


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
