"""Shared fixtures: a maze dataset and a tiny BC model trained on it (once per test session)."""

from __future__ import annotations

import pytest

from qsft.envs.generate import generate_dataset

MAZE_TURNS = 6  # episodes are capped short so sequential reference rollouts stay fast


@pytest.fixture(scope="session")
def maze_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("maze-data") / "maze.jsonl"
    generate_dataset("maze", "epsilon:0.2", 150, seed=0, out_path=path, progress=False)
    return path


@pytest.fixture(scope="session")
def maze_bc_run(tmp_path_factory, maze_data):
    from qsft.training.run import train

    out = tmp_path_factory.mktemp("maze-bc")
    train("bc", maze_data, "tiny", out, dict(
        model_preset="micro", history_turns=1, max_length=96, max_steps=40, learning_rate=1e-2,
        per_device_train_batch_size=16, report_to="none", save_strategy="no",
        logging_steps=1000, disable_tqdm=True, seed=0))
    return out
