"""VOS3000 CDR exports -> CallEvents: the parsing and mapping behind `import vos3000`.

Pure: no Kafka, no output files. VOS3000 writes a finished call as one CDR (an hourly
pipe-delimited text file with SS_CDR_RECORD_TO_FILE, or rows of the MySQL
``e_cdr_YYYYMMDD`` tables). Each CDR becomes SETUP, ANSWER (when held) and HANGUP
events with ids derived from the CDR's own id, so importing a file twice publishes the
same event ids and the correlator folds them into one call.

The layout is taken from VOS3000 documentation and resellers' descriptions, not from
real files, so every column position or name comes from a `Vos3000Mapping` (defaults
below, the same as deploy/vos3000/mapping.toml) and every value that does not parse is
reported by file and line instead of guessed at.
"""

from __future__ import annotations

import csv
import hashlib
import io
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.core.events import SERVER_REASONS, CallEvent, parse_event
from pipeline.errors import ConfigError, InvalidEvent, PipelineError

LAYOUTS = ("text", "csv")
DIRECTIONS = MappingProxyType({"0": "CALLER", "1": "CALLEE", "2": "SERVER"})
FIELDS = (
    "flowno", "callere164", "calleee164", "starttime", "stoptime", "holdtime",
    "endreason", "enddirection", "callergatewayid", "calleegatewayid",
    "customeraccount", "fee", "feetime", "billingmode",
)
REQUIRED = frozenset(
    {"callere164", "calleee164", "starttime", "stoptime", "holdtime", "enddirection"})
# Positions in the hourly text file (0-based). The first nine follow VOS3000's manual
# (section 4.4); billing mode, account, fee time and fee are assumptions, and the text
# file is assumed to carry no flowno (the CDR id is then a hash of file name and line).
TEXT_FIELDS = MappingProxyType({
    "callere164": 0, "calleee164": 1, "starttime": 2, "stoptime": 3, "holdtime": 4,
    "endreason": 5, "enddirection": 6, "callergatewayid": 7, "calleegatewayid": 8,
    "billingmode": 9, "customeraccount": 10, "feetime": 11, "fee": 12,
})
TEXT_COLUMNS = 18  # resellers describe 18 fields a line
# Epoch values below this are seconds, at or above it milliseconds: 1e11 s is the year
# 5138, 1e11 ms is March 1973, so no plausible CDR time is ambiguous.
EPOCH_MS_THRESHOLD = Decimal(100_000_000_000)
_MIN_MS, _MAX_MS = 0, 4_102_444_800_000  # 1970 .. 2100, as CallEvent.ts_ms
# ANSWER may precede SETUP by this much: start/stop are often whole seconds while the
# hold time has decimals, so stop - hold can fall a fraction before start.
HOLD_SLACK_MS = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NULLS = frozenset({"NULL", "null", "\\N"})


class Vos3000Error(PipelineError):
    """A file or mapping the importer cannot use at all; the message names file and line."""


