"""Subcommands beyond rate-file, registered here so cli.py stays small."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Register = Callable[[Any], None]

REGISTRY: list[Register] = []

from pipeline.worker.cli import register as _worker  # noqa: E402

REGISTRY.append(_worker)

from pipeline.sink.cli import register as _sink  # noqa: E402

REGISTRY.append(_sink)

from pipeline.switch.cli import register as _simulate  # noqa: E402

REGISTRY.append(_simulate)

from pipeline.dbcli import register as _db  # noqa: E402

REGISTRY.append(_db)

from pipeline.demo import register as _demo  # noqa: E402

REGISTRY.append(_demo)

from pipeline.rerate.cli import register as _rerate  # noqa: E402

REGISTRY.append(_rerate)

from pipeline.dashboard.cli import register as _dashboard  # noqa: E402

REGISTRY.append(_dashboard)

from pipeline.ingest.cli import register as _ingest  # noqa: E402

REGISTRY.append(_ingest)

from pipeline.ingest.vos3000_cli import register as _import_vos3000  # noqa: E402

REGISTRY.append(_import_vos3000)

from pipeline.ingest.cli_http import register as _ingest_http  # noqa: E402

REGISTRY.append(_ingest_http)  # after _ingest: adds `http` to its `ingest` group
