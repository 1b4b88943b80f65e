"""Subcommands beyond rate-file, registered here so cli.py stays small."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Register = Callable[[Any], None]

REGISTRY: list[Register] = []

from pipeline.worker.cli import register as _worker  # noqa: E402

REGISTRY.append(_worker)

from pipeline.sink.cli import register as _sink  # noqa: E402

REGISTRY.append(_sink)
