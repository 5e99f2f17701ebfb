"""`qsft bench`: every algorithm on the same data, model and step budget; a results folder out."""

from __future__ import annotations

import argparse

from qsft.cli.common import parse_env_args, parse_method_sets, reports_errors


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="Compare methods (bc, filtered_bc, ilql, mc, qsft) on one environment over seeds.",
        description="Generates (or reuses) the dataset, trains every algorithm with the same model, data and "
                    "step budget, evaluates each, and writes report.md/report.png/bench.json under --out. "
                    "Finished runs are reused, so an interrupted bench resumes.")
    parser.add_argument("--env", required=True, help="Environment name (qsft data generate --help lists them).")
    parser.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="Environment option for data generation and evaluation alike (repeatable; e.g. "
                             "legal_moves=true); recorded in bench.json.")
    parser.add_argument("--algos", default="bc,filtered_bc,ilql,qsft", help="Comma-separated algorithms.")
    parser.add_argument("--seeds", type=int, default=3, help="Training/evaluation seeds per algorithm.")
    parser.add_argument("--episodes", type=int, default=1000, help="Dataset size (episodes) to generate.")
    parser.add_argument("--eval-episodes", type=int, default=100, help="Evaluation episodes per run.")
    parser.add_argument("--model", default="tiny", help="'tiny' or a local Hugging Face model directory.")
    parser.add_argument("--budget", type=int, help="Optimizer steps per method (default: the env's YAML).")
    parser.add_argument("--policy", help="Behavior policy spec for the dataset (default: the env's).")
    parser.add_argument("--data-seed", type=int, default=0, help="Seed of the generated dataset.")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="`qsft pretrain` steps on the bench's data before the methods, which all start from "
                             "that base (OUT/base, built once; its time is reported). Default: the env YAML's "
                             "`pretrain: max_steps` (at most --budget), else none.")
    parser.add_argument("--set", action="append", default=[], metavar="[ALGO.]KEY=VALUE", dest="sets",
                        help="Training setting over the env YAML's (repeatable): KEY=VALUE for every method, "
                             "ALGO.KEY=VALUE for one (e.g. qsft.bootstrap=max). Runs trained with other settings "
                             "are retrained, so give a variant its own --out.")
    parser.add_argument("--out", default=None, help="Results folder (default: bench-<env>).")
    parser.add_argument("--jobs", type=int, default=None,
                        help="Runs trained and evaluated at once, in separate processes that share the CPU "
                             "threads (a Q-SFT run waits for its seed's BC run). Default: 2 for --model tiny "
                             "on a machine with 2+ cores and no GPU (small models use two processes better "
                             "than two threads), else 1.")
    parser.set_defaults(handler=run)


@reports_errors
def run(args: argparse.Namespace) -> int:
    from qsft.bench import BenchSettings, aggregate, default_jobs, format_table, run_bench
    from qsft.training.run import ALGORITHMS

    shared, per_algo = parse_method_sets(args.sets, ALGORITHMS)
    settings = BenchSettings(env=args.env, algos=[a.strip() for a in args.algos.split(",") if a.strip()],
                             seeds=args.seeds, episodes=args.episodes, eval_episodes=args.eval_episodes,
                             model=args.model, budget=args.budget, data_seed=args.data_seed, policy=args.policy,
                             pretrain_steps=args.pretrain_steps, env_kwargs=parse_env_args(args.env_arg),
                             overrides=shared, algo_overrides=per_algo)
    out = args.out or f"bench-{args.env}"
    results = run_bench(settings, out, jobs=args.jobs if args.jobs is not None else default_jobs(args.model))
    print()
    print(format_table(args.env, aggregate(results)))
    print(f"wrote {out}/report.md, {out}/report.png, {out}/bench.json and per-run results under {out}/runs/")
    return 0
