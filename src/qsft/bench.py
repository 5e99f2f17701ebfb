"""`qsft bench` / `qsft demo`: same data, same model, same step budget for every method, then evaluate.

Results folder layout (everything is written there; nothing is only printed):
    OUT/data/<env>.jsonl (+ .stats.json)      the offline dataset (generated once, reused)
    OUT/base/                                 with --pretrain-steps: `qsft pretrain` on that dataset, the
                                              base model every method then starts from (built once, reused)
    OUT/data/<env>-corpus.jsonl               with `pretrain: corpus` in the env YAML: extra scripted episodes
    OUT/data/<env>-pretrain.jsonl             that pretraining alone sees, and the dataset + corpus it reads
    OUT/runs/<algo>-seed<k>/                  each training run (model, qsft.json, TensorBoard logs)
    OUT/runs/<algo>-seed<k>/results.json      its evaluation (+ results.png histogram, transcripts)
    OUT/report.md, OUT/report.png             methods x env table (mean ± 95% CI over seeds) and chart
    OUT/bench.json                            the settings used and per-run scores
A finished run (its results.json exists) is not redone, so an interrupted bench resumes.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from qsft.configs import CORPUS, env_defaults
from qsft.envs.generate import generate_dataset, stats_path
from qsft.errors import ConfigError
from qsft.eval.evaluate import EvalResult, evaluate
from qsft.eval.metrics import mean_ci95
from qsft.io import atomic_open, atomic_write_json, atomic_write_text
from qsft.run_info import RUN_FILE
from qsft.training.config import PretrainConfig
from qsft.training.run import ALGORITHMS, CONFIG_CLASSES, PRETRAIN, train

RESULTS = "results.json"


@dataclass
class BenchSettings:
    env: str
    algos: list[str]
    seeds: int = 3
    first_seed: int = 0  # training seeds are first_seed .. first_seed + seeds - 1
    episodes: int = 1000  # dataset size
    eval_episodes: int = 100
    model: str = "tiny"
    budget: int | None = None  # optimizer steps per method (None: the env YAML's max_steps)
    data_seed: int = 0
    policy: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every method
    algo_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # {algorithm: its own, over the rest}
    pretrain_steps: int | None = None  # `qsft pretrain` steps for OUT/base (None: the env YAML's, at most budget)
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # --env-arg: the variant generated and evaluated

    def __post_init__(self) -> None:
        unknown = [a for a in self.algos if a not in ALGORITHMS]
        if unknown:
            raise ConfigError(f"unknown algorithm(s) {', '.join(unknown)}; choose from {', '.join(ALGORITHMS)}")
        if self.seeds < 1 or self.episodes < 1 or self.eval_episodes < 1:
            raise ConfigError("seeds, episodes and eval episodes must be at least 1")
        unknown = [a for a in self.algo_overrides if a not in ALGORITHMS]
        if unknown:
            raise ConfigError(f"settings for unknown algorithm(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(ALGORITHMS)}")
        if self.pretrain_steps is not None and self.pretrain_steps < 0:
            raise ConfigError(f"pretrain steps must be >= 0, got {self.pretrain_steps}")


def _method_overrides(settings: BenchSettings, defaults: dict[str, Any], algo: str, seed: int) -> dict[str, Any]:
    overrides = {**defaults.get("train", {}), **defaults.get("algos", {}).get(algo, {}), **settings.overrides,
                 **settings.algo_overrides.get(algo, {})}
    overrides["seed"] = seed
    if settings.budget is not None:
        overrides["max_steps"] = settings.budget
    return overrides


def default_jobs(model: str) -> int:
    """Parallel runs for `qsft bench` when not given: 2 for the tiny preset on a CPU-only machine with 2+ cores."""
    import os

    import torch

    return 2 if model == "tiny" and not torch.cuda.is_available() and (os.cpu_count() or 1) >= 2 else 1


def run_bench(settings: BenchSettings, out: str | Path, progress: bool = True, log=print,
              jobs: int = 1) -> list[EvalResult]:
    """Every (algorithm, seed) run, then the report. `jobs` > 1 runs that many in parallel processes,
    each with its share of the CPU threads; a Q-SFT run still waits for the BC run of its seed.
    The processes are spawned, so a script calling this with `jobs` > 1 needs the usual
    `if __name__ == "__main__":` guard around it."""
    out = Path(out)
    defaults = env_defaults(settings.env)
    _check_setting_names(settings)
    data = out / "data" / f"{settings.env}.jsonl"
    if not stats_path(data).is_file():
        data_cfg = defaults.get("data", {})
        log(f"generating {settings.episodes} {settings.env} episodes -> {data}")
        stats = generate_dataset(settings.env, settings.policy or data_cfg.get("policy"), settings.episodes,
                                 settings.data_seed, data, env_kwargs=settings.env_kwargs, progress=progress)
        log(f"  return {stats['return_mean']:.2f} (min {stats['return_min']:g}, max {stats['return_max']:g}), "
            f"success {stats['success_rate']:.0%}, optimal {stats['optimal_rate']:.0%}")
    else:
        _check_same_variant(settings, data)
    steps = pretrain_steps(settings, defaults)
    settings = replace(settings, pretrain_steps=steps)
    runs_settings = settings
    if steps:  # every method starts from the same pretrained base: the bench compares methods, not starts
        runs_settings = replace(settings, model=str(_pretrained_base(settings, defaults, data, out, progress, log)))
    # BC first: a Q-SFT run of the same seed reuses it as its frozen behavior model (Algorithm 1).
    order = sorted(settings.algos, key=lambda a: a != "bc")
    runs = [(algo, seed) for seed in range(settings.first_seed, settings.first_seed + settings.seeds)
            for algo in order]
    done: dict[tuple[str, int], EvalResult] = {}
    for algo, seed in runs:
        if (result_file := _run_dir(out, algo, seed) / RESULTS).is_file():
            if _recorded_settings(out, algo, seed) not in (None, _run_settings(runs_settings, defaults, algo, seed)):
                log(f"{algo} seed {seed}: its settings changed since it ran (environment YAML or flags), retraining")
                shutil.rmtree(_run_dir(out, algo, seed))
                continue
            log(f"{algo} seed {seed}: done earlier, reusing {result_file}")
            done[algo, seed] = EvalResult.load(result_file)
    todo = [run for run in runs if run not in done]
    if jobs <= 1 or len(todo) <= 1:
        for algo, seed in todo:
            done[algo, seed] = _train_and_evaluate(runs_settings, defaults, data, out, algo, seed, progress, log)
    else:
        done.update(_run_parallel(runs_settings, defaults, data, out, todo, jobs, log))
    results = [done[run] for run in runs]
    write_bench_report(settings, results, out)
    return results


PRETRAIN_TIME = "pretrain_time.json"


def _check_same_variant(settings: BenchSettings, data: Path) -> None:
    """A reused dataset must come from the environment variant this bench asks for (`--env-arg`)."""
    logged = json.loads(stats_path(data).read_text()).get("env_kwargs") or {}
    if logged != settings.env_kwargs:
        raise ConfigError(f"{data} was generated with env args {logged}, this bench asks for {settings.env_kwargs}: "
                          "use another --out (or the same --env-arg)")


def pretrain_steps(settings: BenchSettings, defaults: dict[str, Any]) -> int:
    """--pretrain-steps, else the env YAML's `pretrain: max_steps` cut to --budget when that is smaller (a quick
    bench stays quick), else 0 (no pretraining)."""
    if settings.pretrain_steps is not None:
        return settings.pretrain_steps
    steps = int(defaults.get(PRETRAIN, {}).get("max_steps", 0))
    return min(steps, settings.budget) if settings.budget is not None else steps


def _pretrained_base(settings: BenchSettings, defaults: dict[str, Any], data: Path, out: Path, progress: bool,
                     log) -> Path:
    """OUT/base: `qsft pretrain` on the bench's data from `settings.model` (the data seed's base; reused)."""
    base = out / "base"
    if (base / RUN_FILE).is_file():
        log(f"pretrained base: done earlier, reusing {base}")
        return base
    known = {f.name for f in fields(PretrainConfig)} - {"output_dir"}
    merged = {**defaults.get("train", {}), **defaults.get(PRETRAIN, {}), **settings.overrides}
    overrides = {k: v for k, v in merged.items() if k in known}
    overrides.update(max_steps=settings.pretrain_steps, seed=settings.data_seed)
    overrides.setdefault("disable_tqdm", not progress)
    log(f"pretraining the base model ({settings.pretrain_steps} steps, every transcript token) -> {base}")
    start = time.perf_counter()
    data = _pretraining_data(settings, defaults, data, out, progress, log)
    train(PRETRAIN, data, settings.model, base, overrides, env=settings.env)
    seconds = time.perf_counter() - start
    atomic_write_json(base / PRETRAIN_TIME, {"steps": settings.pretrain_steps, "seconds": seconds})
    log(f"  pretrained in {seconds:.0f} s")
    return base


CORPUS_SEED_OFFSET = 1_000_000  # the corpus of data seed s is generated with seed s + this: no shared episodes


def _pretraining_data(settings: BenchSettings, defaults: dict[str, Any], data: Path, out: Path, progress: bool,
                      log) -> Path:
    """The bench's dataset, or, when the env YAML's `pretrain: corpus: {episodes, policy}` asks for it, that
    dataset followed by a corpus of extra scripted episodes (cheap to generate: a solver, an engine) that only
    pretraining reads. The RL methods still train on the bench's dataset alone; the tiny tokenizer, built from
    what pretraining reads, covers both."""
    corpus = (defaults.get(PRETRAIN) or {}).get(CORPUS)
    if not corpus:
        return data
    if not isinstance(corpus, dict) or not isinstance(corpus.get("episodes"), int) or corpus["episodes"] < 1:
        raise ConfigError(f"{settings.env} YAML: pretrain: corpus must be a mapping with episodes (an integer >= 1) "
                          f"and optionally policy, got {corpus!r}")
    extra = out / "data" / f"{settings.env}-corpus.jsonl"
    policy = corpus.get("policy") or settings.policy or defaults.get("data", {}).get("policy")
    if not _same_corpus(extra, corpus["episodes"], policy):
        log(f"generating a pretraining corpus of {corpus['episodes']} {settings.env} episodes [{policy}] -> {extra}")
        generate_dataset(settings.env, policy, corpus["episodes"], settings.data_seed + CORPUS_SEED_OFFSET, extra,
                         env_kwargs=settings.env_kwargs, progress=progress)
    combined = out / "data" / f"{settings.env}-pretrain.jsonl"
    with atomic_open(combined, "wb") as handle:  # both written by generate_dataset: whole lines
        for part in (data, extra):
            with part.open("rb") as source:
                shutil.copyfileobj(source, handle)
    return combined


def _same_corpus(path: Path, episodes: int, policy: str | None) -> bool:
    """A corpus generated earlier is reused only while the YAML still asks for it (size and policy)."""
    if not stats_path(path).is_file():
        return False
    stats = json.loads(stats_path(path).read_text())
    return stats.get("episodes") == episodes and (policy is None or stats.get("policy") == policy)


def _check_setting_names(settings: BenchSettings) -> None:
    """A misspelt `--set` name fails before any data or training, not when its method's turn comes."""
    for algo in settings.algos:
        known = {f.name for f in fields(CONFIG_CLASSES[algo])}
        unknown = sorted((set(settings.overrides) | set(settings.algo_overrides.get(algo, {}))) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) for {algo}: {', '.join(unknown)} (a setting for every method must "
                              f"be one every method has; ALGO.KEY=VALUE sets one method's)")


