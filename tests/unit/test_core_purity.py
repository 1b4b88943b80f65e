"""The billing core imports no Kafka, Faust or ClickHouse code (architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "pipeline" / "core"
FORBIDDEN = ("confluent_kafka", "faust", "aiokafka", "clickhouse_driver", "chdb", "mode", "kafka")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_sources_import_nothing_forbidden() -> None:
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        bad = _imports(path) & set(FORBIDDEN)
        assert not bad, f"{path.name} imports {bad}"


def test_importing_the_core_loads_no_io_library() -> None:
    code = (
        "import sys, pipeline.core.correlator, pipeline.core.config, pipeline.offline.rate_file\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
