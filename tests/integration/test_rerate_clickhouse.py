"""Re-rating from ClickHouse, against the 18.16 server and chDB (current ClickHouse).

Stored CDRs come from `rate-file` (the offline driver of the same core) under the old
configuration, every version as the sink would write them. After a re-rating with a
new configuration, the newest version of every call in range must be what `rate-file`
gives with the new configuration, with the version rule of the cdr table.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig, load_config
from pipeline.dashboard.report import Filters, build_report
from pipeline.rerate import runs
from pipeline.rerate.connect import SharedConnector, connector_for
from pipeline.rerate.history import call_history
from pipeline.rerate.runner import RerateRequest, RerateResult, rerate
from pipeline.storage import dedup_token_for, fetch_newest, insert_cdrs, migrate
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.native import NativeBackend
from tests.unit.test_rerate_scenarios import (
    T0,
    billing,
    newest,
    rated,
    start_of,
    traffic,
    write_config,
)

pytestmark = pytest.mark.integration

FROM_MS = T0 + 60_000
TO_MS = T0 + 240_000


@dataclass
class Stored:
    backend: ClickHouseBackend
    db: str
    old: dict[str, RatedCdr]
    items: list[Any]
    tmp: Path

    def config(self, name: str, **kwargs: Any) -> BillingConfig:
        return load_config(write_config(self.tmp, name, **kwargs))

    def rerate(self, config: BillingConfig, *, shared: bool = False, **kwargs: Any) -> RerateResult:
        """Re-rate; on the server, over connections of its own (streaming reads, worker
        processes with workers > 1), or over the test's backend with `shared`."""
        request = RerateRequest(
            config=config,
            from_ms=kwargs.pop("from_ms", FROM_MS),
            to_ms=kwargs.pop("to_ms", TO_MS),
            database=self.db,
            user="tester",
            **kwargs,
        )
        connector = SharedConnector(self.backend) if shared else connector_for(self.backend)
        return rerate(request, connector)

    def newest(self) -> dict[str, dict[str, Any]]:
        rows = fetch_newest(self.backend, self.db, extra_columns=["rerate_run_id"])
        return {r["call_id"]: r for r in rows}

    def count(self, sql: str) -> int:
        return int(self.backend.execute(sql.format(db=self.db))[0][0])


def store_cdrs(backend: ClickHouseBackend, db: str, cdrs: list[RatedCdr], batch: int = 500) -> None:
    for i in range(0, len(cdrs), batch):
        rows = cdrs[i : i + batch]
        insert_cdrs(backend, rows, dedup_token_for(rows), db)


def _stored(backend: ClickHouseBackend, db: str, tmp: Path, **old_kwargs: Any) -> Stored:
    migrate(backend, db)
    config = load_config(write_config(tmp, "stored", **old_kwargs))
    items = traffic(config, 300, rate_cps=1.0)
    versions = rated(items, config)
    store_cdrs(backend, db, versions)
    from pipeline.core.summary import newest_versions

    return Stored(backend, db, newest_versions(versions), items, tmp)


@pytest.fixture
def stored(storage_backend: ClickHouseBackend, clickhouse_database: str, tmp_path: Path) -> Stored:
    return _stored(storage_backend, clickhouse_database, tmp_path)


def _in_range(cdr: RatedCdr) -> bool:
    return FROM_MS <= start_of(cdr) < TO_MS


def test_reconstructed_from_clickhouse_reproduces_stored_cdrs(stored: Stored) -> None:
    config = stored.config("same")
    result = stored.rerate(config, dry_run=True)
    assert result.calls_read == sum(1 for c in stored.old.values() if _in_range(c))
    assert result.calls_changed == 0 and result.delta.calls_changed == 0


