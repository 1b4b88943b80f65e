"""Write rated CDRs to ClickHouse and read the newest versions back.

Rows are mappings keyed by the RatedCdr field names (docs: billing.md §6,
plus `flags`); dataclass / NamedTuple instances with those attributes are
accepted too. Python types: str, int (epoch milliseconds for times),
Decimal for money (floats are refused), bool for `answered`, None for
nulls, list[str] for `flags`; Enum members are stored by value.

Two optional keys are honoured besides the RatedCdr fields:

* `call_start_ms` -- the partition/sort anchor of the call. It must be the
  same for every version of a call (ReplacingMergeTree only collapses rows
  with equal sorting keys). When absent it is computed as
  coalesce(setup_ts_ms, answer_ts_ms, end_ts_ms); that is stable unless a
  later version gains an earlier timestamp (a SETUP arriving after a
  SETUP_MISSING CDR went out). A writer that can (the correlator keeps the
  call's state) should pin the first version's value and pass it on.
* `rerate_run_id` -- the re-rating run that wrote this version ('' if none).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from pipeline.core.cdr import CDR_FIELDS as RATED_CDR_FIELDS
from pipeline.core.cdr import call_start_ms
from pipeline.storage.backend import ClickHouseBackend, ServerVersion, supports
from pipeline.storage.cluster import insert_rows
from pipeline.storage.errors import StorageError
from pipeline.storage.sql import check_identifier

logger = logging.getLogger(__name__)

# The RatedCdr fields (core.cdr.CDR_FIELDS: the contract's order, billing.md section 6).
CDR_FIELDS: tuple[str, ...] = RATED_CDR_FIELDS

# The storage type of each `cdr` column on a current server (on servers without
# LowCardinality, < 19.3, the wrapper is dropped: see column_types_for). The columns
# are the RatedCdr fields plus what storage adds: `call_start_ms` (the call-start rule,
# after the key) and `rerate_run_id` (last). Must match schemas/clickhouse/0001_cdr.sql.
_COLUMN_TYPES: dict[str, str] = {
    "call_id": "String",
    "version": "UInt64",
    "call_start_ms": "Int64",
    "status": "LowCardinality(String)",
    "record_decision": "LowCardinality(String)",
    "decision_reason": "LowCardinality(Nullable(String))",
    "billing_mode": "LowCardinality(String)",
    "account_id": "LowCardinality(Nullable(String))",
    "caller": "Nullable(String)",
    "callee": "Nullable(String)",
    "callee_gateway": "Nullable(String)",
    "ingress_gateway": "LowCardinality(Nullable(String))",
    "egress_gateway": "LowCardinality(Nullable(String))",
    "switch_id": "LowCardinality(String)",
    "setup_ts_ms": "Nullable(Int64)",
    "answer_ts_ms": "Nullable(Int64)",
    "end_ts_ms": "Nullable(Int64)",
    "pdd_ms": "Nullable(Int64)",
    "answered": "UInt8",
    "hold_ms": "Int64",
    "hold_s": "Int64",
    "rated_s": "Int64",
    "billable_s": "Nullable(Int64)",
    "hangup_source": "LowCardinality(String)",
    "sip_code": "Nullable(Int32)",
    "q850_cause": "Nullable(Int32)",
    "server_reason": "LowCardinality(Nullable(String))",
    "illegal_reason": "LowCardinality(Nullable(String))",
    "rate_table": "LowCardinality(Nullable(String))",
    "rate_prefix": "Nullable(String)",
    "rate_per_min": "Nullable(Decimal(18, 8))",
    "currency": "LowCardinality(Nullable(String))",
    "fee": "Nullable(Decimal(18, 6))",
    "cost_rate_table": "LowCardinality(Nullable(String))",
    "cost_prefix": "Nullable(String)",
    "cost": "Nullable(Decimal(18, 6))",
    "cost_currency": "LowCardinality(Nullable(String))",
    "tariff_version": "LowCardinality(String)",
    "flags": "Array(LowCardinality(String))",
    "rerate_run_id": "LowCardinality(String)",
}
_STORAGE_COLUMNS = ("call_start_ms", "rerate_run_id")
if set(_COLUMN_TYPES) != {*CDR_FIELDS, *_STORAGE_COLUMNS}:  # a RatedCdr field without a column
    raise ImportError("cdr_store: _COLUMN_TYPES does not cover exactly the RatedCdr fields: "
                      f"{sorted(set(_COLUMN_TYPES) ^ {*CDR_FIELDS, *_STORAGE_COLUMNS})}")

# The insertable columns of `cdr`, in table order: the key (call_id, version), the
# call's start, the other RatedCdr fields in their order, then rerate_run_id.
CDR_COLUMNS: list[tuple[str, str]] = [
    (name, _COLUMN_TYPES[name])
    for name in (*CDR_FIELDS[:2], "call_start_ms", *CDR_FIELDS[2:], "rerate_run_id")
]

# Columns the server fills: inserted_at (DEFAULT now()) and the MATERIALIZED
# call_date, call_start, setup_at, answer_at, end_at.
CDR_SERVER_COLUMNS: tuple[str, ...] = (
    "inserted_at",
    "call_date",
    "call_start",
    "setup_at",
    "answer_at",
    "end_at",
)

_MONEY_SCALE: dict[str, int] = {"rate_per_min": 8, "fee": 6, "cost": 6}
_MONEY_PRECISION = 18
_INT_RANGES: dict[str, tuple[int, int]] = {
    "UInt64": (0, 2**64 - 1),
    "Int64": (-(2**63), 2**63 - 1),
    "Int32": (-(2**31), 2**31 - 1),
}


def column_types_for(version: ServerVersion) -> list[tuple[str, str]]:
    """CDR_COLUMNS as the server of `version` reports them."""
    if supports(version, "low_cardinality"):
        return list(CDR_COLUMNS)
    return [(name, _strip_low_cardinality(t)) for name, t in CDR_COLUMNS]


def _strip_low_cardinality(type_name: str) -> str:
    while "LowCardinality(" in type_name:
        start = type_name.index("LowCardinality(")
        depth = 0
        for j in range(start + len("LowCardinality"), len(type_name)):
            if type_name[j] == "(":
                depth += 1
            elif type_name[j] == ")":
                depth -= 1
                if depth == 0:
                    inner = type_name[start + len("LowCardinality(") : j]
                    type_name = type_name[:start] + inner + type_name[j + 1 :]
                    break
    return type_name


def _base_type(type_name: str) -> tuple[str, bool]:
    """('Decimal(18, 8)', True) for 'Nullable(Decimal(18, 8))'."""
    t = _strip_low_cardinality(type_name)
    if t.startswith("Nullable(") and t.endswith(")"):
        return t[len("Nullable(") : -1], True
    return t, False


_COLUMN_SPECS: list[tuple[str, str, bool]] = [(name, *_base_type(t)) for name, t in CDR_COLUMNS]


def _as_mapping(row: Any) -> Mapping[str, Any]:
    if isinstance(row, Mapping):
        return row
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    as_dict = getattr(row, "_asdict", None)
    if callable(as_dict):
        result = as_dict()
        if isinstance(result, Mapping):
            return result
    raise StorageError(f"a CDR row must be a mapping or a dataclass, not {type(row).__name__}")


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, str | int) else value.name
    return value


_QUANTUM: dict[str, Decimal] = {
    name: Decimal(1).scaleb(-scale) for name, scale in _MONEY_SCALE.items()
}
_LIMIT: dict[str, Decimal] = {
    name: Decimal(10) ** (_MONEY_PRECISION - scale) for name, scale in _MONEY_SCALE.items()
}


def _money(name: str, value: Any, call_id: Any) -> Decimal:
    if isinstance(value, float | bool):
        raise StorageError(
            f"CDR {call_id!r}: {name} is a {type(value).__name__}; money must be Decimal"
        )
    try:
        amount = value if isinstance(value, Decimal) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise StorageError(f"CDR {call_id!r}: {name}={value!r} is not a decimal amount") from exc
    if not amount.is_finite():
        raise StorageError(f"CDR {call_id!r}: {name}={value!r} is not finite")
    scale = _MONEY_SCALE[name]
    if abs(amount) >= _LIMIT[name]:
        raise StorageError(f"CDR {call_id!r}: {name}={amount} does not fit Decimal(18, {scale})")
    exponent = amount.as_tuple().exponent
    if (
        isinstance(exponent, int)
        and exponent < -scale
        and amount != amount.quantize(_QUANTUM[name])
    ):
        raise StorageError(
            f"CDR {call_id!r}: {name}={amount} has more than {scale} decimal places; "
            "storing it would round"
        )
    return amount


Normaliser = Callable[[Any, Any], Any]


def _make_normaliser(name: str, base: str, nullable: bool) -> Normaliser:
    """A per-column function (value, call_id) -> value to send, or StorageError."""

    def null(call_id: Any) -> Any:
        if nullable:
            return None
        if name == "flags":
            return []
        raise StorageError(f"CDR {call_id!r}: {name} must not be null")

    if name == "answered":

        def answered(value: Any, call_id: Any) -> Any:
            value = _plain(value)
            if value is None:
                return null(call_id)
            if not isinstance(value, bool | int):
                raise StorageError(f"CDR {call_id!r}: answered={value!r} must be a bool")
            return 1 if value else 0

        return answered

    if name in _MONEY_SCALE:

        def money(value: Any, call_id: Any) -> Any:
            if value is None:
                return null(call_id)
            return _money(name, value, call_id)

        return money

    if base in _INT_RANGES:
        low, high = _INT_RANGES[base]

        def integer(value: Any, call_id: Any) -> Any:
            if type(value) is not int:
                value = _plain(value)
                if value is None:
                    return null(call_id)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise StorageError(f"CDR {call_id!r}: {name}={value!r} must be an int")
            if not low <= value <= high:
                raise StorageError(f"CDR {call_id!r}: {name}={value} out of range for {base}")
            return value

        return integer

    if base.startswith("Array("):

        def string_list(value: Any, call_id: Any) -> Any:
            if value is None:
                return null(call_id)
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise StorageError(f"CDR {call_id!r}: {name}={value!r} must be a list of strings")
            items = [_plain(v) for v in value]
            if not all(isinstance(v, str) for v in items):
                raise StorageError(f"CDR {call_id!r}: {name}={value!r} must be a list of strings")
            return items

        return string_list

    def string(value: Any, call_id: Any) -> Any:
        if type(value) is str:
            return value
        value = _plain(value)
        if value is None:
            return null(call_id)
        if not isinstance(value, str):
            raise StorageError(f"CDR {call_id!r}: {name}={value!r} must be a str")
        return value

    return string


_NORMALISERS: list[Normaliser] = [
    _make_normaliser(name, base, nullable) for name, base, nullable in _COLUMN_SPECS
]


def row_call_start_ms(row: Mapping[str, Any]) -> int:
    """The `call_start_ms` a row is filed under: the one the writer pinned (the worker's
    `cdr-call-start-ms` header), else the row's own by the call-start rule
    (core.cdr.call_start_ms), else 0 (a call with no timestamp at all lands in the
    1970-01 partition, logged)."""
    pinned = row.get("call_start_ms")
    if pinned is not None:
        return int(pinned)
    start = call_start_ms(row)
    if start is not None:
        return start
    logger.warning("CDR %r has no setup, answer or end time; call_start_ms = 0", row.get("call_id"))
    return 0


_DERIVED = ("call_start_ms", "rerate_run_id")


def _columns_for(rows: Sequence[Any]) -> list[list[Any]]:
    data: list[list[Any]] = [[] for _ in CDR_COLUMNS]
    by_name = {name: data[k] for k, (name, _) in enumerate(CDR_COLUMNS)}
    plan = [
        (name, _NORMALISERS[k], data[k])
        for k, (name, _, _) in enumerate(_COLUMN_SPECS)
        if name not in _DERIVED
    ]
    start_column = by_name["call_start_ms"]
    start_normaliser = _NORMALISERS[[name for name, _ in CDR_COLUMNS].index("call_start_ms")]
    rerate_column = by_name["rerate_run_id"]
    required = frozenset(CDR_FIELDS)
    for raw in rows:
        row = raw if type(raw) is dict else _as_mapping(raw)
        call_id = row.get("call_id")
        if not required <= row.keys():
            missing = [f for f in CDR_FIELDS if f not in row]
            raise StorageError(f"CDR {call_id!r} lacks field(s) {', '.join(missing)}")
        for name, normalise, column in plan:
            column.append(normalise(row[name], call_id))
        start_column.append(start_normaliser(row_call_start_ms(row), call_id))
        rerate = row.get("rerate_run_id") or ""
        if not isinstance(rerate, str):
            raise StorageError(f"CDR {call_id!r}: rerate_run_id={rerate!r} must be a str")
        rerate_column.append(rerate)
    return data


def insert_cdrs(
    backend: ClickHouseBackend,
    rows: Sequence[Any],
    dedup_token: str | None,
    database: str = "cdr",
) -> None:
    """Insert one batch of CDR versions into `<database>.cdr` (columnar).

    Pass a deterministic token such as `dedup_token_for(rows)`: on servers with
    insert deduplication a retry of the same batch is then dropped (the sink, which
    takes the `insert_cdr_rows` path, derives its token from `row_digest`). Without
    a token a retry is stored again (inserted_at differs, so even the
    data-hash deduplication of current servers does not catch it); reads
    with FINAL / argMax are still exact. On a cluster (`cdr` a Distributed table) the
    insert is synchronous at the cluster's quorum and a retry of the same token within
    seconds is dropped by the replicas (pipeline.storage.cluster)."""
    check_identifier(database, "database name")
    if not rows:
        return
    data = _columns_for(rows)
    insert_rows(backend, database, "cdr", [name for name, _ in CDR_COLUMNS], data, dedup_token)
    logger.debug("inserted %s CDR versions into %s.cdr", len(rows), database)


# -- prepared rows: the sink's columnar path -----------------------------------------
# A decoded Avro RatedCdr record (codec.decode_cdr_record) already has the types the
# schema guarantees: strings are str, longs int, enums their symbols, money Decimal at
# the schema's scale, non-union fields never null. Such a record goes straight to a
# tuple in CDR_COLUMNS order (`cdr_row`), and a batch of those to columns with one
# transpose (`insert_cdr_rows`); only what the Avro types do not bound is checked:
# version >= 0 (UInt64) and money precision and scale. Rows of any other origin go
# through `insert_cdrs`, which checks every value.

_ROW_PICK = operator.itemgetter(*(name for name, _ in CDR_COLUMNS))
_VERSION_INDEX = [name for name, _ in CDR_COLUMNS].index("version")
_MONEY_INDEXES: list[tuple[int, str]] = [
    (k, name) for k, (name, _) in enumerate(CDR_COLUMNS) if name in _MONEY_SCALE
]
assert CDR_COLUMNS[0][0] == "call_id" and CDR_COLUMNS[1][0] == "version"


def cdr_row(record: dict[str, Any]) -> tuple[Any, ...]:
    """One `cdr` row, values in CDR_COLUMNS order, from a record decoded by
    `codec.decode_cdr_record` (and only from such a record: the Avro types are
    trusted). Adds `call_start_ms` (`row_call_start_ms`) and `rerate_run_id` ('' unless
    the record has one) and stores `answered` as 0/1; `record` is updated in place.
    Raises KeyError when a RatedCdr field is missing (a record of another schema)."""
    record["call_start_ms"] = row_call_start_ms(record)
    record["answered"] = 1 if record["answered"] else 0
    if not record.get("rerate_run_id"):
        record["rerate_run_id"] = ""
    return _ROW_PICK(record)  # type: ignore[no-any-return]


def row_digest(rows: Iterable[Sequence[Any]]) -> str:
    """sha256 of the sorted (call_id, version) pairs of `cdr_row` rows: a batch's
    content identity for its deduplication token (order-independent; CDRs are
    deterministic, so equal pairs mean equal rows)."""
    return _pairs_digest((str(row[0]), int(row[1])) for row in rows)


def _pairs_digest(pairs: Iterable[tuple[str, int]]) -> str:
    """sha256 of sorted (call_id, version) pairs: the identity of a batch of CDRs."""
    digest = hashlib.sha256()
    for call_id, version in sorted(pairs):
        digest.update(f"{call_id}\x00{version}\n".encode())
    return digest.hexdigest()


def insert_cdr_rows(
    backend: ClickHouseBackend,
    rows: Sequence[tuple[Any, ...]],
    dedup_token: str | None,
    database: str = "cdr",
) -> None:
    """Insert `cdr_row` rows into `<database>.cdr` (columnar), like `insert_cdrs`.

    A version below 0 or an amount that does not fit its Decimal column raises
    StorageError naming the CDR, before anything is sent."""
    check_identifier(database, "database name")
    if not rows:
        return
    data = list(zip(*rows, strict=True))
    if len(data) != len(CDR_COLUMNS):
        raise StorageError(f"a CDR row has {len(data)} values, not {len(CDR_COLUMNS)}")
    _check_row_columns(data)
    insert_rows(backend, database, "cdr", [name for name, _ in CDR_COLUMNS], data, dedup_token)
    logger.debug("inserted %s CDR versions into %s.cdr", len(rows), database)


def _check_row_columns(data: Sequence[Sequence[Any]]) -> None:
    """The range checks the Avro types leave open, column by column."""
    versions = data[_VERSION_INDEX]
    if min(versions) < 0:
        k = next(k for k, v in enumerate(versions) if v < 0)
        raise StorageError(f"CDR {data[0][k]!r}: version={versions[k]} out of range for UInt64")
    for index, name in _MONEY_INDEXES:
        limit, scale = _LIMIT[name], -_MONEY_SCALE[name]
        for k, amount in enumerate(data[index]):
            if amount is not None and (
                not -limit < amount < limit or amount.as_tuple().exponent < scale
            ):
                _money(name, amount, data[0][k])  # raises unless only trailing zeros


def fetch_newest(
    backend: ClickHouseBackend,
    database: str = "cdr",
    where: str = "",
    params: Mapping[str, Any] | None = None,
    *,
    extra_columns: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The newest version of each call (`FINAL`), as dicts with the RatedCdr
    field names (money as Decimal, answered as bool), ordered by (call_id,
    version).

    `where` is an SQL condition with `{name:Type}` placeholders bound from
    `params`, e.g. `fetch_newest(b, where="account_id = {a:String}",
    params={"a": "acme"})`. `extra_columns` adds table columns such as
    `call_start_ms`, `rerate_run_id` or `inserted_at`."""
    check_identifier(database, "database name")
    columns = list(CDR_FIELDS) + [check_identifier(c, "column name") for c in extra_columns]
    sql = f"SELECT {', '.join(columns)} FROM {database}.cdr FINAL"
    if where.strip():
        sql += f" WHERE {where}"
    sql += " ORDER BY call_id, version"
    result: list[dict[str, Any]] = []
    for values in backend.execute(sql, params):
        record = dict(zip(columns, values, strict=True))
        record["answered"] = bool(record["answered"])
        record["flags"] = list(record["flags"] or [])
        for name in _MONEY_SCALE:
            if record[name] is not None and not isinstance(record[name], Decimal):
                record[name] = Decimal(str(record[name]))
        result.append(record)
    return result


def dedup_token_for(rows: Sequence[Any]) -> str:
    """Deterministic deduplication token of a batch: sha256 of its sorted
    (call_id, version) pairs. CDRs are deterministic (same call and version,
    same content), so equal pairs mean an equal batch, whatever its order. The same
    token as `row_digest` gives the batch's `cdr_row` rows."""
    return _pairs_digest(
        (str((m := _as_mapping(r))["call_id"]), int(m["version"])) for r in rows
    )
