"""`cdr-pipeline`: one command, with a subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

Handler = Callable[[argparse.Namespace], int]


def _rate_file(args: argparse.Namespace) -> int:
    from pipeline.core.config import load_config
    from pipeline.gctune import tune_gc
    from pipeline.offline import format_summary, rate_paths

    config = load_config(args.config)
    tune_gc()
    if not args.events.exists():
        raise PipelineError(f"--events: file {args.events} does not exist")
    if args.events.is_dir():
        raise PipelineError(f"--events: {args.events} is a directory, not a JSON Lines file")
    result = rate_paths(config, args.events, args.out, args.rejects)
    print(format_summary(result), file=sys.stderr)
    return 0


def _add_rate_file(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rate-file",
        help="rate a JSON Lines file of call events offline",
        description="Correlate and rate call events from a JSON Lines file with the same "
        "billing core as the streaming worker. Writes one JSON object per emitted CDR "
        "version; prints a summary on stderr. Bad events are rejected with a reason, "
        "never fatal.",
    )
    p.add_argument("--config", required=True, type=Path, help="billing TOML file")
    p.add_argument("--events", required=True, type=Path, help="input events, JSON Lines")
    p.add_argument("--out", required=True, type=Path, help="output CDRs, JSON Lines")
    p.add_argument("--rejects", type=Path, help="rejected input lines with their reason")
    p.set_defaults(handler=_rate_file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdr-pipeline",
        description="Event-streaming CDR rating for VoIP carriers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("--log-json", action="store_true", help="structured JSON logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_rate_file(sub)
    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[Any], None]]:
    from pipeline import commands

    return commands.REGISTRY


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.logconfig import configure_logging

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
