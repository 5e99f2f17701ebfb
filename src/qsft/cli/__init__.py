"""`qsft` command line: thin argument parsing over library functions of the same names."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand modules, each with `register(subparsers)`; a module that is not installed/written yet
# is skipped so the rest of the CLI keeps working.
COMMAND_MODULES = ("data", "train", "eval", "bench", "demo")


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes are one line (`error: ...`, exit 2), like every other qsft error."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="qsft", description="Q-SFT: offline Q-learning for language models as weighted supervised fine-tuning.")
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"qsft.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"qsft.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def _version() -> str:
    from qsft import __version__

    return f"qsft {__version__}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
