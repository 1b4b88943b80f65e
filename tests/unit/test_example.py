"""The worked example of the billing contract reproduces expected.jsonl exactly."""

from __future__ import annotations

import io
import json

import pytest

from pipeline.core.config import load_config
from pipeline.offline.rate_file import rate_file
from tests.paths import EXAMPLE


@pytest.fixture(scope="module")
def run() -> tuple[list[dict], list[dict], object]:
    if not EXAMPLE.is_dir():
        pytest.fail(f"worked example not found at {EXAMPLE}")
    config = load_config(EXAMPLE / "config.toml")
    out, rejects = io.StringIO(), io.StringIO()
    with (EXAMPLE / "events.jsonl").open() as events:
        result = rate_file(config, events, out, rejects)
    cdrs = [json.loads(line) for line in out.getvalue().splitlines()]
    rejected = [json.loads(line) for line in rejects.getvalue().splitlines()]
    return cdrs, rejected, result


def test_final_cdrs_equal_expected(run: tuple[list[dict], list[dict], object]) -> None:
    cdrs, _, _ = run
    newest: dict[str, dict] = {}
    for cdr in cdrs:
        if cdr["call_id"] not in newest or cdr["version"] > newest[cdr["call_id"]]["version"]:
            newest[cdr["call_id"]] = cdr
    expected = [json.loads(line) for line in (EXAMPLE / "expected.jsonl").read_text().splitlines()]
    assert sorted(newest) == [e["call_id"] for e in expected]
    for want in expected:
        got = {k: newest[want["call_id"]][k] for k in want}
        assert got == want, want["call_id"]


def test_malformed_lines_rejected_with_reason(run: tuple[list[dict], list[dict], object]) -> None:
    _, rejected, result = run
    assert [r["line"] for r in rejected] == [6, 7]
    assert "event_type" in rejected[0]["reason"] and "TELEPORT" in rejected[0]["reason"]
    assert "not valid JSON" in rejected[1]["reason"]
    assert rejected[1]["raw"] == "this is not json"
    assert result.rejected == 2  # type: ignore[attr-defined]
    assert result.events_read == 41  # type: ignore[attr-defined]
    assert result.open_calls == 0  # type: ignore[attr-defined]


def test_versions_increase_per_call(run: tuple[list[dict], list[dict], object]) -> None:
    cdrs, _, _ = run
    seen: dict[str, int] = {}
    for cdr in cdrs:
        assert cdr["version"] > seen.get(cdr["call_id"], 0)
        seen[cdr["call_id"]] = cdr["version"]
    # c13: a later HANGUP from the other leg after the call completed re-emits it,
    # with the same billing result (the earliest HANGUP still wins).
    c13 = [c for c in cdrs if c["call_id"] == "c13"]
    assert [c["version"] for c in c13] == [3000, 4000]
    assert {k: v for k, v in c13[0].items() if k != "version"} == {
        k: v for k, v in c13[1].items() if k != "version"
    }
