"""`qsft data`: generate, summarise and validate offline episode datasets.

    qsft data generate --env maze --policy lmrl --episodes 1000 --seed 0 --out maze.jsonl
    qsft data stats maze.jsonl
    qsft data validate maze.jsonl
    qsft data export maze.jsonl --format parquet --out maze.parquet

`register(subparsers)` plugs the command into the main parser; every handler is stored as the
parser's `handler` default, takes the parsed Namespace and returns the process exit code
(0 ok, 2 on any qsft error, printed as one `error: ...` line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qsft.cli.common import parse_env_args, reports_errors


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _print_summary(summary: dict[str, Any]) -> None:
    norm = summary["normalization"]
    rows = [
        ("episodes", summary["episodes"]),
        ("return mean / std", f"{_fmt(summary['return_mean'])} / {_fmt(summary['return_std'])}"),
        ("return min / max", f"{_fmt(summary['return_min'])} / {_fmt(summary['return_max'])}"),
        ("success rate", summary["success_rate"]),
        ("optimal-return rate", summary["optimal_rate"]),
        ("truncated rate", summary["truncated_rate"]),
        ("agent turns (mean)", summary["agent_turns_mean"]),
        ("invalid action rate", summary["invalid_action_rate"]),
        ("score anchors (0/50/100)", f"{_fmt(norm['min_return'])} / {_fmt(norm['dataset_average'])} / "
                                     f"{_fmt(norm['optimal_return'])}"),
    ]
    for name, value in rows:
        print(f"  {name:<26}{_fmt(value)}")


@reports_errors
def run_generate(args: argparse.Namespace) -> int:
    """Generate a dataset with a scripted policy and write it plus its stats sidecar."""
    from qsft.envs.generate import generate_dataset, stats_path

    stats = generate_dataset(args.env, args.policy, args.episodes, args.seed, args.out,
                             env_kwargs=parse_env_args(args.env_arg), progress=not args.no_progress)
    print(f"wrote {stats['episodes']} episodes of {args.env} [{stats['policy']}] to {args.out} "
          f"(stats: {stats_path(args.out)})")
    _print_summary(stats)
    return 0


@reports_errors
def run_stats(args: argparse.Namespace) -> int:
    """Recount a dataset file's statistics from its episodes."""
    from qsft.data.io import load_episodes
    from qsft.envs.generate import summarize
    from qsft.envs.registry import list_envs, make

    episodes = load_episodes(args.file)
    env_name = episodes[0].meta.get("env")
    # Only the env's constants are needed; building it starts nothing (engines start on first step).
    env = make(env_name) if env_name in list_envs() else None
    summary = summarize(episodes, env)
    if args.json:
        print(json.dumps({"file": args.file, "env": env_name, **summary}, indent=2, sort_keys=True))
    else:
        print(f"{args.file}: environment {env_name or 'unknown'}")
        _print_summary(summary)
    return 0


@reports_errors
def run_validate(args: argparse.Namespace) -> int:
    """Check that every line of a file is a well-formed episode."""
    from qsft.data.io import load_episodes

    episodes = load_episodes(args.file)
    agent = sum(len(ep.agent_turns) for ep in episodes)
    env = sum(len(ep.turns) for ep in episodes) - agent
    print(f"OK {args.file}: {len(episodes)} episodes, {agent} agent turns, {env} env turns")
    return 0


@reports_errors
def run_export(args: argparse.Namespace) -> int:
    """Write a dataset as Parquet or a Hugging Face `save_to_disk` folder."""
    from qsft.data.io import export_episodes, load_episodes

    episodes = load_episodes(args.file)
    out = export_episodes(episodes, args.out, args.format)
    print(f"wrote {len(episodes)} episodes to {out} ({args.format}); `--data {out}` reads it back")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `data` (with generate / stats / validate) to the main parser's subcommands."""
    data = subparsers.add_parser("data", help="generate, summarise and validate offline episode datasets",
                                 description="Generate, summarise and validate offline episode datasets.")
    commands = data.add_subparsers(dest="data_command", metavar="{generate,stats,validate,export}")

    def show_help(args: argparse.Namespace) -> int:
        data.print_help(sys.stderr)
        return 2

    data.set_defaults(handler=show_help)

    generate = commands.add_parser("generate", help="roll out a scripted behavior policy and write a JSONL dataset")
    from qsft.envs.registry import GYM_PREFIX, list_envs  # names only: no environment module is imported

    generate.add_argument("--env", required=True,
                          help=f"environment name: {', '.join(list_envs())} (or {GYM_PREFIX}<id>)")
    generate.add_argument("--policy", default=None,
                          help="behavior policy spec: optimal, random, epsilon:P, mixture:P or env-specific "
                               "(maze lmrl[:P], wordle consistent[:P], chess stockfish:D, textworld half-competent[:P]); "
                               "default per env")
    generate.add_argument("--episodes", type=int, default=1000, help="number of episodes to generate")
    generate.add_argument("--seed", type=int, default=0, help="dataset seed; the same seed gives the same file")
    generate.add_argument("--out", required=True, help="output JSONL path (stats go to <out>.stats.json)")
    generate.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                          help="keyword argument for the environment, e.g. max_turns=50 (repeatable)")
    generate.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    generate.set_defaults(handler=run_generate)

    stats = commands.add_parser("stats", help="recount a dataset's returns, success rate and score anchors")
    stats.add_argument("file", help="JSONL dataset to summarise")
    stats.add_argument("--json", action="store_true", help="print the summary as JSON")
    stats.set_defaults(handler=run_stats)

    validate = commands.add_parser("validate", help="check a JSONL dataset; exit code 2 names the first bad line")
    validate.add_argument("file", help="JSONL dataset to validate")
    validate.set_defaults(handler=run_validate)

    export = commands.add_parser("export", help="write a dataset as Parquet or a Hugging Face dataset folder")
    export.add_argument("file", help="dataset to read (JSONL, Parquet or a dataset folder)")
    export.add_argument("--format", choices=("parquet", "hf"), required=True,
                        help="parquet: one file; hf: a `datasets` save_to_disk folder")
    export.add_argument("--out", required=True, help="output file (parquet) or folder (hf)")
    export.set_defaults(handler=run_export)
    return data
