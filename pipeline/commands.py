"""Every subcommand of `cdr-pipeline`, in `--help` order: each package's `register`
adds its own (its CLI driver sits beside what it drives)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.dashboard.cli import register as dashboard
from pipeline.demo.run import register as demo
from pipeline.ingest.cli import register as ingest
from pipeline.ingest.cli_http import register as ingest_http
from pipeline.ingest.vos3000_cli import register as import_vos3000
from pipeline.offline.cli import register as rate_file
from pipeline.rerate.cli import register as rerate
from pipeline.sink.cli import register as sink
from pipeline.storage.cli import register as db
from pipeline.switch.cli import register as simulate
from pipeline.worker.cli import register as worker

Register = Callable[[Any], None]

REGISTRY: list[Register] = [
    rate_file,
    worker,
    sink,
    simulate,
    db,
    demo,
    rerate,
    dashboard,
    ingest,
    ingest_http,  # after ingest: adds `http` to its `ingest` group
    import_vos3000,
]
