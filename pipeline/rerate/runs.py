"""The re-rating audit trail: one `rerate_runs` record per run, revised as it goes.

A run is inserted when it starts (RUNNING), again every `HEARTBEAT_S` with its
counts (RUNNING; `updated_at` shows it is alive), and when it ends (DONE, or
FAILED with the error). The table is a ReplacingMergeTree(revision): FINAL shows
each run's last revision.

Resuming: a run is identified by what it does (config fingerprint, time range,
accounts, source, database). Started again while the last run with the same
identity is not DONE (it failed, or its process died and its heartbeat went
stale), the new attempt continues that run under the same run id: its CDR
versions and history rows carry that id, and the delta report covers both
attempts. A RUNNING run with a fresh heartbeat is another process at work: a
second run over an overlapping range is refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.cluster import insert_rows
from pipeline.storage.sql import check_identifier

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
STALE_AFTER_S = 4 * HEARTBEAT_S

RUNNING, DONE, FAILED = "RUNNING", "DONE", "FAILED"

COLUMNS = (
    "run_id",
    "revision",
    "started_at",
    "finished_at",
    "user",
    "config_fingerprint",
    "from_ms",
    "to_ms",
    "accounts",
    "source",
    "status",
    "calls_read",
    "calls_rerated",
    "calls_changed",
    "cdrs_written",
    "errors",
    "delta_summary",
    "error_message",
)


class RunConflict(PipelineError):
    """Another re-rating run is active on an overlapping range."""


@dataclass
class RunRecord:
    run_id: str
    user: str
    config_fingerprint: str
    from_ms: int
    to_ms: int
    accounts: list[str]
    source: str
    started_at: dt.datetime
    revision: int = 0
    status: str = RUNNING
    finished_at: dt.datetime | None = None
    calls_read: int = 0
    calls_rerated: int = 0
    calls_changed: int = 0
    cdrs_written: int = 0
    errors: int = 0
    delta_summary: dict[str, Any] = field(default_factory=dict)
    error_message: str = ""

    def values(self) -> list[Any]:
        row = dataclasses.asdict(self)
        row["delta_summary"] = json.dumps(self.delta_summary, sort_keys=True)
        row["accounts"] = list(self.accounts)
        return [row[name] for name in COLUMNS]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def write(backend: ClickHouseBackend, db: str, record: RunRecord) -> None:
    """Insert the next revision of the run."""
    record.revision += 1
    values = record.values()
    insert_rows(  # on a cluster: synchronous, at the quorum (pipeline.storage.cluster)
        backend,
        check_identifier(db),
        "rerate_runs",
        COLUMNS,
        [[v] for v in values],
        f"rerate-run-{record.run_id}-{record.revision}",
    )


@dataclass(frozen=True)
class PriorRun:
    run_id: str
    revision: int
    status: str
    age_s: int  # seconds since its last revision
    started_at: dt.datetime
    calls_changed: int


_PRIOR = (
    "SELECT run_id, revision, status, toInt64(now()) - toInt64(updated_at), started_at, "
    "calls_changed FROM {db}.rerate_runs FINAL WHERE {where} ORDER BY started_at DESC, run_id"
)


def _prior(
    backend: ClickHouseBackend, db: str, where: str, params: dict[str, Any]
) -> list[PriorRun]:
    rows = backend.execute(_PRIOR.format(db=check_identifier(db), where=where), params)
    return [PriorRun(str(r[0]), int(r[1]), str(r[2]), int(r[3]), r[4], int(r[5])) for r in rows]


def find_resumable(
    backend: ClickHouseBackend,
    db: str,
    fingerprint: str,
    from_ms: int,
    to_ms: int,
    accounts: Sequence[str],
    source: str,
) -> PriorRun | None:
    """The last run with this identity if it did not finish (FAILED, or RUNNING with a
    stale heartbeat); None when there is none or it finished."""
    runs = _prior(
        backend,
        db,
        "config_fingerprint = {fp:String} AND from_ms = {f:Int64} AND to_ms = {t:Int64}"
        " AND source = {s:String} AND arrayStringConcat(accounts, ',') = {a:String}",
        {"fp": fingerprint, "f": from_ms, "t": to_ms, "s": source, "a": ",".join(accounts)},
    )
    if not runs or runs[0].status == DONE:
        return None
    last = runs[0]
    if last.status == RUNNING and last.age_s < STALE_AFTER_S:
        raise RunConflict(
            f"run {last.run_id} with the same configuration and range is running "
            f"(last heartbeat {last.age_s}s ago); wait for it or stop it"
        )
    return last


def check_no_active_overlap(
    backend: ClickHouseBackend, db: str, from_ms: int, to_ms: int, own_run_id: str | None = None
) -> None:
    """Refuse to start while another live run re-rates part of the same range."""
    for run in _prior(
        backend,
        db,
        "status = 'RUNNING' AND from_ms < {t:Int64} AND to_ms > {f:Int64}",
        {"f": from_ms, "t": to_ms},
    ):
        if run.run_id != own_run_id and run.age_s < STALE_AFTER_S:
            raise RunConflict(
                f"run {run.run_id} is re-rating an overlapping range right now "
                f"(last heartbeat {run.age_s}s ago); two runs on one call would race"
            )


def load(backend: ClickHouseBackend, db: str, run_id: str) -> dict[str, Any] | None:
    """The last revision of a run as a dict (delta_summary parsed), or None."""
    rows = backend.execute(
        f"SELECT {', '.join(COLUMNS)}, updated_at FROM {check_identifier(db)}.rerate_runs FINAL"
        " WHERE run_id = {run:String}",
        {"run": run_id},
    )
    if not rows:
        return None
    out = dict(zip((*COLUMNS, "updated_at"), rows[0], strict=True))
    out["delta_summary"] = json.loads(out["delta_summary"] or "{}")
    return out


def recent(backend: ClickHouseBackend, db: str, limit: int = 20) -> list[dict[str, Any]]:
    """The latest runs, newest first (last revision of each)."""
    cols = [c for c in COLUMNS if c != "delta_summary"]
    rows = backend.execute(
        f"SELECT {', '.join(cols)} FROM {check_identifier(db)}.rerate_runs FINAL"
        f" ORDER BY started_at DESC, run_id LIMIT {int(limit)}",
    )
    return [dict(zip(cols, r, strict=True)) for r in rows]
