"""`qsft train` on bad input: exit code 2 and one line on stderr starting "error:", nothing half-written."""

import pytest

from qsft.cli import main
from qsft.data.io import save_episodes
from tests.oracle_chain import random_episodes


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "chain.jsonl"
    save_episodes(path, random_episodes(4, seed=0))
    return path


def _fails_with_one_line(capsys, argv: list[str], *expected: str) -> str:
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    for text in expected:
        assert text in err, err
    return err


def test_missing_data_file(tmp_path, capsys):
    _fails_with_one_line(capsys, ["--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "run")],
                         "data file not found", "nope.jsonl")
    assert not (tmp_path / "run").exists()


def test_unknown_algorithm(tmp_path, data, capsys):
    _fails_with_one_line(capsys, ["--algo", "ppo", "--data", str(data), "--out", str(tmp_path / "run")],
                         "unknown algorithm 'ppo'", "qsft")
    assert not (tmp_path / "run").exists()


def test_model_dir_without_weights(tmp_path, data, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "gpt2"}')
    _fails_with_one_line(capsys, ["--data", str(data), "--model", str(model_dir), "--out", str(tmp_path / "run")],
                         str(model_dir), "no weights")
    assert not (tmp_path / "run").exists()


def test_missing_model_dir(tmp_path, data, capsys):
    _fails_with_one_line(capsys, ["--data", str(data), "--model", str(tmp_path / "gone"), "--out", str(tmp_path / "run")],
                         "model directory not found")


def test_unknown_config_key_in_yaml(tmp_path, data, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("learning_rate: 0.001\nlearnign_rate: 0.01\n")
    _fails_with_one_line(capsys, ["--data", str(data), "--config", str(config), "--out", str(tmp_path / "run")],
                         "unknown config key", "learnign_rate")
    assert not (tmp_path / "run").exists()


def test_config_key_of_another_algorithm(tmp_path, data, capsys):
    # `gamma` is a Q-SFT field: behavior cloning has no discount, so asking for one is a mistake
    _fails_with_one_line(capsys, ["--algo", "bc", "--data", str(data), "--gamma", "0.9", "--out", str(tmp_path / "run")],
                         "unknown config key", "gamma", "--algo bc")


def test_env_yaml_applies_the_train_section_and_the_algorithms_own(tmp_path):
    """`qsft train --config src/qsft/configs/maze.yaml --algo qsft` gets `train` and then `algos.qsft`."""
    import argparse

    from qsft.cli.train import collect_overrides

    config = tmp_path / "env.yaml"
    config.write_text("train:\n  max_steps: 7\n  learning_rate: 0.001\nalgos:\n  qsft:\n    gamma: 0.5\n"
                      "    learning_rate: 0.003\n  ilql:\n    gamma: 0.7\n")
    qsft = collect_overrides(argparse.Namespace(config=str(config), algo="qsft", cfg__max_steps=9))
    assert qsft == {"max_steps": 9, "learning_rate": 0.003, "gamma": 0.5}  # flags win over the file
    assert collect_overrides(argparse.Namespace(config=str(config), algo="bc")) == {"max_steps": 7,
                                                                                   "learning_rate": 0.001}
