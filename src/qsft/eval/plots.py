"""PNG figures: the return histogram of one evaluation and the methods x envs comparison chart.

matplotlib runs with the Agg backend (no display on training machines); figures are written to
a temp file and renamed, like every other output of qsft.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

from qsft.io import atomic_open  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_open(path, "wb", encoding=None) as handle:
        fig.savefig(handle, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def return_histogram(returns: list[float], path: str | os.PathLike, title: str = "",
                     mean: float | None = None) -> Path:
    """Histogram of per-episode returns, with the mean marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    low, high = min(returns), max(returns)
    # Returns are often small integers: one unit-wide bar per value reads better than arbitrary bins.
    if high - low <= 60 and all(float(v).is_integer() for v in returns):
        bins = [low - 0.5 + k for k in range(int(high - low) + 2)]
    else:
        bins = min(30, max(5, len(returns) // 4))
    ax.hist(returns, bins=bins, color="#4C72B0", edgecolor="white")
    if mean is not None:
        ax.axvline(mean, color="#C44E52", linestyle="--", label=f"mean {mean:.2f}")
        ax.legend()
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title(title or f"return distribution ({len(returns)} episodes)")
    return _save(fig, path)


def comparison_chart(methods: list[str], envs: list[str], scores: dict[tuple[str, str], tuple[float, float, float]],
                     path: str | os.PathLike, ylabel: str = "normalised score") -> Path:
    """Grouped bars: one group per env, one bar per method; scores[(method, env)] = (value, low, high)."""
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(envs) * max(1, len(methods)) / 2 + 2), 4.5))
    width = 0.8 / max(1, len(methods))
    for m, method in enumerate(methods):
        xs, heights, errors = [], [], [[], []]
        for e, env in enumerate(envs):
            if (method, env) not in scores:
                continue
            value, low, high = scores[(method, env)]
            xs.append(e - 0.4 + width * (m + 0.5))
            heights.append(value)
            errors[0].append(max(0.0, value - low))
            errors[1].append(max(0.0, high - value))
        ax.bar(xs, heights, width, yerr=errors, capsize=3, label=method)
    ax.set_xticks(range(len(envs)))
    ax.set_xticklabels(envs)
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.legend(fontsize="small")
    ax.set_title(f"{ylabel} by method and environment (95% CI)")
    return _save(fig, path)
