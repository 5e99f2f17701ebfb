"""`qsft eval`, `qsft score`, `qsft report`: argument parsing only; the work is in `qsft.eval`.

Each subcommand sets `handler` (args -> exit code) on its parser; a `QSFTError` becomes
`error: <message>` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qsft.cli.common import parse_env_args, reports_errors
from qsft.decoding.options import DEFAULT_MAX_NEW_TOKENS, MODES


def register(subparsers) -> None:
    """Add the `eval`, `score` and `report` subcommands to the `qsft` parser's subparsers."""
    ev = subparsers.add_parser("eval", help="Roll a trained run out in an environment and summarise it.",
                               description="Roll a trained run out in an environment and summarise it.")
    ev.add_argument("--run", required=True, help="Run directory written by `qsft train` (holds qsft.json).")
    ev.add_argument("--env", default=None, help="Environment name (default: the env the run was trained on).")
    ev.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="Environment constructor argument, repeatable (e.g. max_turns=20); VALUE parsed as JSON.")
    ev.add_argument("--episodes", type=int, default=100, help="Number of episodes to play.")
    ev.add_argument("--decode", choices=MODES, default=None,
                    help="Policy extraction rule (default: beta for Q-SFT runs, bc otherwise).")
    ev.add_argument("--beta", type=float, default=None, help="Extraction beta (default: the env's default_beta).")
    ev.add_argument("--seed", type=int, default=0, help="Seed of env starts and sampling (episode i uses (seed, i)).")
    mode = ev.add_mutually_exclusive_group()
    mode.add_argument("--greedy", dest="greedy", action="store_true", help="Decode greedily (argmax).")
    mode.add_argument("--sample", dest="greedy", action="store_false", help="Sample from the policy (default).")
    ev.set_defaults(greedy=False)
    ev.add_argument("--batch-size", type=int, default=16, help="Episodes stepped together (batched generation).")
    ev.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                    help="Most tokens in one agent utterance (capped at half the run's max_length).")
    ev.add_argument("--device", default="cpu", help="Torch device for the models, e.g. cpu or cuda.")
    ev.add_argument("--label", default=None, help="Method name in tables (default: algo and decoding mode).")
    ev.add_argument("--out", default=None,
                    help="Write results JSON here (and a return histogram PNG beside it).")
    ev.set_defaults(handler=reports_errors(run_eval))

    sc = subparsers.add_parser("score", help="Score logged episodes with a Q-SFT run as a critic (q_hat per turn).",
                               description="Score logged episodes with a Q-SFT run as a critic.")
    sc.add_argument("--run", required=True, help="Q-SFT run directory (Q-model + behavior model).")
    sc.add_argument("--data", required=True, help="Episodes to score (JSONL).")
    sc.add_argument("--out", required=True, help="Output JSONL: one line per agent turn with q and per-token q_hat.")
    sc.add_argument("--batch-size", type=int, default=32, help="Sequences per forward pass.")
    sc.add_argument("--device", default="cpu", help="Torch device for the models.")
    sc.set_defaults(handler=reports_errors(run_score))

    rp = subparsers.add_parser("report", help="Compare evaluation results: a table and a bar chart.",
                               description="Compare `qsft eval` results across methods and environments.")
    rp.add_argument("inputs", nargs="+", metavar="RUN_OR_RESULTS",
                    help="Results JSON files from `qsft eval --out`, or folders holding them.")
    rp.add_argument("--out", required=True, help="Folder for report.<format> and report.png.")
    rp.add_argument("--format", choices=("md", "csv", "json"), default="md", help="Table format.")
    rp.set_defaults(handler=reports_errors(run_report))


def run_eval(args: argparse.Namespace) -> int:
    from qsft.eval.evaluate import evaluate, histogram_path

    result = evaluate(args.run, args.env, args.episodes, args.decode, args.beta, args.seed, args.greedy,
                      args.batch_size, args.max_new_tokens, args.device, env_kwargs=parse_env_args(args.env_arg),
                      out=args.out, label=args.label, progress=sys.stderr.isatty())
    print(result.format())
    if args.out:
        print(f"wrote {args.out} and {histogram_path(args.out)}")
    return 0




def run_score(args: argparse.Namespace) -> int:
    from qsft.eval.score import score

    scores = score(args.run, args.data, args.out, args.device, args.batch_size)
    episodes = len({s.episode_id for s in scores})
    print(f"scored {len(scores)} agent turns of {episodes} episodes; wrote {Path(args.out)}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from qsft.eval.report import render, write_report

    table, chart, rows = write_report(args.inputs, args.out, args.format)
    print(render(rows, "md") if args.format == "md" else table.read_text(), end="")
    print(f"wrote {table} and {chart}")
    return 0
