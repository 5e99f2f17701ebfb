"""Training step time and peak memory: SFT vs Q-SFT (live behavior model / behavior cache) vs ILQL.

    python benchmarks/train_step.py --shape tiny                       # seconds: a smoke run
    python benchmarks/train_step.py --shape gpt2-small                 # 12x768, vocab 50257: ~10 min on 2 cores
    python benchmarks/train_step.py --shape gpt2-small --rounds 2 --steps 3 --batch 8 --seq 256

Every variant runs the real trainer stack (`BCTrainer`, `QSFTTrainer`, `ILQLTrainer`: compute_loss,
backward, AdamW, target updates) on the same synthetic token-MDP batches (random ids, a share of
agent tokens set by --agent-tokens/--env-tokens, truncated episodes), from random init.

Each variant runs in a fresh subprocess (one per variant per round; rounds interleave the variants,
rotating their order) so that memory numbers do not inherit another variant's high-water mark.
Time: median over all timed steps (after --warmup steps) of wall time from the Trainer's
`on_step_begin` to `on_step_end` (so Polyak updates are included), and of the process's CPU time
over the same span (less sensitive to other processes on a shared machine than wall time). Memory: Linux VmHWM (peak
resident set) reset through /proc/self/clear_refs at each step begin, after glibc's malloc_trim has
returned freed heap memory (so the resident set then is what is live): `peak` is the largest VmHWM
seen during a timed step, `step` is that peak minus the resident set at the step's begin (what one
step allocates on top of the weights, gradients and optimizer state). The behavior cache is built
once in its own subprocess before the timed variants (its time is reported separately).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {  # n_layer, n_embd, n_head, vocab
    "tiny": (2, 128, 2, 2000),
    "small": (4, 256, 4, 8000),
    "gpt2-small": (12, 768, 12, 50257),
}
VARIANTS = ("sft", "qsft_live", "qsft_cache", "qsft_cache_bf16", "ilql")
LABELS = {"sft": "SFT (BCTrainer)", "qsft_live": "Q-SFT, live behavior", "qsft_cache": "Q-SFT, behavior cache",
          "qsft_cache_bf16": "Q-SFT, behavior cache, bf16 target", "ilql": "ILQL"}


# --- memory: Linux's peak resident set, resettable per step ---
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_and_reset_peak() -> None:
    """Return freed heap memory to the OS (glibc keeps it otherwise), then reset VmHWM to the current VmRSS."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


# --- the workload, rebuilt identically in every subprocess ---
def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {tok: i for i, tok in enumerate(["<pad>", "<bos>", "<eot>", "<unk>"])}
    words.update({f"t{i}": i for i in range(4, vocab)})
    backend = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eot>", unk_token="<unk>")


def _episodes(args, vocab: int):
    """Truncated episodes of exactly --seq tokens: observations of --env-tokens, utterances of --agent-tokens."""
    import random

    from qsft.data.episode import Episode, Turn

    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(f"t{rng.randrange(4, vocab)}" for _ in range(n))

    episodes = []
    for i in range(args.batch * args.batches):
        turns, length = [Turn("env", text(args.env_tokens - 1))], args.env_tokens  # BOS + observation
        while length + args.agent_tokens + args.env_tokens <= args.seq:
            turns.append(Turn("agent", text(args.agent_tokens - 1), 0.0))  # + the end-of-turn token
            turns.append(Turn("env", text(args.env_tokens)))
            length += args.agent_tokens + args.env_tokens
        last = turns[-1]
        turns[-1] = Turn("env", last.text + " " + text(args.seq - length) if args.seq > length else last.text)
        turns = [t if t is not turns[-2] else Turn("agent", t.text, 1.0) for t in turns]
        episodes.append(Episode(f"synthetic-{i}", tuple(turns), False, {}))
    return episodes


