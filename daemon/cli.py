"""The `emoclapd` command."""
from __future__ import annotations

import argparse
import sys

from . import commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emoclapd", description="emoclap real-time speech-emotion daemon")
    sub = parser.add_subparsers(dest="command", required=True)
    commands.add_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
