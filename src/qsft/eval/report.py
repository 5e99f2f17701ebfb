"""`qsft report`: compare evaluation results across methods and environments.

Inputs are `qsft eval` result files, or folders (run dirs) holding them. Results of the same
method on the same environment (e.g. several seeds) are pooled episode by episode. Outputs:
a table (markdown, CSV or JSON) and a grouped bar chart of the normalised score with 95% CIs.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from qsft.errors import ConfigError
from qsft.eval.evaluate import RESULTS_KIND, EvalResult
from qsft.eval.metrics import EvalSummary, normalization, summarize
from qsft.eval.plots import comparison_chart
from qsft.io import atomic_write_text

FORMATS = ("md", "csv", "json")
COLUMNS = ("method", "env", "episodes", "normalized_score", "normalized_score_low", "normalized_score_high",
           "mean_return", "return_ci95", "success_rate", "invalid_action_rate", "mean_turns")


@dataclass
class ReportRow:
    method: str
    env: str
    summary: EvalSummary
    sources: list[str]

    def record(self) -> dict:
        data = self.summary.to_dict()
        return {"method": self.method, "env": self.env, **{k: data[k] for k in COLUMNS[2:]},
                "sources": self.sources}


def find_result_files(path: str | os.PathLike) -> list[Path]:
    """A results file itself, or every `qsft eval` results file inside a folder (two levels deep)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"{path}: no such results file or folder")
    found = []
    for candidate in sorted([*path.glob("*.json"), *path.glob("*/*.json")]):
        try:
            if json.loads(candidate.read_text()).get("kind") == RESULTS_KIND:
                found.append(candidate)
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
    if not found:
        raise ConfigError(f"{path} holds no `qsft eval` results (*.json written by `qsft eval --out`)")
    return found


def collect(paths: list[str | os.PathLike]) -> list[ReportRow]:
    """One row per (method, env), results of the same pair pooled; ordered as first seen."""
    groups: dict[tuple[str, str], list[tuple[Path, EvalResult]]] = {}
    for given in paths:
        for file in find_result_files(given):
            result = EvalResult.load(file)
            groups.setdefault((result.method, result.env), []).append((file, result))
    rows = []
    for (method, env), members in groups.items():
        if len(members) == 1:
            summary = members[0][1].summary
        else:
            first = members[0][1].summary
            episodes = [ep for _, result in members for ep in result.episodes]
            summary = summarize([e.total_return for e in episodes], [e.success for e in episodes],
                                [e.turns for e in episodes], [e.invalid_actions for e in episodes],
                                normalization(first.min_return, first.dataset_average, first.optimal_return))
        rows.append(ReportRow(method, env, summary, [str(f) for f, _ in members]))
    return rows


def _cell(value: float | None, low: float | None = None, high: float | None = None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if low is None or high is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {(high - low) / 2:.{digits}f}"


def markdown(rows: list[ReportRow]) -> str:
    methods = list(dict.fromkeys(r.method for r in rows))
    envs = list(dict.fromkeys(r.env for r in rows))
    by_key = {(r.method, r.env): r.summary for r in rows}
    lines = ["## Normalised score (0 = min return, 50 = dataset average, 100 = optimal; ± 95% CI)", "",
             "| method | " + " | ".join(envs) + " |", "|---|" + "---|" * len(envs)]
    for method in methods:
        cells = []
        for env in envs:
            s = by_key.get((method, env))
            cells.append(_cell(s.normalized_score, s.normalized_score_low, s.normalized_score_high) if s else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "## Details", "",
              "| method | env | episodes | mean return ± 95% CI | success | invalid actions | mean turns |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.summary
        lines.append(f"| {r.method} | {r.env} | {s.episodes} | {s.mean_return:.3f} ± {s.return_ci95:.3f} | "
                     f"{100 * s.success_rate:.1f}% | {100 * s.invalid_action_rate:.1f}% | {s.mean_turns:.2f} |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[ReportRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r.record())
    return buffer.getvalue()


def render(rows: list[ReportRow], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "md":
        return markdown(rows)
    if fmt == "csv":
        return to_csv(rows)
    return json.dumps([r.record() for r in rows], indent=2) + "\n"


def write_report(paths: list[str | os.PathLike], out_dir: str | os.PathLike, fmt: str = "md"
                 ) -> tuple[Path, Path, list[ReportRow]]:
    """Write `report.<fmt>` and `report.png` into `out_dir`; returns their paths and the rows."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")
    rows = collect(paths)
    out_dir = Path(out_dir)
    table = out_dir / f"report.{fmt}"
    atomic_write_text(table, render(rows, fmt))
    methods = list(dict.fromkeys(r.method for r in rows))
    envs = list(dict.fromkeys(r.env for r in rows))
    if all(r.summary.normalized_score is not None for r in rows):
        values = {(r.method, r.env): (r.summary.normalized_score, r.summary.normalized_score_low,
                                      r.summary.normalized_score_high) for r in rows}
        ylabel = "normalised score"
    else:  # without every anchor the scores are not comparable; fall back to raw returns
        values = {(r.method, r.env): (r.summary.mean_return, r.summary.mean_return - r.summary.return_ci95,
                                      r.summary.mean_return + r.summary.return_ci95) for r in rows}
        ylabel = "mean return"
    chart = comparison_chart(methods, envs, values, out_dir / "report.png", ylabel)
    return table, chart, rows
