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
        "train", help="Train Q-SFT or a baseline on an episode dataset.", usage=USAGE.format(command="train", algo=" [--algo ALGO]"),
        description="Train with --algo on --data from --model; writes a loadable model and qsft.json to --out. "
                    "Any config field below may also be given in a YAML file with --config (flags win).")
    parser.add_argument("--algo", default="qsft", help="Method: qsft, bc, filtered_bc, ilql or mc (Monte-Carlo returns).")
    _add_common_arguments(parser)
    pretrain = subparsers.add_parser(
        "pretrain", usage=USAGE.format(command="pretrain", algo=""), help="Causal-LM training on whole transcripts (every token): a base model for --model.",
        description="Domain-adaptive pretraining on your own logs: next-token loss on observations and actions "
                    "alike, from --model ('tiny' or a local HF dir). --out is an ordinary Hugging Face model dir "
                    "(weights + tokenizer) that `qsft train --model OUT` takes for any algorithm.")
    _add_common_arguments(pretrain)
    pretrain.set_defaults(algo="pretrain")


USAGE = ("qsft {command} --data DATA --out OUT{algo} [--model MODEL] [--config CONFIG] [--env ENV] "
         "[--FIELD VALUE ...] [-h] [--help-all]")

# TrainingArguments fields a user of these methods sets; `--help-all` lists the other ~120.
BUDGET_FIELDS = ("max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "seed",
                 "bf16", "logging_steps", "save_strategy", "save_steps", "save_total_limit", "report_to",
                 "resume_from_checkpoint", "disable_tqdm", "dataloader_num_workers")


def _field_groups() -> list[tuple[str, list[str]]]:
    """(group title, field names) in the order `--help` shows them: each method's own fields by the config
    class that declares them, then the training budget; the rest of TrainingArguments last."""
    from transformers import TrainingArguments

    from qsft.training.config import (
        BCConfig,
        BootstrappedConfig,
        FilteredBCConfig,
        OfflineRLConfig,
        PretrainConfig,
        QSFTConfig,
    )
    from qsft.training.ilql import HeadsConfig, ILQLConfig, MCConfig

    hf = {f.name for f in dataclasses.fields(TrainingArguments)}

    def own(*classes) -> list[str]:
        names = [n for cls in classes for n in cls.__dict__.get("__annotations__", {}) if n != "output_dir"]
        return [n for n in dict.fromkeys(names) if n not in hf]

    groups = [
        ("data and tokenisation (every method)", own(OfflineRLConfig)),
        ("Q-SFT (--algo qsft)", own(QSFTConfig)),
        ("discounting and rewards (--algo qsft, ilql, mc)", own(BootstrappedConfig)),
        ("ILQL and MC returns (--algo ilql, mc)", own(HeadsConfig, ILQLConfig, MCConfig)),
        ("behavior cloning (--algo bc, filtered_bc) and pretraining", own(BCConfig, FilteredBCConfig, PretrainConfig)),
        ("training budget and optimizer (transformers.TrainingArguments)", list(BUDGET_FIELDS)),
    ]
    seen: set[str] = set()
    for _, names in groups:  # a field two methods share (`behavior`) is listed once, under the first
        names[:] = [n for n in names if not (n in seen or seen.add(n))]
    shown = {n for _, names in groups for n in names}
    rest = sorted(n for n in _config_fields() if n not in shown)
    return groups + [("other transformers.TrainingArguments fields", rest)]


