"""Rollout throughput: batched generation (KV cache, continuous batching) vs one episode at a time.

    python benchmarks/rollout_throughput.py                      # trains a tiny maze BC model first
    python benchmarks/rollout_throughput.py --run RUN_DIR --env maze --episodes 64 --batch-size 16

Prints episodes/s and agent decisions/s for both and their ratio, and checks that both give the
same per-episode results (they must: per-episode seeds and generators). Not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from qsft.decoding.policy import load_policy
from qsft.envs import generate_dataset, make
from qsft.eval.rollout import rollout


def train_maze_model(folder: Path, preset: str, steps: int) -> Path:
    from qsft.training.run import train

    data = folder / "maze.jsonl"
    generate_dataset("maze", "epsilon:0.2", 300, seed=0, out_path=data, progress=False)
    return train("bc", data, "tiny", folder / "run", dict(
        model_preset=preset, history_turns=1, max_length=128, max_steps=steps, learning_rate=3e-3,
        per_device_train_batch_size=32, report_to="none", save_strategy="no", disable_tqdm=True,
        logging_steps=10_000, seed=0))


def timed(policy, env_name: str, env_kwargs: dict, episodes: int, batch_size: int, greedy: bool,
          max_new_tokens: int):
    start = time.perf_counter()
    results = rollout(policy, lambda: make(env_name, **env_kwargs), episodes, seed=0, batch_size=batch_size,
                      greedy=greedy, max_new_tokens=max_new_tokens)
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="Trained run dir (default: train a tiny maze BC model).")
    parser.add_argument("--env", default="maze", help="Environment name.")
    parser.add_argument("--episodes", type=int, default=64, help="Episodes per measurement.")
    parser.add_argument("--batch-size", type=int, default=16, help="Batch size of the batched run.")
    parser.add_argument("--max-turns", type=int, default=20, help="Turn limit passed to the environment.")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="Token cap per utterance.")
    parser.add_argument("--decode", default=None, help="Decoding mode (default: the run's default).")
    parser.add_argument("--greedy", action="store_true", help="Greedy decoding instead of sampling.")
    parser.add_argument("--preset", default="tiny", help="Tiny model preset when training one here.")
    parser.add_argument("--train-steps", type=int, default=100, help="BC steps when training one here.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else train_maze_model(Path(tmp), args.preset, args.train_steps)
        policy = load_policy(run, args.decode)
        env_kwargs = {"max_turns": args.max_turns}
        timed(policy, args.env, env_kwargs, 2, 2, args.greedy, args.max_new_tokens)  # warm-up
        batched, t_batched = timed(policy, args.env, env_kwargs, args.episodes, args.batch_size, args.greedy,
                                   args.max_new_tokens)
        sequential, t_seq = timed(policy, args.env, env_kwargs, args.episodes, 1, args.greedy,
                                  args.max_new_tokens)

    decisions = sum(r.turns for r in batched)
    same = [r.transcript for r in batched] == [r.transcript for r in sequential]
    print(f"env {args.env} (max_turns {args.max_turns}), {args.episodes} episodes, {decisions} agent turns, "
          f"mode {policy.mode}, {'greedy' if args.greedy else 'sampling'}, torch threads {torch.get_num_threads()}")
    print(f"{'':<22}{'episodes/s':>12}{'turns/s':>12}{'seconds':>10}")
    print(f"{'batched (' + str(args.batch_size) + ')':<22}{args.episodes / t_batched:>12.2f}"
          f"{decisions / t_batched:>12.1f}{t_batched:>10.2f}")
    print(f"{'sequential (1)':<22}{args.episodes / t_seq:>12.2f}{decisions / t_seq:>12.1f}{t_seq:>10.2f}")
    print(f"speed-up batched / sequential: {t_seq / t_batched:.2f}x; identical per-episode results: {same}")


if __name__ == "__main__":
    main()
