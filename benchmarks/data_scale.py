"""Data at scale (issue #21): time to a first training step and peak memory on N maze episodes, memory backend
(episodes and samples as Python lists) vs arrow backend (cached memory-mapped Arrow tables), same run otherwise.

    python benchmarks/data_scale.py                                  # 10^5 and 10^6 episodes (generation is slow)
    python benchmarks/data_scale.py --sizes 10000 --work /tmp/qsft-data-scale
    python benchmarks/data_scale.py --sizes 100000 --algo qsft       # Q-SFT (behavior SFT step first) instead of BC

Data: `N` lmrl maze episodes (`qsft data generate --env maze`'s default policy), generated in shards of 10,000
(seed = shard number) by --jobs processes and cached in --work (a larger N reuses the smaller one's shards); the
generation time is reported on its own. Training: the maze settings of src/qsft/configs/maze.yaml's `train`
section (tiny GPT-2, one sample per move: history_turns 1, max_length 96, action tokens, batch 32), one step.

Every case runs `qsft.training.run.train` in its own child process: `memory`, then `arrow cold` (an empty cache
folder: reading, tokenizing and caching included) and `arrow warm` (the same folder again: the tables are read
back). Reported per case: seconds from the call to the trainer's first `on_train_begin` (load + tokenize + tiny
model) and to the end of its first optimizer step; the peak resident set of the main process (its own
`ru_maxrss`), of any one process (the arrow backend's map workers included), and of the whole process tree
(psutil samples every 0.2 s). Resident sets count the pages of memory-mapped Arrow files a process has read
(the kernel drops those first under memory pressure) as well as its own memory. Ratios are against the memory
backend of the same size and run; the memory backend is skipped where its projected peak (bytes per episode of
the smallest size measured, times N) exceeds --memory-cap-gib, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

SHARD = 10_000
GIB = 1 << 30
TRAIN = {"model_preset": "tiny", "history_turns": 1, "max_length": 96, "action_tokens": True,
         "per_device_train_batch_size": 32, "max_steps": 1, "learning_rate": 1e-3, "report_to": "none",
         "save_strategy": "no", "disable_tqdm": True, "use_cpu": True, "logging_steps": 1}
QSFT = {"gamma": 0.95, "reward_transform": "success", "behavior_max_steps": 1}


# --- data: maze episodes in cached shards ---
def _shard(args: tuple[int, Path]) -> tuple[int, float]:
    from qsft.data.io import save_episodes
    from qsft.envs.generate import generate_episodes

    index, path = args
    start = time.time()
    save_episodes(path, generate_episodes("maze", None, SHARD, seed=index, progress=False))
    return index, time.time() - start


def dataset(n: int, work: Path, jobs: int) -> tuple[Path, float]:
    """work/maze-N.jsonl (the first N / SHARD shards, concatenated) and the CPU seconds spent generating now."""
    out = work / f"maze-{n}.jsonl"
    if out.is_file():
        return out, 0.0
    shards = [(i, work / "shards" / f"maze-{i}.jsonl") for i in range(-(-n // SHARD))]
    missing = [s for s in shards if not s[1].is_file()]
    (work / "shards").mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    with Pool(jobs) as pool:
        for index, spent in pool.imap_unordered(_shard, missing):
            seconds += spent
            print(f"  generated shard {index} ({spent:.0f} s)", flush=True)
    partial = out.with_suffix(".partial")
    with open(partial, "wb") as handle:
        left = n
        for _, path in shards:
            with open(path, "rb") as shard:
                for line in shard:
                    if left == 0:
                        break
                    handle.write(line)
                    left -= 1
    os.replace(partial, out)
    return out, seconds


# --- one case, in a child process ---
def run_case(args: argparse.Namespace) -> None:
    from transformers import TrainerCallback

    from qsft.training.run import train

    class Clock(TrainerCallback):
        begin = step = None

        def on_train_begin(self, *a, **k):
            self.begin = self.begin or time.time()

        def on_step_end(self, *a, **k):
            self.step = self.step or time.time()

    clock = Clock()
    overrides = {**TRAIN, **(QSFT if args.algo == "qsft" else {}), "data_backend": args.case,
                 "data_cache_dir": args.cache, "data_num_proc": args.num_proc}
    start = time.time()
    train(args.algo, args.data, "tiny", args.out, overrides, callbacks=[clock])
    print("RESULT " + json.dumps({
        "to_train_begin": clock.begin - start, "to_first_step": clock.step - start,
        "main_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "workers_peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}), flush=True)


class OverCap(Exception):
    """A case's process tree outgrew the memory cap and was stopped (the machine's OOM killer would take more)."""


def measure(backend: str, data: Path, cache: Path, out: Path, args: argparse.Namespace, cap: float) -> dict:
    """Run one case in a child process, sampling the resident set of its process tree; stopped above `cap` bytes."""
    import psutil

    command = [sys.executable, __file__, "--case", backend, "--data", str(data), "--cache", str(cache),
               "--out", str(out), "--algo", args.algo, "--num-proc", str(args.num_proc)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root = psutil.Process(child.pid)
    tree_peak = single_peak = 0
    while child.poll() is None:
        sizes = []
        for process in [root, *_children(root)]:
            try:
                sizes.append(process.memory_info().rss)
            except psutil.Error:
                pass
        tree_peak, single_peak = max(tree_peak, sum(sizes)), max([single_peak, *sizes])
        if tree_peak > cap:
            for process in [*_children(root), root]:
                try:
                    process.kill()
                except psutil.Error:
                    pass
            child.wait()
            raise OverCap(f"stopped at {tree_peak / GIB:.1f} GiB > cap {cap / GIB:.1f} GiB")
        time.sleep(0.2)
    lines = [line for line in child.stdout.read().splitlines() if line.startswith("RESULT ")]
    if child.returncode != 0 or not lines:
        raise SystemExit(f"case {backend} on {data} failed (exit {child.returncode}); rerun it with --case to see why")
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(tree_peak=tree_peak, any_peak=max(single_peak, result["main_peak"], result["workers_peak"]))
    return result


def _children(process):
    try:
        return process.children(recursive=True)
    except Exception:  # noqa: BLE001 - the tree changes while we look
        return []


# --- the table ---
def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _row(n: int, name: str, result: dict | None, base: dict | None, note: str = "") -> str:
    if result is None:
        return f"| {n:>9,} | {name:<11} | {note} |"

    def ratio(key: str) -> str:
        return f" ({result[key] / base[key]:.2f}x)" if base else ""

    gib = {k: result[k] / GIB for k in ("main_peak", "any_peak", "tree_peak")}
    return (f"| {n:>9,} | {name:<11} | {result['to_train_begin']:8.1f}{ratio('to_train_begin'):>9} | "
            f"{result['to_first_step']:8.1f}{ratio('to_first_step'):>9} | {gib['main_peak']:6.2f}{ratio('main_peak'):>9} | "
            f"{gib['any_peak']:6.2f} | {gib['tree_peak']:6.2f}{ratio('tree_peak'):>9} | {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="episode counts")
    parser.add_argument("--work", type=Path, default=Path("/tmp/qsft-data-scale"),
                        help="generated data (kept) and the cases' caches and runs (deleted after each size)")
    parser.add_argument("--algo", choices=("bc", "qsft"), default="bc")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes generating data")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count(), help="the arrow backend's data_num_proc")
    parser.add_argument("--memory-cap-gib", type=float, default=None,
                        help="skip the memory backend above this projected peak (default: half the RAM)")
    parser.add_argument("--case", choices=("memory", "arrow"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        return run_case(args)

    import psutil

    cap = (args.memory_cap_gib or psutil.virtual_memory().total / GIB / 2) * GIB
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"data_scale: {args.algo}, sizes {args.sizes}, arrow data_num_proc {args.num_proc}, {os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / GIB:.0f} GiB RAM; memory backend cap {cap / GIB:.1f} GiB", flush=True)
    header = ("| episodes  | backend     | to train begin s (x) | to first step s (x) | main peak GiB (x) | "
              "any process GiB | tree peak GiB (x) | notes")
    rows, per_episode, fixed = [header, "|" + "---|" * 8], None, 0
    for n in sorted(args.sizes):
        data, generated = dataset(n, args.work, args.jobs)
        print(f"{data}: {data.stat().st_size / GIB:.2f} GiB"
              + (f", generated in {generated:.0f} CPU-s" if generated else " (cached)"), flush=True)
        scratch = args.work / f"cases-{n}"
        shutil.rmtree(scratch, ignore_errors=True)
        base = None
        if per_episode is not None and fixed + per_episode * n > cap:
            rows.append(_row(n, "memory", None, None, f"skipped: projected peak {(fixed + per_episode * n) / GIB:.1f} "
                                                      f"GiB > cap {cap / GIB:.1f} GiB"))
        else:
            try:
                base = measure("memory", data, scratch / "cache-unused", scratch / "run-memory", args, cap)
                rows.append(_row(n, "memory", base, None))
            except OverCap as over:
                rows.append(_row(n, "memory", None, None, f"over the cap: {over}"))
        for name in ("arrow cold", "arrow warm"):
            result = measure("arrow", data, scratch / "cache", scratch / f"run-{name.split()[1]}", args, float("inf"))
            note = f"cache {_folder_bytes(scratch / 'cache') / GIB:.2f} GiB" if name == "arrow cold" else ""
            rows.append(_row(n, name, result, base, note))
        if base is not None and per_episode is None:  # the data's share of the memory backend's peak
            fixed = result["main_peak"]  # a warm arrow run holds the same code and model, and O(batch) data
            per_episode = max(0, base["tree_peak"] - fixed) / n
        print("\n".join(rows[-3:]), flush=True)
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