@pytest.mark.parametrize("workers", [1, 3])
def test_tariff_change_equals_rate_file_and_rerun_changes_nothing(
    stored: Stored, workers: int
) -> None:
    new_config = stored.config("new", tariff="new")
    expected = newest(stored.items, new_config)
    raw_before = stored.count("SELECT count() FROM {db}.cdr")

    result = stored.rerate(new_config, workers=workers, batch_rows=40)
    assert result.status == "DONE" and result.run_id
    assert result.workers == (workers if isinstance(stored.backend, NativeBackend) else 1)
    in_range = [c for c in stored.old.values() if _in_range(c)]
    changed = {c.call_id for c in in_range if billing(c) != billing(expected[c.call_id])}
    assert 0 < len(changed) < len(in_range)
    assert result.calls_read == len(in_range)
    assert result.calls_changed == result.cdrs_written == len(changed)

    now = stored.newest()
    assert len(now) == len(stored.old)
    for call_id, old in stored.old.items():
        row = now[call_id]
        if call_id in changed:
            assert billing(row) == billing(expected[call_id])
            assert row["version"] == old.version + 1
            assert row["tariff_version"] == new_config.tariff_version
            assert row["rerate_run_id"] == result.run_id
        else:  # unchanged or out of range: untouched
            assert billing(row) == billing(old)
            assert (row["version"], row["tariff_version"], row["rerate_run_id"]) == (
                old.version,
                old.tariff_version,
                "",
            )
    assert stored.count("SELECT count() FROM {db}.cdr") == raw_before + len(changed)

    # the run record: who, what, counts, delta summary
    record = runs.load(stored.backend, stored.db, result.run_id)
    assert record is not None
    assert (record["status"], record["user"], record["source"]) == ("DONE", "tester", "clickhouse")
    zero = Decimal(0)
    assert record["config_fingerprint"] == new_config.tariff_version
    assert (record["from_ms"], record["to_ms"]) == (FROM_MS, TO_MS)
    assert record["calls_changed"] == len(changed)
    summary = record["delta_summary"]
    old_rev = sum((c.fee or zero for c in in_range if c.record_decision == "RECORDED"), zero)
    new_rev = sum(
        (
            expected[c.call_id].fee or zero
            for c in in_range
            if expected[c.call_id].record_decision == "RECORDED"
        ),
        zero,
    )
    total_old = sum(Decimal(a["old_total"]) for a in summary["accounts"])
    total_new = sum(Decimal(a["new_total"]) for a in summary["accounts"])
    assert (total_old, total_new) == (old_rev, new_rev)
    assert {a["currency"] for a in summary["accounts"] if a["calls_changed"]} >= {"USD", "EUR"}
    assert any(a["top_destinations"] for a in summary["accounts"])

    # history: every superseded version, with what changed
    assert stored.count("SELECT count() FROM {db}.cdr_history FINAL") == len(changed)
    call_id = sorted(changed)[0]
    versions = call_history(stored.backend, stored.db, call_id)
    assert [v["version"] for v in versions] == [
        stored.old[call_id].version,
        stored.old[call_id].version + 1,
    ]
    before, current = versions
    assert before["superseded_by"] == result.run_id and before["changed_fields"]
    assert before["fee"] == stored.old[call_id].fee
    assert before["tariff_version"] == stored.old[call_id].tariff_version
    assert current["superseded_by"] == "" and current["fee"] == expected[call_id].fee

    # the same command again: nothing changes, nothing is written
    again = stored.rerate(new_config, workers=workers)
    assert again.status == "DONE" and again.run_id != result.run_id
    assert (again.calls_changed, again.cdrs_written) == (0, 0)
    assert again.calls_read == len(in_range)
    assert stored.count("SELECT count() FROM {db}.cdr") == raw_before + len(changed)
    assert stored.count("SELECT count() FROM {db}.cdr_history") == len(changed)


