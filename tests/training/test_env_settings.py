"""`qsft train` starts from the shipped settings of the data's environment (issue #21): lookup and precedence."""

from __future__ import annotations

import argparse
import io
import json
from datetime import datetime

import pytest
from transformers import TrainerControl, TrainerState

from qsft.cli.train import collect_overrides, config_source
from qsft.configs import env_defaults, method_settings
from qsft.training.eta import CpuEtaCallback, eta_line


def args_for(data, algo="qsft", config=None, env=None, **flags):
    return argparse.Namespace(data=str(data), algo=algo, config=config, env=env,
                              **{f"cfg__{k}": v for k, v in flags.items()})


@pytest.fixture
def maze_data(tmp_path):
    data = tmp_path / "logs.jsonl"
    data.write_text("")  # only the sidecar is read here
    (tmp_path / "logs.jsonl.stats.json").write_text(json.dumps({"env": "maze", "episodes": 3}))
    return data


def test_the_data_sidecar_names_the_environment_whose_yaml_starts_the_run(maze_data):
    source, loaded = config_source(args_for(maze_data))
    assert source.endswith("maze.yaml") and loaded == env_defaults("maze")
    maze = env_defaults("maze")
    overrides = collect_overrides(args_for(maze_data, max_steps=5))
    assert overrides["max_steps"] == 5  # a flag wins over the file
    assert overrides["history_turns"] == maze["train"]["history_turns"]  # `train`: every method
    assert overrides["learning_rate"] == maze["algos"]["qsft"]["learning_rate"]  # `algos.qsft` on top of it
    bc = collect_overrides(args_for(maze_data, algo="bc"))
    assert bc["learning_rate"] == maze["train"]["learning_rate"] and "gamma" not in bc


def test_env_flag_and_explicit_config_win_and_none_opts_out(maze_data, tmp_path):
    source, _ = config_source(args_for(maze_data, env="wordle"))
    assert source.endswith("wordle.yaml")
    chess, _ = config_source(args_for(maze_data, env="chess-kr"))  # a family shares one file
    assert chess.endswith("chess.yaml")
    own = tmp_path / "mine.yaml"
    own.write_text("max_steps: 3\n")
    assert config_source(args_for(maze_data, config=str(own))) == (str(own), {"max_steps": 3})
    assert collect_overrides(args_for(maze_data, config=str(own), algo="bc")) == {"max_steps": 3}
    assert config_source(args_for(maze_data, config="none")) == (None, {})
    assert collect_overrides(args_for(maze_data, config="none", max_steps=2)) == {"max_steps": 2}


def test_no_sidecar_or_an_environment_without_a_yaml_means_built_in_defaults(tmp_path):
    bare = tmp_path / "bare.jsonl"
    bare.write_text("")
    assert config_source(args_for(bare)) == (None, {})
    assert config_source(args_for(bare, env="chain")) == (None, {})


def test_pretraining_takes_the_train_fields_it_has_and_its_own_section():
    loaded = {"train": {"max_length": 96, "history_turns": 1, "action_tokens": True},
              "algos": {"qsft": {"gamma": 0.9}},
              "pretrain": {"max_steps": 2000, "corpus": {"episodes": 50}}}  # corpus: the bench's, not a config field
    known = {"max_length", "history_turns", "max_steps"}
    assert method_settings(loaded, "pretrain", known) == {"max_length": 96, "history_turns": 1, "max_steps": 2000}
    assert method_settings(loaded, "qsft", known)["gamma"] == 0.9


def test_eta_is_measured_after_the_warm_up_and_said_once():
    stream = io.StringIO()
    callback, state, control = CpuEtaCallback(stream), TrainerState(max_steps=1000), TrainerControl()
    for step in range(1, 10):
        state.global_step = step
        callback.on_step_end(None, state, control)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "996 steps left" in lines[0] and "--max_steps" in lines[0]
    line = eta_line(2.5, 1200, datetime(2026, 1, 1, 10, 0))
    assert "2.50 s/step" in line and "50 min" in line and "until ~10:50" in line


def test_help_shows_the_methods_own_options_grouped_and_help_all_the_rest(capsys):
    from qsft.cli import main
    from qsft.cli.train import _config_fields, _field_groups

    groups = _field_groups()
    listed = [name for _, names in groups for name in names]
    assert sorted(listed) == sorted(_config_fields())  # every field in exactly one group
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    short = capsys.readouterr().out
    titles = [title for title, _ in groups[:-1]]
    assert [short.index(t) for t in titles] == sorted(short.index(t) for t in titles)
    assert "--support_reweight_cap" in short and "--max_steps" in short and "--cql_weight" in short
    assert "--ddp_backend" not in short and "--help-all" in short
    assert len(short.splitlines()) < 300
    with pytest.raises(SystemExit):
        main(["train", "--help-all"])
    full = capsys.readouterr().out
    assert "--ddp_backend" in full and "other transformers.TrainingArguments fields" in full
