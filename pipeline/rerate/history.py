"""What a call was billed before: its versions across re-ratings.

The newest version lives in `cdr` (FINAL); every version a re-rating superseded
lives in `cdr_history` with the run that superseded it and the fields that changed.
"""

from __future__ import annotations

from typing import Any

from pipeline.rerate.facts import STORED_COLUMNS
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.sql import check_identifier

_EXTRA = ("run_id", "new_version", "changed_fields", "superseded_at")


def call_history(backend: ClickHouseBackend, db: str, call_id: str) -> list[dict[str, Any]]:
    """Every known version of a call, oldest first. Superseded versions carry
    `superseded_by` (run id), `new_version`, `changed_fields` and `superseded_at`;
    the current one has `superseded_by` ''."""
    db = check_identifier(db, "database name")
    cols = ", ".join(STORED_COLUMNS)
    out: list[dict[str, Any]] = []
    for row in backend.execute(
        f"SELECT {cols}, {', '.join(_EXTRA)} FROM {db}.cdr_history FINAL"
        " WHERE call_id = {cid:String} ORDER BY version",
        {"cid": call_id},
    ):
        record = dict(zip((*STORED_COLUMNS, *_EXTRA), row, strict=True))
        record["superseded_by"] = record.pop("run_id")
        out.append(record)
    for row in backend.execute(
        f"SELECT {cols} FROM {db}.cdr FINAL WHERE call_id = {{cid:String}}", {"cid": call_id}
    ):
        record = dict(zip(STORED_COLUMNS, row, strict=True))
        record.update(superseded_by="", new_version=None, changed_fields=[], superseded_at=None)
        out.append(record)
    for record in out:
        record["answered"] = bool(record["answered"])
        record["flags"] = list(record["flags"] or [])
    return out