def _run_dir(out: Path, algo: str, seed: int) -> Path:
    return out / "runs" / f"{algo}-seed{seed}"


def _train_and_evaluate(settings: BenchSettings, defaults: dict[str, Any], data: Path, out: Path, algo: str,
                        seed: int, progress: bool, log) -> EvalResult:
    run_dir = _run_dir(out, algo, seed)
    overrides = _method_overrides(settings, defaults, algo, seed)
    if _needs_bc(settings, algo, overrides):
        overrides["behavior"] = str(_run_dir(out, "bc", seed))
    overrides.setdefault("disable_tqdm", not progress)
    log(f"training {algo} seed {seed} ({overrides.get('max_steps', 'default')} steps, from {settings.model}) "
        f"-> {run_dir}")
    train(algo, data, settings.model, run_dir, overrides, env=settings.env)
    eval_cfg = defaults.get("eval", {})
    mode_cfg = eval_cfg.get(algo, {}) if isinstance(eval_cfg.get(algo), dict) else {}
    result = evaluate(run_dir, settings.env, settings.eval_episodes, mode=mode_cfg.get("decode"),
                      beta=mode_cfg.get("beta"), seed=1000 + seed, greedy=mode_cfg.get("greedy", False),
                      batch_size=eval_cfg.get("batch_size", 32), env_kwargs=settings.env_kwargs,
                      out=run_dir / RESULTS, label=algo, progress=progress)
    log(f"  {algo} seed {seed}: return {result.summary.mean_return:.2f}, "
        f"success {result.summary.success_rate:.0%}, score {result.summary.normalized_score}")
    atomic_write_json(run_dir / RUN_SETTINGS, _run_settings(settings, defaults, algo, seed))
    return result