@dataclass(frozen=True)
class Vos3000Mapping:
    """Where each CDR field is in either layout, and how codes become event fields."""

    switch_id: str = "vos3000"
    default_account: str = "UNIDENTIFIED"
    timezone: str = "UTC"
    encoding: str = "utf-8"
    text_delimiter: str = "|"
    text_columns: int = TEXT_COLUMNS
    text_fields: Mapping[str, int] = field(default_factory=lambda: TEXT_FIELDS)
    csv_delimiter: str = ","
    csv_fields: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({name: name for name in FIELDS}))
    server_reasons: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Problem(NamedTuple):
    """A line that could not be imported (reject) or was imported with a remark (notice)."""

    file: str
    line: int
    reason: str
    category: str
    raw: str
    notice: bool = False
    call_id: str | None = None
    end_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The rate-file rejects record plus `file` (and, for a notice, the call and code)."""
        out: dict[str, Any] = {"file": self.file, "line": self.line, "reason": self.reason,
                               "category": self.category, "raw": self.raw}
        if self.notice:
            out.update(notice=True, call_id=self.call_id, end_reason=self.end_reason)
        return out


class VosCdr(NamedTuple):
    """One CDR as VOS3000 wrote it, values parsed; times UTC epoch ms, money Decimal."""

    file: str
    line: int
    uid: str
    caller: str
    callee: str
    start_ms: int
    stop_ms: int
    hold_ms: int
    end_direction: str
    end_reason: str | None
    caller_gateway: str | None
    callee_gateway: str | None
    account: str
    fee: Decimal | None
    fee_time: Decimal | None
    billing_mode: str | None
    raw: str = ""  # the line as read, for notices

    @property
    def call_id(self) -> str:
        return f"vos-{self.uid}"


class Imported(NamedTuple):
    """A CDR, the events it maps to, and the notice its mapping raised (if any)."""

    cdr: VosCdr
    events: tuple[CallEvent, ...]
    notice: Problem | None


class _Bad(Exception):
    """A value that does not parse; turned into a reject naming file and line."""

    def __init__(self, reason: str, category: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.category = category


# -- the mapping file --------------------------------------------------------------

def _str_table(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    return raw


def _text_fields(raw: Any) -> Mapping[str, int]:
    out = dict(TEXT_FIELDS)
    for name, pos in _str_table(raw, "text.fields").items():
        if name not in FIELDS:
            raise ConfigError(f"text.fields.{name}: unknown field (known: {', '.join(FIELDS)})")
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < -1:
            raise ConfigError(f"text.fields.{name}: expected a position >= 0 (-1 = absent), "
                              f"got {pos!r}")
        out[name] = pos
    return MappingProxyType({k: v for k, v in out.items() if v >= 0})


def _csv_fields(raw: Any) -> Mapping[str, str]:
    out = {name: name for name in FIELDS}
    for name, column in _str_table(raw, "csv.fields").items():
        if name not in FIELDS:
            raise ConfigError(f"csv.fields.{name}: unknown field (known: {', '.join(FIELDS)})")
        if not isinstance(column, str):
            raise ConfigError(f"csv.fields.{name}: expected a column name (\"\" = absent), "
                              f"got {column!r}")
        out[name] = column
    return MappingProxyType({k: v.strip().lower() for k, v in out.items() if v.strip()})


def _server_reasons(raw: Any) -> Mapping[str, str]:
    out = {}
    for code, reason in _str_table(raw, "server_reasons").items():
        if reason not in SERVER_REASONS:
            raise ConfigError(f"server_reasons.{code}: {reason!r} is not one of "
                              f"{', '.join(sorted(SERVER_REASONS))}")
        out[str(code).strip()] = str(reason)
    return MappingProxyType(out)


def _section(raw: dict[str, Any], name: str, known: frozenset[str]) -> dict[str, Any]:
    body = _str_table(raw.get(name, {}), name)
    for key in body:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
    return body


def _text_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def build_mapping(raw: dict[str, Any]) -> Vos3000Mapping:
    """Validate a parsed mapping document; unknown keys are errors naming the key."""
    top = frozenset({"switch_id", "default_account", "timezone", "encoding", "text", "csv",
                     "server_reasons"})
    for key in raw:
        if key not in top:
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(top))})")
    text = _section(raw, "text", frozenset({"delimiter", "columns", "fields"}))
    csv_ = _section(raw, "csv", frozenset({"delimiter", "fields"}))
    columns = text.get("columns", TEXT_COLUMNS)
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 0:
        raise ConfigError(f"text.columns: expected a whole number >= 0, got {columns!r}")
    mapping = Vos3000Mapping(
        switch_id=_text_str(raw.get("switch_id", "vos3000"), "switch_id"),
        default_account=_text_str(raw.get("default_account", "UNIDENTIFIED"),
                                  "default_account"),
        timezone=_text_str(raw.get("timezone", "UTC"), "timezone"),
        encoding=_text_str(raw.get("encoding", "utf-8"), "encoding"),
        text_delimiter=_text_str(text.get("delimiter", "|"), "text.delimiter"),
        text_columns=columns,
        text_fields=_text_fields(text.get("fields", {})),
        csv_delimiter=_text_str(csv_.get("delimiter", ","), "csv.delimiter"),
        csv_fields=_csv_fields(csv_.get("fields", {})),
        server_reasons=_server_reasons(raw.get("server_reasons", {})),
    )
    _check_mapping(mapping)
    return mapping


def _check_mapping(mapping: Vos3000Mapping) -> None:
    try:
        mapping.zone  # noqa: B018 - validate now, not at the first datetime value
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"timezone: unknown time zone {mapping.timezone!r}") from None
    try:
        "".encode(mapping.encoding)
    except LookupError:
        raise ConfigError(f"encoding: unknown encoding {mapping.encoding!r}") from None
    for where, names in (("text.fields", mapping.text_fields), ("csv.fields", mapping.csv_fields)):
        missing = sorted(REQUIRED - set(names))
        if missing:
            raise ConfigError(f"{where}: required field(s) not mapped: {', '.join(missing)}")
    highest = max(mapping.text_fields.values())
    if mapping.text_columns and highest >= mapping.text_columns:
        raise ConfigError(f"text.fields: position {highest} is beyond text.columns "
                          f"{mapping.text_columns}")


def load_mapping(path: Path | None) -> Vos3000Mapping:
    """The mapping from a TOML file (None: the built-in defaults); errors name file and key."""
    if path is None:
        return Vos3000Mapping()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read mapping: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return build_mapping(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# -- values ------------------------------------------------------------------------

def parse_time_ms(text: str, zone: ZoneInfo, name: str) -> int:
    """A CDR time as UTC epoch ms. Digits are epoch seconds below 1e11 (decimals allowed)
    and epoch ms from 1e11 on; anything else is ISO `YYYY-MM-DD HH:MM:SS[.fff]`, in
    `zone` unless it carries an offset. Sub-millisecond parts round half up."""
    value = text.strip()
    if not value:
        raise _Bad(f"{name} is empty", f"bad {name}")
    if value.replace(".", "", 1).isdigit():
        number = Decimal(value)
        ms = number * 1000 if number < EPOCH_MS_THRESHOLD else number
        result = int(ms.quantize(Decimal(1), ROUND_HALF_UP))
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise _Bad(f"{name} {value!r} is neither epoch seconds, epoch ms nor "
                       "YYYY-MM-DD HH:MM:SS", f"bad {name}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
        micros = (moment - _EPOCH) // timedelta(microseconds=1)
        result = (micros + 500) // 1000
    if not _MIN_MS <= result <= _MAX_MS:
        raise _Bad(f"{name} {value!r} is outside 1970..2100", f"bad {name}")
    return result


def parse_decimal(text: str | None, name: str) -> Decimal | None:
    """A non-negative decimal (money, seconds); None when the column is absent or empty."""
    if text is None or not text.strip():
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise _Bad(f"{name} {text.strip()!r} is not a number", f"bad {name}") from None
    if not value.is_finite():
        raise _Bad(f"{name} {text.strip()!r} is not a number", f"bad {name}")
    if value < 0:
        raise _Bad(f"{name} {text.strip()!r} is negative", f"negative {name}")
    return value


def _hold_ms(text: str | None) -> int:
    """Hold time: VOS3000 seconds, maybe with decimals, to whole ms (half up)."""
    value = parse_decimal(text, "holdtime")
    if value is None:
        raise _Bad("holdtime is empty", "bad holdtime")
    return int((value * 1000).quantize(Decimal(1), ROUND_HALF_UP))


def _optional(values: Mapping[str, str | None], name: str) -> str | None:
    value = values.get(name)
    return value.strip() if value is not None and value.strip() else None


def _required(values: Mapping[str, str | None], name: str) -> str:
    value = _optional(values, name)
    if value is None:
        raise _Bad(f"{name} is empty", f"bad {name}")
    return value


def _uid(values: Mapping[str, str | None], file: str, raw: str) -> str:
    """The CDR's unique id: its flowno, else a hash of file name and line content."""
    flowno = _optional(values, "flowno")
    if flowno is not None:
        return flowno
    return "h" + hashlib.sha256(f"{Path(file).name}\n{raw.strip()}".encode()).hexdigest()[:24]


