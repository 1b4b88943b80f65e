"""Subcommands beyond rate-file, registered here so cli.py stays small."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Register = Callable[[Any], None]

REGISTRY: list[Register] = []