def _model(args, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_embd, n_head, vocab = SHAPES[args.shape]
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=max(args.seq, 64), n_layer=n_layer, n_embd=n_embd,
                        n_head=n_head, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def _config(cls, args, out: str, **extra):
    return cls(output_dir=out, report_to="none", use_cpu=True, per_device_train_batch_size=args.batch,
               max_steps=args.warmup + args.steps, save_strategy="no", logging_steps=10_000, disable_tqdm=True,
               max_length=args.seq, learning_rate=1e-4, seed=0, **extra)


def _trainer(variant: str, args, work: Path):
    from qsft.models.behavior_cache import CACHE_FILE, BehaviorCachedDataset, behavior_cache_for
    from qsft.training.bc import BCTrainer
    from qsft.training.config import BCConfig, QSFTConfig
    from qsft.training.data import qsft_dataset
    from qsft.training.ilql import ILQLConfig, ILQLModel, ILQLTrainer
    from qsft.training.qsft_trainer import QSFTTrainer

    tokenizer = _tokenizer(SHAPES[args.shape][3])
    episodes = _episodes(args, SHAPES[args.shape][3])
    reward = {"reward_transform": "none", "gamma": 0.99}
    out = str(work / variant)
    if variant == "sft":
        config = _config(BCConfig, args, out)
        dataset, _ = qsft_dataset(episodes, tokenizer, _config(QSFTConfig, args, out, **reward), None)
        return BCTrainer(_model(args, 0), config, dataset, tokenizer), dataset
    if variant == "ilql":
        config = _config(ILQLConfig, args, out, **reward)
        dataset, _ = qsft_dataset(episodes, tokenizer, config, None)
        return ILQLTrainer(ILQLModel(_model(args, 0)), config, dataset, tokenizer), dataset
    target_dtype = "bfloat16" if variant.endswith("_bf16") else "float32"
    config = _config(QSFTConfig, args, out, loss_variant="uniform", support_threshold=args.support_threshold,
                     target_dtype=target_dtype, **reward)
    dataset, _ = qsft_dataset(episodes, tokenizer, config, None)
    behavior = _model(args, 1)
    if variant in ("qsft_cache", "qsft_cache_bf16", "build_cache"):
        cache, built = behavior_cache_for(work / CACHE_FILE, behavior, dataset.samples, args.support_threshold,
                                          pad_token_id=tokenizer.pad_token_id)
        if variant == "build_cache":
            return None, cache
        if built:
            raise RuntimeError("the timed variant rebuilt the behavior cache: the key changed between processes")
        dataset = BehaviorCachedDataset(dataset.samples, cache)
    return QSFTTrainer(_model(args, 0), behavior, config, dataset, tokenizer), dataset


def run_child(variant: str, args, work: Path) -> dict:
    import torch
    from transformers import TrainerCallback

    if args.threads:
        torch.set_num_threads(args.threads)
    if variant == "build_cache":
        start = time.perf_counter()
        _, cache = _trainer(variant, args, work)
        return {"variant": variant, "seconds": time.perf_counter() - start, **cache.stats()}
    trainer, dataset = _trainer(variant, args, work)

    class StepMeter(TrainerCallback):
        def __init__(self) -> None:
            self.times, self.cpu, self.peaks_kb, self.steps_kb, self.base_kb = [], [], [], [], []

        def on_step_begin(self, *_, **__):
            _release_and_reset_peak()
            self.rss = _status_kb("VmRSS")
            self.start, self.start_cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.start)
            self.cpu.append(time.process_time() - self.start_cpu)
            peak = _status_kb("VmHWM")
            self.peaks_kb.append(peak)
            self.steps_kb.append(peak - self.rss)
            self.base_kb.append(self.rss)

    meter = StepMeter()
    trainer.add_callback(meter)  # after the trainers' own callbacks: Polyak updates fall inside the step
    trainer.train()
    timed = slice(args.warmup, None)
    return {"variant": variant, "times": meter.times[timed], "cpu": meter.cpu[timed], "peak_kb": max(meter.peaks_kb[timed]),
            "step_kb": max(meter.steps_kb[timed]), "base_kb": max(meter.base_kb[timed]),
            "tokens": sum(len(s) for s in dataset.samples[:args.batch]) if hasattr(dataset, "samples") else None}


