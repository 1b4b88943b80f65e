"""`cdr-pipeline rate-file`: the offline driver's command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import PipelineError


def _rate_file(args: argparse.Namespace) -> int:
    from pipeline.core.config import load_config
    from pipeline.offline.rate_file import format_summary, rate_paths
    from pipeline.runtime.gctune import tune_gc

    config = load_config(args.config)
    tune_gc()
    if not args.events.exists():
        raise PipelineError(f"--events: file {args.events} does not exist")
    if args.events.is_dir():
        raise PipelineError(f"--events: {args.events} is a directory, not a JSON Lines file")
    result = rate_paths(config, args.events, args.out, args.rejects)
    print(format_summary(result), file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
