import argparse
import json

import pytest

from qsft.cli import data as data_cli


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="qsft")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_stats_validate(tmp_path, capsys):
    out = tmp_path / "maze.jsonl"
    code, stdout, _ = run(["data", "generate", "--env", "maze", "--episodes", "40", "--seed", "2",
                           "--out", str(out), "--no-progress"], capsys)
    assert code == 0 and "wrote 40 episodes of maze [lmrl]" in stdout and "success rate" in stdout
    assert out.exists() and (tmp_path / "maze.jsonl.stats.json").exists()
    sidecar = json.loads((tmp_path / "maze.jsonl.stats.json").read_text())

    code, stdout, _ = run(["data", "stats", str(out), "--json"], capsys)
    recount = json.loads(stdout)
    assert code == 0 and recount["env"] == "maze"
    for key in ("episodes", "return_mean", "success_rate", "optimal_rate", "normalization"):
        assert recount[key] == sidecar[key]
    code, stdout, _ = run(["data", "stats", str(out)], capsys)
    assert code == 0 and "environment maze" in stdout and "score anchors" in stdout

    code, stdout, _ = run(["data", "validate", str(out)], capsys)
    assert code == 0 and stdout.startswith("OK") and "40 episodes" in stdout


def test_generate_with_env_args_and_policy(tmp_path, capsys):
    out = tmp_path / "w.jsonl"
    code, _, _ = run(["data", "generate", "--env", "wordle", "--policy", "optimal", "--episodes", "5",
                      "--out", str(out), "--no-progress"], capsys)
    assert code == 0
    out = tmp_path / "m.jsonl"
    code, _, _ = run(["data", "generate", "--env", "maze", "--policy", "random", "--episodes", "5",
                      "--env-arg", "max_turns=7", "--out", str(out), "--no-progress"], capsys)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # 7 agent turns at most; a turn-limit cut keeps its final observation (truncated, done: false)
    assert code == 0 and all(sum(t["role"] == "agent" for t in ep["turns"]) <= 7 for ep in lines)
    assert all(not ep["done"] for ep in lines if ep["meta"]["truncated"])


def test_validate_corrupt_file_names_the_line(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    run(["data", "generate", "--env", "maze", "--episodes", "3", "--out", str(good), "--no-progress"], capsys)
    lines = good.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n" + lines[1][:-5] + "\n" + lines[2] + "\n")
    code, stdout, stderr = run(["data", "validate", str(bad)], capsys)
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: ") and f"{bad}:2" in stderr and "invalid JSON" in stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["data", "generate", "--env", "mazee", "--episodes", "2", "--out", "x.jsonl"], "unknown environment 'mazee'"),
    (["data", "generate", "--env", "maze", "--policy", "epsilon:2", "--episodes", "2", "--out", "x.jsonl"],
     r"in [0, 1]"),
    (["data", "generate", "--env", "maze", "--env-arg", "oops", "--out", "x.jsonl"], "KEY=VALUE"),
    (["data", "stats", "missing.jsonl"], "file not found"),
])
def test_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run(argv, capsys)
    assert code == 2 and stderr.startswith("error: ") and message in stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_data_without_subcommand_prints_help(capsys):
    code, _, stderr = run(["data"], capsys)
    assert code == 2 and "generate" in stderr


def test_every_option_has_help():
    parser = argparse.ArgumentParser(prog="qsft")
    data = data_cli.register(parser.add_subparsers())
    commands = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"data {name}: {action.dest} has no help"
