"""`evaluate()` and `qsft eval` on a tiny maze BC model: summary, JSON, histogram PNG, errors."""

import argparse
import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from qsft.cli.eval import register
from qsft.envs.base import Normalization
from qsft.eval.evaluate import EvalResult, evaluate, histogram_path
from tests.eval.conftest import MAZE_TURNS


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qsft")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def test_qsft_eval_writes_json_and_a_real_png(maze_bc_run, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = run_cli(["eval", "--run", str(maze_bc_run), "--episodes", "12", "--batch-size", "6", "--seed", "1",
                    "--env-arg", f"max_turns={MAZE_TURNS}", "--max-new-tokens", "6", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for label in ("mean return", "success rate", "invalid-action rate", "mean turns", "normalised score"):
        assert label in printed

    data = json.loads(out.read_text())
    assert data["config"]["env"] == "maze"  # the run's env, from the dataset sidecar
    assert data["config"]["method"] == "bc" and data["config"]["mode"] == "bc"
    assert data["config"]["env_kwargs"] == {"max_turns": MAZE_TURNS} and data["config"]["seed"] == 1
    assert len(data["episodes"]) == 12
    first = data["episodes"][0]
    assert first["transcript"][0]["role"] == "env" and first["transcript"][1]["role"] == "agent"
    result = EvalResult.load(out)
    returns = [ep.total_return for ep in result.episodes]
    assert result.summary.mean_return == pytest.approx(np.mean(returns))
    assert result.summary.mean_turns == pytest.approx(np.mean([ep.turns for ep in result.episodes]))

    image = mpimg.imread(histogram_path(out))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    rgb = image[..., :3]
    assert (rgb < 0.9).any(axis=-1).mean() > 0.01  # bars, axes and text: not a blank canvas
    assert np.unique(rgb.reshape(-1, 3), axis=0).shape[0] > 10


def test_normalised_score_uses_env_min_dataset_average_and_optimal_of_the_starts(maze_bc_run, maze_data):
    result = evaluate(maze_bc_run, "maze", episodes=6, seed=2, batch_size=6, greedy=True, max_new_tokens=6,
                      env_kwargs={"max_turns": MAZE_TURNS})
    stats = json.loads((maze_data.parent / f"{maze_data.name}.stats.json").read_text())
    optimal = np.mean([ep.optimal_return for ep in result.episodes])
    norm = Normalization(-100.0, stats["normalization"]["dataset_average"], float(optimal))
    s = result.summary
    assert (s.min_return, s.dataset_average, s.optimal_return) == pytest.approx(
        (norm.min_return, norm.dataset_average, norm.optimal_return))
    assert s.normalized_score == pytest.approx(norm.score(s.mean_return))
    assert s.normalized_score_low <= s.normalized_score <= s.normalized_score_high
    # greedy + same seed: the same episodes again
    again = evaluate(maze_bc_run, "maze", episodes=6, seed=2, batch_size=3, greedy=True, max_new_tokens=6,
                     env_kwargs={"max_turns": MAZE_TURNS})
    assert [e.transcript for e in again.episodes] == [e.transcript for e in result.episodes]


def test_eval_errors_are_one_line_and_exit_2(maze_bc_run, tmp_path, capsys):
    assert run_cli(["eval", "--run", str(maze_bc_run), "--env", "no-such-env", "--episodes", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown environment 'no-such-env'")
    assert run_cli(["eval", "--run", str(maze_bc_run), "--decode", "beta", "--episodes", "1"]) == 2
    assert "only --decode bc" in capsys.readouterr().err
    assert run_cli(["eval", "--run", str(tmp_path), "--episodes", "1"]) == 2
    assert "qsft.json is missing" in capsys.readouterr().err
    assert run_cli(["eval", "--run", str(maze_bc_run), "--env-arg", "max_turns", "--episodes", "1"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
