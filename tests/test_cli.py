"""The CLI surface: every option of every subcommand is documented; usage errors are one line."""

import argparse

import pytest

from qsft.cli import build_parser, main


def _all_parsers(parser, prefix="qsft"):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{prefix} {name}")


def test_every_subcommand_and_option_has_a_one_line_help():
    seen = {name for name, _ in _all_parsers(build_parser())}
    assert {"qsft data generate", "qsft data stats", "qsft data validate", "qsft train", "qsft eval", "qsft score",
            "qsft report", "qsft bench", "qsft demo"} <= seen
    for name, parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{name} {choice.dest}: subcommand without help"
            elif action.help is not argparse.SUPPRESS:
                assert action.help and "\n" not in action.help.strip(), f"{name} {action.option_strings}"


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "x.jsonl", "--out", "o", "--learnign_rate", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--learnign_rate" in err[0]
