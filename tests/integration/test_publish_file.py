"""`cdr-pipeline publish` against a real broker: what the topic holds rates as rate-file
rates the file, ticks included, and publishing the file twice rates nothing twice."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import commands
from pipeline.cli import main
from pipeline.core.config import load_config
from pipeline.ingest.cli_http import register
from pipeline.kafka.admin import TopicSpec, delete_topics, ensure_topics
from pipeline.offline.rate_file import rate_paths
from tests.integration.test_ingest_http import (  # noqa: F401 - make_topics is a fixture
    EVENTS,
    as_lines,
    make_topics,
    rated,
    read_back,
)
from tests.paths import EXAMPLE

pytestmark = pytest.mark.integration


@pytest.fixture
def cli() -> Iterator[Any]:
    """pipeline.cli.main with `publish` registered (if pipeline.commands does not yet),
    the root logger put back afterwards (main configures it for a process)."""
    added = register not in commands.REGISTRY
    if added:
        commands.REGISTRY.append(register)
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    yield main
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    if added:
        commands.REGISTRY.remove(register)


def _conf(tmp_path: Path, topics: Any) -> Path:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[kafka]\nbootstrap = "{topics.bootstrap}"\n'
                    f'topic_prefix = "{topics.prefix}"\n')
    return conf


def _with_ticks(tmp_path: Path) -> Path:
    """The example file with a tick line after every fifth line (the simulator's output
    has them too) and one bad tick."""
    lines = EVENTS.read_text().splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        out.append(line)
        if n % 5 == 0:
            ts = max(json.loads(x)["ts_ms"] for x in lines[:n] if _ts(x))
            out.append(json.dumps({"tick_ms": ts}))
    out.append('{"tick_ms": "soon"}')
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(out) + "\n")
    return path


def _ts(line: str) -> bool:
    try:
        return isinstance(json.loads(line).get("ts_ms"), int)
    except (ValueError, AttributeError):
        return False


def test_publish_round_trip_and_republish(cli: Any, make_topics: Any, tmp_path: Path,  # noqa: F811
                                          capsys: pytest.CaptureFixture[str]) -> None:
    topics = make_topics(partitions=1)
    conf, events = _conf(tmp_path, topics), _with_ticks(tmp_path)
    rejects = tmp_path / "rejects.jsonl"
    argv = ["publish", "--config", str(conf), "--events", str(events), "--rejects", str(rejects)]
    assert cli(argv) == 0
    final = capsys.readouterr().err.strip().splitlines()[-1]
    assert final.startswith("publish: published 39 events and 8 ticks") and "3 rejected" in final

    expected_rejects = tmp_path / "rate-file-rejects.jsonl"
    rate_paths(load_config(EXAMPLE / "config.toml"), events, tmp_path / "cdrs.jsonl",
               expected_rejects)
    assert rejects.read_text() == expected_rejects.read_text()
    rate_file_cdrs = (tmp_path / "cdrs.jsonl").read_text().splitlines()
    records = read_back(topics.bootstrap, topics.call_events)
    assert len(records) == 39 + 8
    assert rated(as_lines(records)) == rate_file_cdrs

    assert cli(argv) == 0  # again: the topic holds two copies, the CDRs are one copy's
    records = read_back(topics.bootstrap, topics.call_events)
    assert len(records) == 2 * (39 + 8)
    assert rated(as_lines(records)) == rate_file_cdrs


def test_publish_user_mistakes_are_named(cli: Any, make_topics: Any, tmp_path: Path,  # noqa: F811
                                         capsys: pytest.CaptureFixture[str]) -> None:
    topics = make_topics(partitions=1)
    conf = _conf(tmp_path, topics)
    assert cli(["publish", "--config", str(conf), "--events", str(tmp_path / "nope")]) == 2
    assert "--events: file" in capsys.readouterr().err
    missing = tmp_path / "m.toml"
    missing.write_text(f'[kafka]\nbootstrap = "{topics.bootstrap}"\ntopic_prefix = "absent-"\n')
    assert cli(["publish", "--config", str(missing), "--events", str(EVENTS)]) == 2
    err = capsys.readouterr().err
    assert "absent-call-events" in err and "Traceback" not in err


def test_progress_only_on_a_tty_and_delivery_failure_exits_1(kafka_bootstrap: str,
                                                            tmp_path: Path) -> None:
    """Subprocess: stderr is a pipe, so no progress line, only the final report. The
    topic's max.message.bytes is smaller than any record batch, so the broker refuses
    every record: delivery fails and the exit status is 1."""
    prefix = f"test-pub-{uuid.uuid4().hex[:10]}-"
    topic = TopicSpec(f"{prefix}call-events", 1, 1, {"max.message.bytes": "64"})
    ensure_topics(kafka_bootstrap, [topic])
    try:
        conf = tmp_path / "c.toml"
        conf.write_text(f'[kafka]\nbootstrap = "{kafka_bootstrap}"\ntopic_prefix = "{prefix}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDR_")}
        done = subprocess.run([sys.executable, "-c", _CLI, "publish", "--config", str(conf),
                               "--events", str(EVENTS), "--timeout", "10"], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        delete_topics(kafka_bootstrap, [topic.name])
    assert done.returncode == 1, done.stderr
    assert "\r" not in done.stderr and "Traceback" not in done.stderr
    final = done.stderr.strip().splitlines()[-1]
    assert final.startswith("publish: published") and "FAILED" in final
    assert "MSG_SIZE_TOO_LARGE" in final or "TOO_LARGE" in final, final


_CLI = ("import sys; from pipeline import commands; from pipeline.ingest.cli_http import "
        "register; commands.REGISTRY.append(register) if register not in commands.REGISTRY "
        "else None; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))")