def _check_times(start_ms: int, stop_ms: int, hold_ms: int) -> None:
    if stop_ms < start_ms:
        raise _Bad("stoptime is before starttime", "bad stoptime")
    if hold_ms > stop_ms - start_ms + HOLD_SLACK_MS:
        raise _Bad(f"holdtime {hold_ms / 1000}s is longer than stoptime - starttime "
                   f"{(stop_ms - start_ms) / 1000}s", "bad holdtime")


def parse_cdr(values: Mapping[str, str | None], file: str, line: int, raw: str,
              mapping: Vos3000Mapping) -> VosCdr:
    """One CDR from its named raw values; raises _Bad naming the field at fault."""
    zone = mapping.zone
    start_ms = parse_time_ms(_required(values, "starttime"), zone, "starttime")
    stop_ms = parse_time_ms(_required(values, "stoptime"), zone, "stoptime")
    hold_ms = _hold_ms(values.get("holdtime"))
    _check_times(start_ms, stop_ms, hold_ms)
    direction = _required(values, "enddirection")
    if direction not in DIRECTIONS:
        raise _Bad(f"enddirection {direction!r} is not 0 (caller), 1 (callee) or 2 (server)",
                   "bad enddirection")
    callee_gateway = _optional(values, "calleegatewayid")
    if hold_ms > 0 and callee_gateway is None:
        raise _Bad("calleegatewayid is empty on an answered call", "bad calleegatewayid")
    return VosCdr(
        file=file, line=line, uid=_uid(values, file, raw),
        caller=_required(values, "callere164"), callee=_required(values, "calleee164"),
        start_ms=start_ms, stop_ms=stop_ms, hold_ms=hold_ms,
        end_direction=direction, end_reason=_optional(values, "endreason"),
        caller_gateway=_optional(values, "callergatewayid"), callee_gateway=callee_gateway,
        account=_optional(values, "customeraccount") or mapping.default_account,
        fee=parse_decimal(values.get("fee"), "fee"),
        fee_time=parse_decimal(values.get("feetime"), "feetime"),
        billing_mode=_optional(values, "billingmode"),
        raw=raw,
    )


