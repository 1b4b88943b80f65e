"""The pure billing core: event model, correlation, recording policy, rating, config.

Nothing in this package does I/O beyond reading configuration files, and nothing
imports Kafka, Faust or ClickHouse code (tests/unit/test_core_purity.py checks).
The offline `rate-file` command and the streaming worker both drive it.

The hot modules (COMPILED_MODULES) may also exist compiled by mypyc from these same
sources: deploy/local/bootstrap.sh builds them into <venv>/cdr-core-mypyc, with a
stamp of the sources and the interpreter they were built from. They are used only
while that stamp matches, so an edited source is never shadowed by an old build;
otherwise, or with CDR_PURE_CORE=1 in the environment, the sources run as they are.
`COMPILED` says which one this process runs.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

COMPILED_MODULES = (
    "cdr", "correlator", "deadlines", "decks", "events", "money", "numbers", "packed",
    "policy", "rating", "state", "state_codec",
)
BUILD_DIR = Path(sys.prefix) / "cdr-core-mypyc"


def build_stamp() -> str:
    """What a build must have been made from: the compiled modules' sources and the
    interpreter's ABI (the stamp bootstrap.sh writes after building)."""
    digest = hashlib.sha256(sys.implementation.cache_tag.encode())
    here = Path(__file__).resolve().parent
    for name in COMPILED_MODULES:
        digest.update((here / f"{name}.py").read_bytes())
    return digest.hexdigest()


def _use_build() -> bool:
    if os.environ.get("CDR_PURE_CORE"):
        return False
    try:
        stamp = (BUILD_DIR / "STAMP").read_text().strip()
    except OSError:
        return False
    if stamp != build_stamp():
        return False
    __path__.insert(0, str(BUILD_DIR / "pipeline" / "core"))
    sys.path.append(str(BUILD_DIR))  # the modules' shared library, a top-level module
    return True


COMPILED = _use_build()
