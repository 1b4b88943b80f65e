"""faust_compat's checks at import: the versions the test suite passed on (a warning
outside them, and the same range pinned in pyproject.toml), and the hooks its patches
need (refused when one is missing); and the guards of two of its patches."""

from __future__ import annotations

import logging
import tomllib

import faust
import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from faust.exceptions import NotReady

from pipeline.worker import faust_compat
from pipeline.worker.faust_compat import (
    TESTED,
    IncompatibleFaust,
    installed_versions,
    missing_hooks,
    require_hooks,
    untested_versions,
    warn_if_untested,
)
from tests.paths import ROOT

INSIDE = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}


def test_the_installed_versions_are_the_tested_ones() -> None:
    """The suite runs on what is installed: when this fails after an upgrade, run the
    worker's tests on it and move TESTED and the pins in pyproject.toml together."""
    assert untested_versions(installed_versions()) == []


def test_pyproject_pins_the_tested_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {dep.split(">=")[0]: dep for dep in project["dependencies"]}
    for name in ("faust-streaming", "aiokafka", "mode-streaming"):
        low, high = TESTED[name]
        assert pins[name] == f"{name}>={low},<{high}"


@pytest.mark.parametrize(("package", "version", "flagged"), [
    ("faust-streaming", "0.15.3", False),
    ("faust-streaming", "0.15.10", False),  # numbers compared, not strings
    ("faust-streaming", "0.15.2", True),
    ("faust-streaming", "0.16.0", True),
    ("faust-streaming", "0.16.0rc1", True),
    ("aiokafka", "0.14.9", False),
    ("aiokafka", "0.15.0", True),
    ("aiokafka", "0.13.0", True),
])
def test_a_version_outside_the_tested_range_is_named(package: str, version: str,
                                                     flagged: bool) -> None:
    lines = untested_versions({**INSIDE, package: version})
    if not flagged:
        assert lines == []
        return
    low, high = TESTED[package]
    [line] = lines
    assert line.startswith(f"{package} {version} is installed")
    assert f">={low},<{high}" in line


def test_an_untested_version_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=faust_compat.__name__):
        lines = warn_if_untested({**INSIDE, "faust-streaming": "0.17.1"})
    assert len(lines) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == lines
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=faust_compat.__name__):
        assert warn_if_untested(INSIDE) == []
    assert caplog.records == []


def test_the_hooks_the_patches_use_are_there() -> None:
    assert missing_hooks() == []


def test_a_missing_hook_is_named_and_refused() -> None:
    hooks = (
        ("faust.transport.consumer", "Consumer._add_gap", ()),  # there
        ("faust.transport.consumer", "Consumer._renamed", ()),
        ("faust.transport.consumer", "Consumer._add_gap", ("_gap", "_no_longer_used")),
        ("no_such_module", "Anything", ()),
    )
    assert missing_hooks(hooks) == [
        "faust.transport.consumer.Consumer._renamed is gone",
        "faust.transport.consumer.Consumer._add_gap no longer uses _no_longer_used",
        "no_such_module.Anything is gone",
    ]
    with pytest.raises(IncompatibleFaust) as refused:
        require_hooks(hooks[1:2])
    message = str(refused.value)
    assert "Consumer._renamed is gone" in message
    assert f"faust-streaming {installed_versions()['faust-streaming']}" in message
    assert "install the tested versions (faust-streaming >=0.15.3,<0.16" in message
    assert "\n" not in message  # one line for `cdr-pipeline worker` to print


def test_faust_s_producer_has_no_aiokafka_producer_before_it_starts() -> None:
    app = faust.App("unit-producer", broker="kafka://127.0.0.1:1", store="memory://")
    with pytest.raises(NotReady):
        faust_compat.aiokafka_producer(app.producer)


def _records(count: int, size: int) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    return [(f"call-{n}".encode(), bytes([n % 251]) * size,
             [("cdr-call-start-ms", str(n).encode())] if n % 2 else [])
            for n in range(count)]


@pytest.mark.parametrize("codec", [DefaultRecordBatch.CODEC_NONE, DefaultRecordBatch.CODEC_SNAPPY])
def test_append_records_builds_what_append_builds(codec: int) -> None:
    """The same records, batch by batch, through BatchBuilder.append and through
    append_records: the same split into batches and byte-identical batches."""
    records = _records(300, 700)  # about 210 KB: several 64 KiB batches

    def by_append() -> list[tuple[int, bytes]]:
        out, batch = [], BatchBuilder(64 * 1024, codec, is_transactional=False)
        for key, value, headers in records:
            if batch.append(key=key, value=value, timestamp=0, headers=headers) is None:
                out.append((batch.record_count(), bytes(batch._build())))
                batch = BatchBuilder(64 * 1024, codec, is_transactional=False)
                assert batch.append(key=key, value=value, timestamp=0, headers=headers)
        return [*out, (batch.record_count(), bytes(batch._build()))]

    def by_append_records() -> list[tuple[int, bytes]]:
        out, first = [], 0
        while True:
            batch = BatchBuilder(64 * 1024, codec, is_transactional=False)
            taken = faust_compat.append_records(batch, records, first, timestamp=0)
            assert taken > first
            out.append((batch.record_count(), bytes(batch._build())))
            if taken == len(records):
                return out
            assert batch.closed()  # full, as append leaves it
            first = taken

    expected, got = by_append(), by_append_records()
    assert len(expected) > 2
    assert [count for count, _ in got] == [count for count, _ in expected]
    assert got == expected


def test_append_records_takes_nothing_into_a_closed_batch() -> None:
    batch = BatchBuilder(64 * 1024, DefaultRecordBatch.CODEC_NONE, is_transactional=False)
    batch.close()
    assert faust_compat.append_records(batch, _records(3, 10), 1) == 1
    assert batch.record_count() == 0