def test_totals_and_dashboard_figures_count_each_call_once(stored: Stored) -> None:
    from pipeline.dashboard.refresh import refresh_aggregates

    refresh_aggregates(stored.backend, stored.db)  # the dashboards were up to date before
    new_config = stored.config("new", tariff="new")
    expected = newest(stored.items, new_config)
    stored.rerate(new_config)
    refresh_aggregates(stored.backend, stored.db)  # picks up the days the re-rating wrote
    final = {cid: (expected[cid] if _in_range(c) else c) for cid, c in stored.old.items()}
    revenue: dict[str, Decimal] = {}
    for cdr in final.values():
        if cdr.record_decision == "RECORDED" and cdr.fee is not None and cdr.currency:
            revenue[cdr.currency] = revenue.get(cdr.currency, Decimal(0)) + cdr.fee
    for source in ("raw", "agg"):  # cdr FINAL, and the dashboard aggregates
        report = build_report(
            stored.backend, stored.db, Filters(), source=source, panels=("summary",)
        )
        assert report.calls == len(final), source
        assert {k: Decimal(v) for k, v in report.revenue.items() if v} == revenue, source
    count = stored.count(
        "SELECT count() FROM (SELECT call_id, argMax(fee, version) FROM {db}.cdr GROUP BY call_id)"
    )
    assert count == len(final)


def test_server_hangup_recording_turned_on_recovers_revenue(
    storage_backend: ClickHouseBackend, clickhouse_database: str, tmp_path: Path
) -> None:
    stored = _stored(storage_backend, clickhouse_database, tmp_path, record_server_hangup=False)
    skipped = [
        c
        for c in stored.old.values()
        if _in_range(c) and c.decision_reason == "SERVER_HANGUP_POLICY"
    ]
    assert skipped
    new_config = stored.config("recording-on", record_server_hangup=True)
    expected = newest(stored.items, new_config)
    result = stored.rerate(new_config)

    now = stored.newest()
    recovered: dict[str, Decimal] = {}
    for cdr in skipped:
        row = now[cdr.call_id]
        assert billing(row) == billing(expected[cdr.call_id])
        assert row["record_decision"] == "RECORDED" and row["decision_reason"] is None
        if cdr.fee is not None and cdr.currency:
            recovered[cdr.currency] = recovered.get(cdr.currency, Decimal(0)) + cdr.fee
    assert recovered  # server hangups that billed something
    assert result.calls_changed == len(skipped)
    assert result.run_id is not None
    record = runs.load(stored.backend, stored.db, result.run_id)
    assert record is not None
    summary = record["delta_summary"]
    assert summary["decision_changes"] == {"SKIPPED->RECORDED": len(skipped)}
    assert {k: Decimal(v) for k, v in summary["recovered_revenue"].items()} == recovered
    difference: dict[str, Decimal] = {}
    for line in summary["accounts"]:
        difference[line["currency"]] = difference.get(line["currency"], Decimal(0)) + Decimal(
            line["difference"]
        )
    assert {k: v for k, v in difference.items() if v} == recovered


def test_dry_run_writes_nothing_and_shows_the_changes(stored: Stored) -> None:
    counts = [
        stored.count("SELECT count() FROM {db}." + t) for t in ("cdr", "cdr_history", "rerate_runs")
    ]
    result = stored.rerate(stored.config("new", tariff="new"), dry_run=True, samples=5)
    assert result.run_id is None and result.calls_changed > 0 and len(result.samples) == 5
    assert [
        stored.count("SELECT count() FROM {db}." + t) for t in ("cdr", "cdr_history", "rerate_runs")
    ] == counts


def test_account_filter(stored: Stored) -> None:
    result = stored.rerate(stored.config("new", tariff="new"), accounts=("beta",))
    assert result.calls_read == sum(
        1 for c in stored.old.values() if _in_range(c) and c.account_id == "beta"
    )
    now = stored.newest()
    touched = {cid for cid, row in now.items() if row["rerate_run_id"]}
    assert touched and all(now[cid]["account_id"] == "beta" for cid in touched)


def _crash_on_second_cdr_insert(
    monkeypatch: pytest.MonkeyPatch, backend: ClickHouseBackend
) -> None:
    """The process dies after the second batch's history rows went in, before its CDRs."""
    real = backend.insert_columns
    seen = {"cdr": 0}

    def flaky(table: str, *args: Any, **kwargs: Any) -> None:
        if table.endswith(".cdr"):
            seen["cdr"] += 1
            if seen["cdr"] == 2:
                raise KeyboardInterrupt  # like SIGINT, or a kill between two inserts
        real(table, *args, **kwargs)

    monkeypatch.setattr(backend, "insert_columns", flaky)


