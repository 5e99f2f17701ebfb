"""`evaluate()`: roll a trained run out in an environment and summarise it (behind `qsft eval`).

The result file (JSON, written atomically) holds the summary, the exact configuration used and
every episode's transcript; a PNG histogram of the returns is written beside it
(`results.json` -> `results.returns.png`).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from qsft.data.io import load_episodes
from qsft.decoding.options import DEFAULT_MAX_NEW_TOKENS
from qsft.decoding.policy import Policy, load_policy
from qsft.envs.registry import make
from qsft.errors import ConfigError, QSFTError
from qsft.eval.metrics import EvalSummary, format_summary, normalization, summarize
from qsft.eval.plots import return_histogram
from qsft.eval.rollout import EpisodeResult, rollout
from qsft.io import atomic_write_json
from qsft.model_card import write_model_card
from qsft.run_info import RunInfo

RESULTS_KIND = "qsft-eval"


@dataclass
class EvalResult:
    config: dict[str, Any]
    summary: EvalSummary
    episodes: list[EpisodeResult] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def env(self) -> str:
        return self.config["env"]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": RESULTS_KIND, "config": self.config, "summary": self.summary.to_dict(),
                "episodes": [ep.to_dict() for ep in self.episodes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "results") -> EvalResult:
        if data.get("kind") != RESULTS_KIND or "summary" not in data:
            raise ConfigError(f"{source} is not a `qsft eval` results file (no kind '{RESULTS_KIND}')")
        return cls(data["config"], EvalSummary.from_dict(data["summary"]),
                   [EpisodeResult.from_dict(ep) for ep in data.get("episodes", [])])

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvalResult:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read evaluation results {path}: {err}") from None
        return cls.from_dict(data, str(path))

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write the JSON and the return histogram beside it; returns both paths."""
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        plot = histogram_path(path)
        return_histogram([ep.total_return for ep in self.episodes], plot,
                         f"{self.method} on {self.env}: returns of {len(self.episodes)} episodes",
                         self.summary.mean_return)
        return path, plot

    def format(self) -> str:
        return format_summary(self.summary, f"{self.method} on {self.env} ({self.config['run']})")


def histogram_path(results_path: str | os.PathLike) -> Path:
    path = Path(results_path)
    return path.with_name(f"{path.stem}.returns.png")


def method_label(policy: Policy) -> str:
    """What tables call the method: the algorithm, plus the extraction rule and beta for Q-SFT."""
    if policy.run_info.algo != "qsft":
        return policy.run_info.algo
    if policy.mode in ("beta", "beta_ratio"):
        return f"qsft[{policy.mode}, beta={policy.beta:g}]"
    return f"qsft[{policy.mode}]"


def dataset_average(info: RunInfo, env_name: str) -> float | None:
    """The training data's mean return: from its stats sidecar, else from the data file itself."""
    if info.env is not None and info.env != env_name:
        return None  # the run was trained on another environment's data
    stats = info.data_stats or {}
    value = (stats.get("normalization") or {}).get("dataset_average", stats.get("dataset_average"))
    if value is None:
        value = stats.get("return_mean")
    if value is not None:
        return float(value)
    if info.data and Path(info.data).is_file():
        try:
            return statistics.fmean(ep.total_return for ep in load_episodes(info.data))
        except QSFTError:
            return None
    return None


def evaluate(run_dir: str | os.PathLike, env_name: str | None = None, episodes: int = 100,
             mode: str | None = None, beta: float | None = None, seed: int = 0, greedy: bool = False,
             batch_size: int = 16, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, device: str = "cpu",
             env_kwargs: dict[str, Any] | None = None, out: str | os.PathLike | None = None,
             label: str | None = None, progress: bool = False) -> EvalResult:
    """Evaluate the run in `run_dir` on `env_name` (default: the env it was trained on).

    `beta=None` uses the environment's `default_beta`; `out` also writes the JSON and PNG.
    """
    info = RunInfo.load(run_dir)
    env_name = env_name or info.env
    if env_name is None:
        raise ConfigError(f"{run_dir} records no environment; pass --env")
    env_kwargs = dict(env_kwargs or {})
    probe = make(env_name, **env_kwargs)
    default_beta, min_return = probe.default_beta, probe.min_return
    probe.close()
    policy = load_policy(run_dir, mode, beta, device, default_beta=default_beta)

    bar = tqdm(total=episodes, desc=f"eval {env_name}", unit="ep", disable=not progress)
    try:
        results = rollout(policy, lambda: make(env_name, **env_kwargs), episodes, seed, batch_size, greedy,
                          max_new_tokens, progress=lambda n: bar.update(n - bar.n))
    finally:
        bar.close()

    stats = (info.data_stats or {}).get("normalization") or {}
    optimal = [r.optimal_return for r in results]
    # The optimum of the evaluated starts when the env knows it; else the dataset's anchor.
    optimal_return = statistics.fmean(optimal) if all(o is not None for o in optimal) else stats.get("optimal_return")
    norm = normalization(min_return if min_return is not None else stats.get("min_return"),
                         dataset_average(info, env_name), optimal_return)
    summary = summarize([r.total_return for r in results], [r.success for r in results],
                        [r.turns for r in results], [r.invalid_actions for r in results], norm)
    config = {
        **policy.describe(), "method": label or method_label(policy), "env": env_name, "env_kwargs": env_kwargs,
        "episodes": episodes, "seed": seed, "greedy": greedy, "batch_size": batch_size,
        "max_new_tokens": max_new_tokens, "history_turns": info.history_turns, "max_length": info.max_length,
    }
    result = EvalResult(config, summary, results)
    if out is not None:
        result.save(out)
        if Path(out).resolve().parent == Path(run_dir).resolve():  # results kept with the run: list them there
            write_model_card(run_dir)
    return result
