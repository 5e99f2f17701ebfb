"""`qsft train`: every config field settable from YAML (--config) or flags (--key value)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from qsft.cli.common import reports_errors
from qsft.errors import ConfigError


def _config_fields() -> dict[str, dataclasses.Field]:
    from qsft.training.run import CONFIG_CLASSES

    merged: dict[str, dataclasses.Field] = {}
    for cls in CONFIG_CLASSES.values():
        for f in dataclasses.fields(cls):
            if f.init and f.name != "output_dir":
                merged.setdefault(f.name, f)
    return merged


def _is_text_field(f: dataclasses.Field) -> bool:
    default = f.default if f.default is not dataclasses.MISSING else None
    return isinstance(default, str)  # str and str-Enum defaults (save_strategy, lr_scheduler_type, ...)


def _parser_for(f: dataclasses.Field):
    """Text fields keep the raw string ('no' stays 'no'); others read as YAML scalars (0.9, 100, true, null)."""
    if _is_text_field(f):
        return str

    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, float):
        return float
    if isinstance(default, int) and not isinstance(default, bool):
        return int

    def parse(text: str) -> Any:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 as text
            try:
                return float(value)
            except ValueError:
                return value
        return value

    return parse


def _coerce(f: dataclasses.Field | None, value: Any) -> Any:
    """YAML files read `no`/`yes` as booleans; text fields want the word back."""
    if f is not None and _is_text_field(f) and isinstance(value, bool):
        return "yes" if value else "no"
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="Train Q-SFT or a baseline on an episode dataset.",
        description="Train with --algo on --data from --model; writes a loadable model and qsft.json to --out. "
                    "Any config field below may also be given in a YAML file with --config (flags win).")
    parser.add_argument("--algo", default="qsft", help="Method: qsft, bc, filtered_bc, ilql or mc (Monte-Carlo returns).")
    _add_common_arguments(parser)
    pretrain = subparsers.add_parser(
        "pretrain", help="Causal-LM training on whole transcripts (every token): a base model for --model.",
        description="Domain-adaptive pretraining on your own logs: next-token loss on observations and actions "
                    "alike, from --model ('tiny' or a local HF dir). --out is an ordinary Hugging Face model dir "
                    "(weights + tokenizer) that `qsft train --model OUT` takes for any algorithm.")
    _add_common_arguments(pretrain)
    pretrain.set_defaults(algo="pretrain")


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="Episode dataset: a JSONL file (see docs/episode_format.md).")
    parser.add_argument("--model", default="tiny", help="'tiny' (a small GPT-2 trained from scratch) or a local HF model dir.")
    parser.add_argument("--out", required=True, help="Output run directory.")
    parser.add_argument("--config", help="YAML file of config fields (e.g. configs/maze.yaml).")
    parser.add_argument("--env", help="Environment the data comes from (recorded for `qsft eval`).")
    fields = parser.add_argument_group("config fields (QSFTConfig / BCConfig / FilteredBCConfig / TrainingArguments)")
    for name, f in sorted(_config_fields().items()):
        help_text = (f.metadata.get("help") or "").split("\n")[0].replace("%", "%%") or name
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        fields.add_argument(*flags, dest=f"cfg__{name}", type=_parser_for(f), default=argparse.SUPPRESS,
                            metavar="VALUE", help=help_text[:200])
    parser.set_defaults(handler=run_train)


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields")
        fields = _config_fields()
        if isinstance(loaded.get("train"), dict):  # an env YAML: `train` for every method, `algos.<algo>` on top
            sections = [loaded["train"], (loaded.get("algos") or {}).get(args.algo) or {}]
        else:
            sections = [loaded]
        for section in sections:
            overrides.update({k: _coerce(fields.get(k), v) for k, v in section.items()})
    for key, value in vars(args).items():
        if key.startswith("cfg__"):
            overrides[key[5:]] = value
    return overrides


@reports_errors
def run_train(args: argparse.Namespace) -> int:
    from qsft.training.run import train

    data = Path(args.data)
    if not data.is_file():
        raise ConfigError(f"data file not found: {data}")
    overrides = collect_overrides(args)
    out = train(args.algo, data, args.model, args.out, overrides, env=args.env)
    print(f"pretrained: {out} (use it with --model)" if args.algo == "pretrain" else f"trained {args.algo}: {out}")
    return 0
