"""`cdr-pipeline`: one command, with a subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdr-pipeline",
        description="Event-streaming CDR rating for VoIP carriers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("--log-json", action="store_true", help="structured JSON logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _commands():
        register(sub)
    return parser


def _commands() -> list[Callable[[Any], None]]:
    from pipeline import commands

    return commands.REGISTRY


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.runtime.logconfig import configure_logging

    configure_logging(verbose=args.verbose, json_format=args.log_json)
    try:
        return int(args.handler(args))
    except PipelineError as exc:
        print(f"cdr-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cdr-pipeline {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
