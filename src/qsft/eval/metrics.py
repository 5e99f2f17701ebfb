"""Summary statistics of an evaluation and the LMRL-Gym normalised score.

Normalised score (LMRL-Gym): 0 at the minimum return, 50 at the dataset's average return, 100
at the optimal return, piecewise linear in the mean return between them. Its confidence
interval is the return's interval mapped through the same (monotone) function.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from qsft.envs.base import Normalization

# Two-sided 95% normal quantile: returns are averages over many episodes.
Z_95 = 1.959963984540054


@dataclass
class EvalSummary:
    episodes: int
    mean_return: float
    return_ci95: float  # half-width of the 95% confidence interval of the mean return
    return_std: float
    success_rate: float
    invalid_action_rate: float  # invalid actions / agent turns
    mean_turns: float
    normalized_score: float | None
    normalized_score_low: float | None  # the score at mean_return -/+ return_ci95
    normalized_score_high: float | None
    min_return: float | None
    dataset_average: float | None
    optimal_return: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalSummary:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% interval); the half-width is 0 for a single value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, Z_95 * statistics.stdev(values) / math.sqrt(len(values))


def normalization(min_return: float | None, dataset_average: float | None,
                  optimal_return: float | None) -> Normalization | None:
    """The score's anchors, or None when one is unknown (the score is then not reported)."""
    if min_return is None or dataset_average is None or optimal_return is None:
        return None
    return Normalization(float(min_return), float(dataset_average), float(optimal_return))


def summarize(returns: list[float], successes: list[bool], turns: list[int], invalid_actions: list[int],
              norm: Normalization | None) -> EvalSummary:
    mean, ci = mean_ci95(returns)
    score = low = high = None
    if norm is not None:
        score, low, high = norm.score(mean), norm.score(mean - ci), norm.score(mean + ci)
    total_turns = sum(turns)
    return EvalSummary(
        episodes=len(returns), mean_return=mean, return_ci95=ci,
        return_std=statistics.pstdev(returns) if len(returns) > 1 else 0.0,
        success_rate=statistics.fmean(float(s) for s in successes),
        invalid_action_rate=sum(invalid_actions) / total_turns if total_turns else 0.0,
        mean_turns=statistics.fmean(turns), normalized_score=score,
        normalized_score_low=low, normalized_score_high=high,
        min_return=norm.min_return if norm else None, dataset_average=norm.dataset_average if norm else None,
        optimal_return=norm.optimal_return if norm else None)


def format_summary(summary: EvalSummary, title: str = "") -> str:
    """A small aligned text table for the terminal."""
    score = "n/a (normalisation constants unknown)"
    if summary.normalized_score is not None:
        score = (f"{summary.normalized_score:.1f}  [{summary.normalized_score_low:.1f}, "
                 f"{summary.normalized_score_high:.1f}]")
    rows = [
        ("episodes", f"{summary.episodes}"),
        ("mean return", f"{summary.mean_return:.3f} ± {summary.return_ci95:.3f} (95% CI)"),
        ("success rate", f"{100 * summary.success_rate:.1f}%"),
        ("invalid-action rate", f"{100 * summary.invalid_action_rate:.1f}%"),
        ("mean turns", f"{summary.mean_turns:.2f}"),
        ("normalised score", score),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [title] if title else []
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)