def test_rerun_after_a_crash_completes_without_duplicates(
    stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_config = stored.config("new", tariff="new")
    expected = newest(stored.items, new_config)
    _crash_on_second_cdr_insert(monkeypatch, stored.backend)
    with pytest.raises(KeyboardInterrupt):
        stored.rerate(new_config, batch_rows=10, shared=True)
    (failed,) = runs.recent(stored.backend, stored.db)
    assert (failed["status"], failed["error_message"]) == ("FAILED", "interrupted")
    assert stored.count("SELECT count() FROM {db}.cdr WHERE rerate_run_id != ''") == 10
    assert stored.count("SELECT count() FROM {db}.cdr_history") == 20  # batch 2: history only

    monkeypatch.undo()
    result = stored.rerate(new_config, batch_rows=10)
    assert result.resumed and result.run_id == failed["run_id"] and result.status == "DONE"
    in_range = [c for c in stored.old.values() if _in_range(c)]
    changed = {c.call_id for c in in_range if billing(c) != billing(expected[c.call_id])}
    assert result.calls_changed == result.cdrs_written == len(changed)
    assert result.delta.calls_changed == len(changed)
    # each changed call written once, recorded once in history
    assert stored.count("SELECT count() FROM {db}.cdr WHERE rerate_run_id != ''") == len(changed)
    assert stored.count("SELECT uniqExact(call_id) FROM {db}.cdr_history FINAL") == len(changed)
    assert stored.count("SELECT count() FROM {db}.cdr_history FINAL") == len(changed)
    now = stored.newest()
    for call_id in changed:
        assert billing(now[call_id]) == billing(expected[call_id])
        assert now[call_id]["version"] == stored.old[call_id].version + 1
    # the delta report of the resumed run equals that of an uninterrupted run
    clean = stored.rerate(new_config, dry_run=True)
    assert clean.calls_changed == 0
    assert result.run_id is not None
    record = runs.load(stored.backend, stored.db, result.run_id)
    assert (
        record is not None
        and record["status"] == "DONE"
        and record["calls_changed"] == len(changed)
    )


def test_cli_dry_run_run_runs_and_history(
    clickhouse_native: ClickHouseBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import uuid

    from pipeline.cli import main

    db = f"cdr_test_{uuid.uuid4().hex[:12]}"
    try:
        stored = _stored(clickhouse_native, db, tmp_path)
        config = write_config(tmp_path, "cli-new", tariff="new")
        url = f"native://127.0.0.1:{clickhouse_native.port}/{db}"  # type: ignore[attr-defined]
        args = [
            "rerate",
            "--config",
            str(config),
            "--from",
            str(FROM_MS),
            "--to",
            str(TO_MS),
            "--clickhouse",
            url,
            "--no-progress",
            "--user",
            "cli-tester",
        ]
        assert main([*args, "--dry-run", "--show", "3"]) == 0
        out = capsys.readouterr().out
        assert "dry run (nothing written)" in out and "first 3 changed calls" in out
        assert stored.count("SELECT count() FROM {db}.rerate_runs") == 0

        report = tmp_path / "report.json"
        assert main([*args, "--workers", "2", "--report-json", str(report)]) == 0
        out = capsys.readouterr().out
        assert "re-rating run rr-" in out and "difference" in out and "destination" in out

        data = json.loads(report.read_text())
        assert data["status"] == "DONE" and data["calls_changed"] > 0
        run_id = data["run_id"]

        assert main(["rerate-runs", "--clickhouse", url]) == 0
        assert run_id in capsys.readouterr().out
        assert main(["rerate-runs", "--clickhouse", url, "--run", run_id]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["user"] == "cli-tester" and shown["delta_summary"]["calls_changed"] > 0

        changed = next(r for r in stored.newest().values() if r["rerate_run_id"] == run_id)
        assert main(["call-history", changed["call_id"], "--clickhouse", url]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 2 and "superseded by " + run_id in lines[0]
        assert lines[1].endswith("current")
    finally:
        clickhouse_native.execute(f"DROP DATABASE IF EXISTS {db}")