# -- CDR -> events -----------------------------------------------------------------

def _server_reason(cdr: VosCdr, mapping: Vos3000Mapping) -> tuple[str | None, Problem | None]:
    """SERVER hangups: the end reason through [server_reasons]; unknown -> OTHER + notice."""
    if DIRECTIONS[cdr.end_direction] != "SERVER":
        return None, None
    code = cdr.end_reason or ""
    reason = mapping.server_reasons.get(code)
    if reason is not None:
        return reason, None
    notice = Problem(cdr.file, cdr.line, f"end reason {code!r} is not in [server_reasons]; "
                     "imported as server_reason OTHER", "unknown end reason", cdr.raw,
                     True, cdr.call_id, code)
    return "OTHER", notice


def to_events(cdr: VosCdr, mapping: Vos3000Mapping) -> Imported:
    """SETUP at start; ANSWER at stop - hold when held; HANGUP at stop (billing.md sec. 1)."""
    base = {"call_id": cdr.call_id, "switch_id": mapping.switch_id}
    answered = cdr.hold_ms > 0
    reason, notice = _server_reason(cdr, mapping)
    raws: list[dict[str, Any]] = [{
        **base, "event_id": f"vos:{cdr.uid}:S", "event_type": "SETUP", "ts_ms": cdr.start_ms,
        "account_id": cdr.account, "caller": cdr.caller, "callee": cdr.callee,
        "ingress_gateway": cdr.caller_gateway,
    }]
    if answered:
        raws.append({**base, "event_id": f"vos:{cdr.uid}:A", "event_type": "ANSWER",
                     "ts_ms": cdr.stop_ms - cdr.hold_ms, "egress_gateway": cdr.callee_gateway,
                     "callee_gateway": cdr.callee})
    raws.append({**base, "event_id": f"vos:{cdr.uid}:H", "event_type": "HANGUP",
                 "ts_ms": cdr.stop_ms, "answered": answered,
                 "hangup_source": DIRECTIONS[cdr.end_direction],
                 "egress_gateway": cdr.callee_gateway, "server_reason": reason})
    try:
        events = tuple(parse_event(raw) for raw in raws)
    except InvalidEvent as exc:
        raise _Bad(f"maps to an invalid event: {exc.reason}", exc.category) from None
    return Imported(cdr, events, notice)


# -- files -------------------------------------------------------------------------

Row = tuple[int, str, Callable[[], dict[str, str | None]]]


