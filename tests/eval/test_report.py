"""Metrics (CI, normalised score) and `qsft report` tables and charts from synthetic results."""

import argparse
import csv
import io
import json
import math
import statistics

import matplotlib.image as mpimg
import pytest

from qsft.cli.eval import register
from qsft.envs.base import Normalization
from qsft.eval.evaluate import EvalResult
from qsft.eval.metrics import mean_ci95, normalization, summarize
from qsft.eval.report import collect, write_report
from qsft.eval.rollout import EpisodeResult


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qsft")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def make_result(method: str, env: str, returns: list[float], norm=(-10.0, -6.0, -2.0)) -> EvalResult:
    episodes = [EpisodeResult(i, i, r, r > -5, 3, int(r < -8), False, -2.0,
                              [{"role": "env", "text": "o\n"}, {"role": "agent", "text": "a", "reward": r}])
                for i, r in enumerate(returns)]
    summary = summarize(returns, [e.success for e in episodes], [3] * len(returns),
                        [e.invalid_actions for e in episodes], normalization(*norm))
    return EvalResult({"method": method, "env": env, "run": f"runs/{method}"}, summary, episodes)


def test_mean_ci95_and_normalised_score_are_the_textbook_formulas():
    values = [1.0, 2.0, 4.0, 7.0]
    mean, half = mean_ci95(values)
    assert mean == 3.5
    assert half == pytest.approx(1.959964 * statistics.stdev(values) / math.sqrt(4), rel=1e-6)
    assert mean_ci95([5.0]) == (5.0, 0.0)
    norm = Normalization(-10.0, -6.0, -2.0)
    assert [norm.score(r) for r in (-10.0, -8.0, -6.0, -4.0, -2.0)] == [0.0, 25.0, 50.0, 75.0, 100.0]
    s = summarize([-8.0, -4.0], [False, True], [4, 2], [1, 0], norm)
    assert s.normalized_score == 50.0 and s.invalid_action_rate == pytest.approx(1 / 6)
    assert s.normalized_score_low == pytest.approx(norm.score(-6.0 - s.return_ci95))
    assert summarize([-8.0], [False], [1], [0], normalization(None, -6.0, -2.0)).normalized_score is None


def test_report_tables_in_three_formats_and_a_bar_chart(tmp_path, capsys):
    results = {
        ("bc", "maze"): make_result("bc", "maze", [-9.0, -7.0, -6.0, -5.0]),
        ("qsft[beta, beta=1]", "maze"): make_result("qsft[beta, beta=1]", "maze", [-4.0, -3.0, -2.0, -3.0]),
        ("bc", "wordle"): make_result("bc", "wordle", [-6.0, -5.0, -4.0]),
    }
    folder = tmp_path / "runs"
    for k, result in enumerate(results.values()):
        result.save(folder / f"run{k}" / "eval.json")
    (folder / "run0" / "qsft.json").write_text(json.dumps({"algo": "bc"}))  # not a results file: skipped

    assert run_cli(["report", str(folder), "--out", str(tmp_path / "md")]) == 0
    table = (tmp_path / "md" / "report.md").read_text()
    assert table in capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| method |"))
    assert header == "| method | maze | wordle |"
    bc_maze = results[("bc", "maze")].summary
    assert f"| bc | {bc_maze.normalized_score:.1f} ± " in table
    scores_table = table.split("## Details")[0]
    assert "| qsft[beta, beta=1] | " in scores_table and scores_table.count("\n| bc | ") == 1

    write_report([folder], tmp_path / "csv", "csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "csv" / "report.csv").read_text())))
    assert [(r["method"], r["env"]) for r in rows] == list(results)
    assert float(rows[1]["normalized_score"]) == pytest.approx(results[("qsft[beta, beta=1]", "maze")]
                                                               .summary.normalized_score)
    write_report([folder], tmp_path / "json", "json")
    records = json.loads((tmp_path / "json" / "report.json").read_text())
    assert records[2]["env"] == "wordle" and records[2]["episodes"] == 3

    image = mpimg.imread(tmp_path / "md" / "report.png")
    assert image.shape[0] > 100 and (image[..., :3] < 0.9).any(axis=-1).mean() > 0.01


def test_results_of_the_same_method_and_env_are_pooled(tmp_path):
    a = make_result("bc", "maze", [-9.0, -7.0])
    b = make_result("bc", "maze", [-6.0, -5.0, -4.0])
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    [row] = collect([tmp_path / "a.json", tmp_path / "b.json"])
    assert row.summary.episodes == 5 and row.summary.mean_return == pytest.approx(-6.2)
    assert row.sources == [str(tmp_path / "a.json"), str(tmp_path / "b.json")]


def test_report_errors(tmp_path, capsys):
    assert run_cli(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")]) == 2
    assert "no such results file" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{}")
    assert run_cli(["report", str(tmp_path / "x.json"), "--out", str(tmp_path / "o")]) == 2
    assert "not a `qsft eval` results file" in capsys.readouterr().err
