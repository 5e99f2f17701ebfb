"""`qsft demo`: the whole story on embedded defaults — data, BC and Q-SFT, evaluation, table, plot."""

from __future__ import annotations

import argparse
import time

from qsft.cli.common import reports_errors

DEMO_ENV = "maze"
# Half of maze.yaml's 2,000 pretraining steps: the bench's full budget made the demo run 10-12 min on 2 cores
# (configs/maze.yaml records the timings and scores behind this number).
DEMO_PRETRAIN_STEPS = 1000


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="Generate maze data, train BC and Q-SFT on a tiny model, evaluate both, print the table.",
        description="Runs in a few minutes on a laptop CPU with no arguments; everything lands in --out.")
    parser.add_argument("--out", default="qsft-demo", help="Folder for data, runs, transcripts, table and plot.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of training and evaluation.")
    parser.add_argument("--episodes", type=int, default=1000, help="Offline dataset size (episodes).")
    parser.add_argument("--eval-episodes", type=int, default=64, help="Evaluation episodes per method.")
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps per method (default: maze.yaml).")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help=f"Steps of domain pretraining for the shared base model (0: none; default "
                             f"{DEMO_PRETRAIN_STEPS}, at most --steps).")
    parser.set_defaults(handler=run)


@reports_errors
def run(args: argparse.Namespace) -> int:
    from qsft.bench import BenchSettings, aggregate, format_table, run_bench

    start = time.time()
    pretrain = args.pretrain_steps
    if pretrain is None:  # a quick demo (--steps) stays quick, as in `qsft bench`
        pretrain = DEMO_PRETRAIN_STEPS if args.steps is None else min(DEMO_PRETRAIN_STEPS, args.steps)
    settings = BenchSettings(env=DEMO_ENV, algos=["bc", "qsft"], seeds=1, episodes=args.episodes,
                             eval_episodes=args.eval_episodes, budget=args.steps, data_seed=args.seed,
                             first_seed=args.seed, pretrain_steps=pretrain)
    results = run_bench(settings, args.out)
    print()
    print(format_table(DEMO_ENV, aggregate(results)))
    print(f"plot: {args.out}/report.png   transcripts: {args.out}/runs/*/results.json   "
          f"({time.time() - start:.0f} s)")
    return 0
