"""`qsft demo`: the whole story on embedded defaults — data, BC and Q-SFT, evaluation, table, plot."""

from __future__ import annotations

import argparse
import time

from qsft.cli.common import reports_errors

DEMO_ENV = "maze"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="Generate maze data, train BC and Q-SFT on a tiny model, evaluate both, print the table.",
        description="Runs in a few minutes on a laptop CPU with no arguments; everything lands in --out.")
    parser.add_argument("--out", default="qsft-demo", help="Folder for data, runs, transcripts, table and plot.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of training and evaluation.")
    parser.add_argument("--episodes", type=int, default=1000, help="Offline dataset size (episodes).")
    parser.add_argument("--eval-episodes", type=int, default=64, help="Evaluation episodes per method.")
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps per method (default: maze.yaml).")
    parser.set_defaults(handler=run)


@reports_errors
def run(args: argparse.Namespace) -> int:
    from qsft.bench import BenchSettings, aggregate, format_table, run_bench

    start = time.time()
    settings = BenchSettings(env=DEMO_ENV, algos=["bc", "qsft"], seeds=1, episodes=args.episodes,
                             eval_episodes=args.eval_episodes, budget=args.steps, data_seed=args.seed,
                             first_seed=args.seed)
    results = run_bench(settings, args.out)
    print()
    print(format_table(DEMO_ENV, aggregate(results)))
    print(f"plot: {args.out}/report.png   transcripts: {args.out}/runs/*/results.json   "
          f"({time.time() - start:.0f} s)")
    return 0
