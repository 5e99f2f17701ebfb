"""`qsft demo` end to end, as the README runs it (smaller data and budget): the CI's slow stage."""

import json
import os
import subprocess
import sys

import matplotlib.image
import pytest


@pytest.mark.slow
def test_demo_command_prints_the_table_and_writes_a_readable_plot(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "qsft.cli", "demo", "--out", str(out), "--episodes", "300", "--steps", "150",
         "--eval-episodes", "16"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| method | env | seeds | normalised score |" in proc.stdout
    assert "| bc | maze | 1 |" in proc.stdout and "| qsft | maze | 1 |" in proc.stdout
    image = matplotlib.image.imread(out / "report.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # a chart, not a blank canvas
    for run in ("bc-seed0", "qsft-seed0"):
        episodes = json.loads((out / "runs" / run / "results.json").read_text())["episodes"]
        assert len(episodes) == 16
        assert all(ep["transcript"] and ep["transcript"][0]["role"] == "env" for ep in episodes)


@pytest.mark.parametrize("argv, pretrain", [([], 1000), (["--steps", "150"], 150), (["--pretrain-steps", "0"], 0),
                                            (["--steps", "150", "--pretrain-steps", "400"], 400)])
def test_demo_pretrains_half_the_bench_at_most_its_steps(tmp_path, monkeypatch, argv, pretrain):
    import qsft.bench
    from qsft.cli import main

    seen = []
    monkeypatch.setattr(qsft.bench, "run_bench", lambda settings, out: seen.append(settings) or [])
    monkeypatch.setattr(qsft.bench, "format_table", lambda env, rows: "")
    assert main(["demo", "--out", str(tmp_path / "d"), *argv]) == 0
    assert seen[0].pretrain_steps == pretrain and seen[0].algos == ["bc", "qsft"]