class _HelpAll(argparse.Action):
    """`--help-all`: the help with every TrainingArguments field, then exit."""

    def __init__(self, option_strings, dest, hidden: dict | None = None, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.hidden = hidden if hidden is not None else {}

    def __call__(self, parser, namespace, values, option_string=None):
        for action, text in self.hidden.items():
            action.help = text
        parser.print_help()
        parser.exit()


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="Episode dataset: a JSONL or Parquet file, a `datasets` "
                                                      "save_to_disk folder or a local Hub-format dataset folder "
                                                      "(see docs/episode_format.md).")
    parser.add_argument("--model", default="tiny", help="'tiny' (a small GPT-2 trained from scratch) or a local HF model dir.")
    parser.add_argument("--out", required=True, help="Output run directory.")
    parser.add_argument("--config", help="YAML file of config fields or an environment YAML (src/qsft/configs/); "
                                         "default: the shipped YAML of the data's environment; 'none': built-in "
                                         "defaults only.")
    parser.add_argument("--env", help="Environment the data comes from (default: the data's stats sidecar); "
                                      "recorded for `qsft eval` and picks the shipped settings.")
    hidden: dict[argparse.Action, str] = {}
    parser.add_argument("--help-all", action=_HelpAll, hidden=hidden,
                        help="Show every transformers.TrainingArguments field too, and exit.")
    fields = _config_fields()
    groups = _field_groups()
    for title, names in groups:
        last = title == groups[-1][0]
        group = parser.add_argument_group(title + (" (shown by --help-all)" if last else ""))
        for name in names:
            f = fields[name]
            help_text = ((f.metadata.get("help") or "").split("\n")[0].replace("%", "%%") or name)[:200]
            flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
            action = group.add_argument(*flags, dest=f"cfg__{name}", type=_parser_for(f), default=argparse.SUPPRESS,
                                        metavar="VALUE", help=argparse.SUPPRESS if last else help_text)
            if last:
                hidden[action] = help_text
    parser.set_defaults(handler=run_train)


def _read_yaml(path: Path, text: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields")
    return loaded


def config_source(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """(where the run's starting settings come from, the YAML read): `--config FILE`; `--config none` (no file);
    else the shipped YAML of the environment named by `--env` or by the data's stats sidecar, if one ships."""
    from qsft.configs import env_config_file
    from qsft.data.io import data_sidecar

    if args.config is not None and args.config.lower() == "none":
        return None, {}
    if args.config is not None:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return str(path), _read_yaml(path, path.read_text())
    env = args.env or (data_sidecar(args.data) or {}).get("env")
    shipped = env_config_file(env) if env else None
    if shipped is None:
        return None, {}
    return str(shipped), _read_yaml(Path(str(shipped)), shipped.read_text())


def collect_overrides(args: argparse.Namespace, source: tuple[str | None, dict[str, Any]] | None = None
                      ) -> dict[str, Any]:
    """Config fields: the `config_source` YAML (an environment YAML's sections for `args.algo`), then flags."""
    from qsft.configs import is_env_config, method_settings
    from qsft.training.run import CONFIG_CLASSES

    _, loaded = source if source is not None else config_source(args)
    fields = _config_fields()
    if is_env_config(loaded):
        known = {f.name for f in dataclasses.fields(CONFIG_CLASSES[args.algo])}
        loaded = method_settings(loaded, args.algo, known)
    overrides = {k: _coerce(fields.get(k), v) for k, v in loaded.items()}
    for key, value in vars(args).items():
        if key.startswith("cfg__"):
            overrides[key[5:]] = value
    return overrides


@reports_errors
def run_train(args: argparse.Namespace) -> int:
    from qsft.training.eta import CpuEtaCallback, no_gpu
    from qsft.training.run import train

    data = Path(args.data)
    if not data.exists():
        raise ConfigError(f"data file not found: {data}")
    source = config_source(args)
    overrides = collect_overrides(args, source)
    callbacks = []
    if source[0] is not None and args.config is None:
        print(f"qsft {args.algo}: starting from the environment's settings in {source[0]} (flags win; "
              "--config none opts out)")
    elif source[0] is None and no_gpu():
        print(f"qsft {args.algo}: no --config and no GPU: the built-in defaults are the paper's GPU settings "
              "(batch 128, full history); the time per step follows once measured")
        callbacks.append(CpuEtaCallback())
    out = train(args.algo, data, args.model, args.out, overrides, env=args.env, callbacks=callbacks)
    print(f"pretrained: {out} (use it with --model)" if args.algo == "pretrain" else f"trained {args.algo}: {out}")
    return 0