def _spawn(variant: str, args, work: Path) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--workdir", str(work)] + args.passthrough
    env = dict(os.environ, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-small", help="Model shape (GPT-2 blocks).")
    parser.add_argument("--batch", type=int, default=8, help="Sequences per step.")
    parser.add_argument("--seq", type=int, default=256, help="Tokens per sequence.")
    parser.add_argument("--agent-tokens", type=int, default=8, help="Tokens per agent utterance (incl. end-of-turn).")
    parser.add_argument("--env-tokens", type=int, default=24, help="Tokens per observation.")
    parser.add_argument("--batches", type=int, default=2, help="Distinct batches in the dataset (cycled).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps per subprocess.")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per subprocess.")
    parser.add_argument("--rounds", type=int, default=1, help="Subprocesses per variant (interleaved).")
    parser.add_argument("--support-threshold", type=float, default=1e-4, help="Q-SFT support threshold.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated subset of {VARIANTS}.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--json", default=None, help="Also write the raw results to this JSON file.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(args.child, args, Path(args.workdir))), flush=True)
        return
    skip = {"--variants", "--rounds", "--json"}
    argv, args.passthrough = sys.argv[1:], []
    i = 0
    while i < len(argv):
        name = argv[i].split("=")[0]
        step = 1 if "=" in argv[i] else 2
        if name not in skip:
            args.passthrough += argv[i:i + step]
        i += step
    variants = [v for v in args.variants.split(",") if v]
    n_layer, n_embd, _, vocab = SHAPES[args.shape]
    print(f"shape {args.shape} ({n_layer}x{n_embd}, vocab {vocab}), batch {args.batch}x{args.seq}, "
          f"agent share {args.agent_tokens}/{args.agent_tokens + args.env_tokens}, {args.warmup} warm-up + "
          f"{args.steps} timed steps x {args.rounds} round(s), threads {args.threads or 'default'}", flush=True)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache_stats = None
        if any(v.startswith("qsft_cache") for v in variants):
            cache_stats = _spawn("build_cache", args, work)
            print(f"behavior cache built in {cache_stats['seconds']:.1f} s: {cache_stats['states']} states, "
                  f"support size mean {cache_stats['mean_support_size']:.1f}, largest "
                  f"{cache_stats['max_support_size']}", flush=True)
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for variant in order:
                result = _spawn(variant, args, work)
                results[variant].append(result)
                print(f"  round {r + 1} {variant}: steps {[round(t, 2) for t in result['times']]} s "
                      f"(CPU {[round(t, 2) for t in result['cpu']]} s), "
                      f"peak {result['peak_kb'] / 2**20:.2f} GiB", flush=True)
    logits_gib = args.batch * args.seq * vocab * 4 / 2**30
    summary = {}
    for variant in variants:
        runs = results[variant]
        summary[variant] = {
            "median_s": statistics.median(t for run in runs for t in run["times"]),
            "median_cpu_s": statistics.median(t for run in runs for t in run["cpu"]),
            "peak_gib": max(run["peak_kb"] for run in runs) / 2**20,
            "step_gib": max(run["step_kb"] for run in runs) / 2**20,
            "base_gib": max(run["base_kb"] for run in runs) / 2**20,
        }
    ref = summary.get("sft")
    print(f"\none [B, T, V] fp32 logits tensor = {logits_gib:.3f} GiB")
    print("| variant | median step wall (s) | x SFT | median step CPU (s) | x SFT | peak RSS (GiB) | "
          "peak - SFT's (in logits tensors) | step alloc (GiB) | step alloc - SFT's (in logits tensors) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, row in summary.items():
        ratio = f"{row['median_s'] / ref['median_s']:.2f}" if ref else "-"
        cpu_ratio = f"{row['median_cpu_s'] / ref['median_cpu_s']:.2f}" if ref else "-"
        extra = f"{(row['step_gib'] - ref['step_gib']) / logits_gib:+.2f}" if ref else "-"
        extra_peak = f"{(row['peak_gib'] - ref['peak_gib']) / logits_gib:+.2f}" if ref else "-"
        print(f"| {LABELS[variant]} | {row['median_s']:.2f} | {ratio} | {row['median_cpu_s']:.2f} | {cpu_ratio} | "
              f"{row['peak_gib']:.2f} | {extra_peak} | {row['step_gib']:.2f} | {extra} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cache": cache_stats, "runs": results,
                                               "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