def _text_rows(lines: list[str], mapping: Vos3000Mapping) -> Iterator[Row]:
    """(line number, raw line, its named values) of an hourly text file, lazily: a line
    with the wrong column count raises _Bad when its values are asked for."""
    for number, line in enumerate(lines, start=1):
        raw = line.rstrip("\r\n")
        if raw.strip():
            yield number, raw, partial(_text_values, raw.split(mapping.text_delimiter), mapping)


def _text_values(cells: list[str], mapping: Vos3000Mapping) -> dict[str, str | None]:
    needed = mapping.text_columns or max(mapping.text_fields.values()) + 1
    if len(cells) != needed and (mapping.text_columns or len(cells) < needed):
        raise _Bad(f"has {len(cells)} columns, the mapping expects {needed} (text.columns)",
                   "column count")
    return {name: cells[pos] for name, pos in mapping.text_fields.items()}


def _header_name(cell: str) -> str:
    return cell.replace("\ufeff", "").strip().strip('"').lower()


def _csv_header(path: Path, row: list[str], mapping: Vos3000Mapping) -> dict[str, int]:
    """Field name -> column index; Vos3000Error when a required column is missing."""
    index = {_header_name(name): i for i, name in enumerate(row)}
    missing = sorted(f"{mapping.csv_fields[f]!r}" for f in REQUIRED
                     if mapping.csv_fields[f] not in index)
    if missing:
        raise Vos3000Error(f"{path}:1: header lacks column(s) {', '.join(missing)} "
                           "(csv.fields in the mapping)")
    return {f: index[col] for f, col in mapping.csv_fields.items() if col in index}


def _csv_values(row: list[str], columns: dict[str, int]) -> dict[str, str | None]:
    """Named values of a dump row; MySQL's NULL markers (NULL, \\N) count as empty."""
    if len(row) < max(columns.values()) + 1:
        raise _Bad(f"has {len(row)} columns, the header names {max(columns.values()) + 1} "
                   "or more", "column count")
    return {name: (None if row[i].strip() in _NULLS else row[i]) for name, i in columns.items()}


def _csv_rows(path: Path, text: str, mapping: Vos3000Mapping) -> Iterator[Row]:
    """Rows of a database dump after its header. The line number is where the record
    ends (csv's count), the same as where it starts unless a quoted field spans lines."""
    reader = csv.reader(io.StringIO(text), delimiter=mapping.csv_delimiter)
    columns: dict[str, int] | None = None
    raw_lines = text.splitlines()
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if columns is None:
            columns = _csv_header(path, row, mapping)
            continue
        number = reader.line_num
        raw = raw_lines[number - 1] if number <= len(raw_lines) else ""
        yield number, raw, partial(_csv_values, row, columns)


def detect_layout(path: Path, first_line: str, mapping: Vos3000Mapping) -> str:
    """csv when the first line is a header naming flowno; text for a piped .txt file."""
    header = [_header_name(c) for c in first_line.split(mapping.csv_delimiter)]
    if "flowno" in header or mapping.csv_fields.get("flowno") in header:
        return "csv"
    if mapping.text_delimiter in first_line and path.suffix.lower() == ".txt":
        return "text"
    raise Vos3000Error(f"{path}:1: cannot tell the layout (no CSV header with flowno, not a "
                       f"'{mapping.text_delimiter}'-delimited .txt file); give --layout text|csv")


def read_file(path: Path, mapping: Vos3000Mapping,
              layout: str | None = None) -> Iterator[Imported | Problem]:
    """Every CDR of one export as Imported, every unusable line as a Problem (reject)."""
    try:
        text = path.read_text(encoding=mapping.encoding, errors="replace")
    except OSError as exc:
        raise Vos3000Error(f"{path}: cannot read: {exc.strerror}") from None
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if not first:
        return
    layout = layout or detect_layout(path, first, mapping)
    rows = _text_rows(lines, mapping) if layout == "text" else _csv_rows(path, text, mapping)
    for number, raw, values in rows:
        try:
            yield to_events(parse_cdr(values(), str(path), number, raw, mapping), mapping)
        except _Bad as exc:
            yield Problem(str(path), number, exc.reason, exc.category, raw)