RUN_SETTINGS = "bench_settings.json"  # what a run was trained and evaluated with: reused only while it still holds


def _run_settings(settings: BenchSettings, defaults: dict[str, Any], algo: str, seed: int) -> dict[str, Any]:
    """The training overrides and evaluation options of one bench run (JSON-comparable)."""
    eval_cfg = defaults.get("eval", {})
    return json.loads(json.dumps({
        "train": _method_overrides(settings, defaults, algo, seed), "model": settings.model,
        "eval": eval_cfg.get(algo) if isinstance(eval_cfg.get(algo), dict) else {},
        "eval_episodes": settings.eval_episodes, "env_kwargs": settings.env_kwargs}, default=str))


def _recorded_settings(out: Path, algo: str, seed: int) -> dict[str, Any] | None:
    """The settings a finished run recorded; None for runs from before they were recorded (reused as they are)."""
    path = _run_dir(out, algo, seed) / RUN_SETTINGS
    return json.loads(path.read_text()) if path.is_file() else None


def _needs_bc(settings: BenchSettings, algo: str, overrides: dict[str, Any]) -> bool:
    return algo == "qsft" and "bc" in settings.algos and "behavior" not in overrides


def _worker_init(threads: int, parent: int) -> None:
    import torch

    _die_with_parent(parent)
    torch.set_num_threads(threads)


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this worker when the bench process dies (a killed bench leaves no runs behind)."""
    import os
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(settings: BenchSettings, defaults: dict[str, Any], data: Path, out: Path, algo: str,
            seed: int) -> Path:
    def log(message: str) -> None:
        print(message, flush=True)

    _train_and_evaluate(settings, defaults, data, out, algo, seed, False, log)
    return _run_dir(out, algo, seed) / RESULTS


# Parallel start order: BC first (Q-SFT runs wait for it), then the longest runs (a smaller tail).
_PRIORITY = {"bc": 0, "qsft": 1, "ilql": 2, "mc": 2}


def _run_parallel(settings: BenchSettings, defaults: dict[str, Any], data: Path, out: Path,
                  todo: list[tuple[str, int]], jobs: int, log) -> dict[tuple[str, int], EvalResult]:
    """Runs in `jobs` spawned processes (threads split evenly); a Q-SFT run starts once its seed's BC is done.

    On a failure the runs already started finish (their results are kept for a resume), then it raises."""
    import multiprocessing
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    log(f"running {len(todo)} runs, {jobs} at a time ({threads} thread(s) each)")
    pending, running, finished = list(todo), {}, {}
    # a Q-SFT run trained on its seed's BC run (the frozen behavior model) waits for that run
    waits_for = {run: ("bc", run[1]) for run in todo
                 if _needs_bc(settings, run[0], _method_overrides(settings, defaults, *run))}
    failure: BaseException | None = None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(threads, os.getpid())) as pool:
        while pending or running:
            unfinished = set(pending) | set(running.values())
            ready = sorted((run for run in pending if waits_for.get(run) not in unfinished),
                           key=lambda run: (_PRIORITY.get(run[0], len(_PRIORITY)), run[1]))
            while failure is None and ready and len(running) < jobs:
                run = ready.pop(0)
                pending.remove(run)
                running[pool.submit(_worker, settings, defaults, data, out, *run)] = run
            if not running:
                break
            complete, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in complete:
                run = running.pop(future)
                try:
                    finished[run] = EvalResult.load(future.result())
                except BaseException as error:  # noqa: BLE001 - re-raised once the running runs finish
                    failure = failure or error
    if failure is not None:
        raise failure
    return finished


def aggregate(results: list[EvalResult]) -> dict[str, dict[str, float]]:
    """Per method: mean ± 95% CI over seeds (over episodes when there is one seed) of score and return."""
    by_method: dict[str, list[EvalResult]] = {}
    for r in results:
        by_method.setdefault(r.config.get("method", r.method), []).append(r)
    table = {}
    for method, runs in by_method.items():
        scores = [r.summary.normalized_score for r in runs if r.summary.normalized_score is not None]
        returns = [r.summary.mean_return for r in runs]
        success = [r.summary.success_rate for r in runs]
        score_mean, score_ci = mean_ci95(scores) if scores else (float("nan"), float("nan"))
        ret_mean, ret_ci = mean_ci95(returns)
        if len(runs) == 1:  # one seed: show the evaluation's own 95% interval over episodes
            summary = runs[0].summary
            ret_ci = summary.return_ci95
            if summary.normalized_score_low is not None and summary.normalized_score_high is not None:
                score_ci = (summary.normalized_score_high - summary.normalized_score_low) / 2
        table[method] = {"seeds": len(runs), "score": score_mean, "score_ci95": score_ci, "return": ret_mean,
                         "return_ci95": ret_ci, "success": statistics.fmean(success),
                         "per_seed_scores": scores}
    return table


def format_table(env: str, table: dict[str, dict[str, float]]) -> str:
    lines = ["| method | env | seeds | normalised score | return | success |",
             "|---|---|---|---|---|---|"]
    for method, row in table.items():
        lines.append(f"| {method} | {env} | {row['seeds']} | {row['score']:.1f} ± {row['score_ci95']:.1f} | "
                     f"{row['return']:.2f} ± {row['return_ci95']:.2f} | {row['success']:.0%} |")
    return "\n".join(lines) + "\n"


def write_bench_report(settings: BenchSettings, results: list[EvalResult], out: Path) -> Path:
    from qsft.eval.plots import comparison_chart

    table = aggregate(results)
    header = f"# qsft bench: {settings.env}\n\n"
    timing = out / "base" / PRETRAIN_TIME
    if settings.pretrain_steps and timing.is_file():
        spent = json.loads(timing.read_text())
        header += (f"Every method starts from OUT/base: `qsft pretrain` on the same data, {spent['steps']} steps, "
                   f"{spent['seconds']:.0f} s (not counted in the methods' step budget).\n\n")
    atomic_write_text(out / "report.md", header + format_table(settings.env, table))
    scores = {(m, settings.env): (row["score"], row["score"] - row["score_ci95"], row["score"] + row["score_ci95"])
              for m, row in table.items()}
    comparison_chart(list(table), [settings.env], scores, out / "report.png", "normalised score")
    atomic_write_json(out / "bench.json", {"settings": asdict(settings), "table": table})
    return out / "report.md"
