"""Where the tests find the repository's own files (never anything beside the clone)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "basic"
BILLING_DOC = ROOT / "docs" / "billing.md"
