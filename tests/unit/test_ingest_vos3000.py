"""`import vos3000`: VOS3000 exports -> events -> the billing core, and the fee comparison.

Every fee asserted here is computed by hand from the deck below (docs/billing.md
sections 3 and 4): UK 0.0600/min on 60/60, USA 0.0100/min on 6/6, 4 places, hold-time
precision 50 ms.
"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.config import BillingConfig, load_config
from pipeline.errors import ConfigError
from pipeline.ingest.vos3000 import (
    Imported,
    Problem,
    Vos3000Mapping,
    build_mapping,
    load_mapping,
    read_file,
)
from pipeline.ingest.vos3000_cli import compare, format_comparison, read_all
from pipeline.offline.rate_file import rate_lines
from tests.paths import ROOT

CLI = ROOT / ".venv" / "bin" / "cdr-pipeline"
DECK = """prefix,description,rate_per_min,first_increment_s,next_increment_s,connect_fee,\
effective_from,effective_to
44,United Kingdom,0.0600,60,60,0,,
1,USA,0.0100,6,6,0,,
"""
CONFIG = """
[policy]
SERVER_BILLING_RECORD_SERVER_HANG_UP = 0
record_zero_hold_time = true
fee_precision = 4
hold_time_precision_ms = 50

[policy.record_server_hangup_by_reason]
MAX_DURATION = true

[rate_tables.retail]
currency = "USD"
deck = "retail.csv"

[accounts.acme]
rate_table = "retail"

[gateways.gw-in]

[gateways.gw-out]
"""
MAPPING = """
[server_reasons]
"-9" = "MAX_DURATION"
"""
T0 = 1_764_000_000  # 2025-11-24T16:00:00Z


def text_line(caller: str, callee: str, start: str, stop: str, hold: str, reason: str,
              direction: str, fee: str, account: str = "acme", columns: int = 18) -> str:
    """An hourly-file line in the default mapping's positions."""
    cells = [caller, callee, start, stop, hold, reason, direction, "gw-in", "gw-out",
             "1", account, hold.split(".")[0], fee]
    cells += [""] * (columns - len(cells))
    return "|".join(cells[:columns])


# The five calls both layouts carry: (caller ends, callee ends with a decimal hold,
# server at max duration across midnight, server with an unknown code, zero hold).
TEXT_CDRS = [
    text_line("15550001111", "447700900123", str(T0), str(T0 + 95), "95", "0", "0", "0.12"),
    text_line("15550001111", "12125550100", f"{T0 + 100}000", f"{T0 + 161}049", "61.049",
              "0", "1", "0.011"),
    text_line("15550001111", "447700900124", "2025-11-24 23:59:30", "2025-11-25 00:00:30",
              "30", "-9", "2", "0.06"),
    text_line("15550001111", "447700900125", str(T0 + 200), str(T0 + 215), "10", "77", "2",
              "0"),
    text_line("15550001111", "447700900126", str(T0 + 300), str(T0 + 320), "0", "480", "1",
              "0"),
]
CSV_HEADER = ("flowno,callere164,calleee164,starttime,stoptime,holdtime,feetime,fee,"
              "enddirection,endreason,callergatewayid,calleegatewayid,customeraccount")


def csv_row(flowno: str, callee: str, start: str, stop: str, hold: str, direction: str,
            reason: str, fee: str) -> str:
    return ",".join([flowno, "15550001111", callee, start, stop, hold, hold.split(".")[0], fee,
                     direction, reason, "gw-in", "gw-out", "acme"])


CSV_CDRS = [
    csv_row("1001", "447700900123", str(T0), str(T0 + 95), "95", "0", "0", "0.1200"),
    csv_row("1002", "12125550100", f"{T0 + 100}000", f"{T0 + 161}049", "61.049", "1", "0",
            "0.0110"),
    csv_row("1003", "447700900124", "2025-11-24 23:59:30", "2025-11-25 00:00:30", "30", "2",
            "-9", "0.0600"),
    csv_row("1004", "447700900125", str(T0 + 200), str(T0 + 215), "10", "2", "77", "0"),
    csv_row("1005", "447700900126", str(T0 + 300), str(T0 + 320), "0", "1", "480", ""),
]


@pytest.fixture
def config(tmp_path: Path) -> BillingConfig:
    (tmp_path / "retail.csv").write_text(DECK)
    (tmp_path / "billing.toml").write_text(CONFIG)
    return load_config(tmp_path / "billing.toml")


@pytest.fixture
def mapping() -> Vos3000Mapping:
    return build_mapping({"server_reasons": {"-9": "MAX_DURATION"}})


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def imported(path: Path, mapping: Vos3000Mapping, layout: str | None = None) -> list[Imported]:
    items = list(read_file(path, mapping, layout))
    assert all(isinstance(i, Imported) for i in items), items
    return [i for i in items if isinstance(i, Imported)]


def events_of(item: Imported) -> list[dict[str, Any]]:
    return [e.to_dict() for e in item.events]


# -- mapping -----------------------------------------------------------------------------

def test_shipped_mapping_file_is_the_builtin_default() -> None:
    assert load_mapping(ROOT / "deploy" / "vos3000" / "mapping.toml") == Vos3000Mapping()


@pytest.mark.parametrize(("raw", "message"), [
    ({"text": {"fields": {"fee": "x"}}}, "text.fields.fee: expected a position"),
    ({"text": {"fields": {"nope": 3}}}, "text.fields.nope: unknown field"),
    ({"server_reasons": {"5": "LUNCH"}}, "server_reasons.5: 'LUNCH' is not one of"),
    ({"timezone": "Mars/Olympus"}, "timezone: unknown time zone"),
    ({"csv": {"fields": {"holdtime": ""}}}, "csv.fields: required field(s) not mapped: holdtime"),
    ({"colour": 1}, "colour: unknown key"),
])
def test_mapping_errors_name_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_mapping(raw)


# -- both layouts -> events ----------------------------------------------------------------

def test_text_layout_maps_each_end_direction(tmp_path: Path, mapping: Vos3000Mapping) -> None:
    items = imported(write(tmp_path / "2025112416.txt", TEXT_CDRS), mapping)
    assert len(items) == 5
    caller, callee, server, unknown, zero = (events_of(i) for i in items)
    uid = items[0].cdr.uid
    assert uid.startswith("h") and caller[0]["call_id"] == f"vos-{uid}"
    assert [e["event_id"] for e in caller] == [f"vos:{uid}:S", f"vos:{uid}:A", f"vos:{uid}:H"]
    assert caller[0] == {
        "event_id": f"vos:{uid}:S", "call_id": f"vos-{uid}", "switch_id": "vos3000",
        "event_type": "SETUP", "ts_ms": T0 * 1000, "account_id": "acme",
        "caller": "15550001111", "callee": "447700900123", "ingress_gateway": "gw-in"}
    assert caller[1]["ts_ms"] == T0 * 1000  # stop - hold
    assert caller[1]["egress_gateway"] == "gw-out"
    assert caller[1]["callee_gateway"] == "447700900123"
    assert caller[2]["hangup_source"] == "CALLER" and caller[2]["answered"] is True
    # epoch ms start/stop and a hold with decimals: ANSWER = stop - 61.049 s
    assert callee[1]["ts_ms"] == (T0 + 161) * 1000 + 49 - 61_049
    assert callee[2]["hangup_source"] == "CALLEE"
    # datetime format, across midnight (UTC by default)
    assert server[0]["ts_ms"] == (T0 + 8 * 3600 - 30) * 1000
    assert server[2]["ts_ms"] == (T0 + 8 * 3600 + 30) * 1000
    assert server[2]["hangup_source"] == "SERVER"
    assert server[2]["server_reason"] == "MAX_DURATION"
    assert unknown[2]["server_reason"] == "OTHER"
    assert items[3].notice is not None and items[3].notice.end_reason == "77"
    assert items[3].notice.raw == TEXT_CDRS[3]
    assert [e["event_type"] for e in zero] == ["SETUP", "HANGUP"]
    assert zero[1]["answered"] is False and "server_reason" not in zero[1]


def test_csv_layout_ids_from_flowno(tmp_path: Path, mapping: Vos3000Mapping) -> None:
    items = imported(write(tmp_path / "e_cdr_20251124.csv", [CSV_HEADER, *CSV_CDRS]), mapping)
    assert [i.cdr.call_id for i in items] == [f"vos-100{n}" for n in range(1, 6)]
    assert [e.event_id for e in items[0].events] == ["vos:1001:S", "vos:1001:A", "vos:1001:H"]
    assert [i.events[-1].hangup_source for i in items] == [
        "CALLER", "CALLEE", "SERVER", "SERVER", "CALLEE"]
    assert items[4].cdr.fee is None and items[0].cdr.fee == Decimal("0.1200")


def test_same_text_line_gives_same_ids_and_other_file_other_ids(
        tmp_path: Path, mapping: Vos3000Mapping) -> None:
    first = imported(write(tmp_path / "2025112416.txt", TEXT_CDRS[:1]), mapping)
    (tmp_path / "again").mkdir()
    again = imported(write(tmp_path / "again" / "2025112416.txt", TEXT_CDRS[:1]), mapping)
    other = imported(write(tmp_path / "2025112417.txt", TEXT_CDRS[:1]), mapping)
    assert first[0].events == again[0].events
    assert first[0].cdr.uid != other[0].cdr.uid


@pytest.mark.parametrize(("value", "expected_ms"), [
    (str(T0), T0 * 1000),  # epoch seconds
    (f"{T0}.25", T0 * 1000 + 250),  # epoch seconds with decimals
    (f"{T0}123", T0 * 1000 + 123),  # epoch ms (>= 1e11)
    ("2025-11-24 16:00:00", T0 * 1000),  # datetime, UTC
    ("2025-11-24T16:00:00.5", T0 * 1000 + 500),
    ("2025-11-24 18:00:00+02:00", T0 * 1000),  # an explicit offset wins over the zone
])
def test_time_formats(tmp_path: Path, mapping: Vos3000Mapping, value: str,
                      expected_ms: int) -> None:
    line = text_line("1", "447700900123", value, str(T0 + 100), "0", "0", "0", "0")
    assert imported(write(tmp_path / "x.txt", [line]), mapping)[0].cdr.start_ms == expected_ms


def test_datetime_in_configured_timezone(tmp_path: Path) -> None:
    shanghai = build_mapping({"timezone": "Asia/Shanghai"})
    row = csv_row("7", "447700900123", "2025-11-25 07:59:30", "2025-11-25 08:00:30", "30", "0",
                  "0", "0.06")
    item = imported(write(tmp_path / "dump.csv", [CSV_HEADER, row]), shanghai)[0]
    assert item.cdr.start_ms == (T0 + 8 * 3600 - 30) * 1000  # 23:59:30 UTC, the day before
    assert item.cdr.stop_ms == (T0 + 8 * 3600 + 30) * 1000


# -- bad lines -------------------------------------------------------------------------------

def test_bad_lines_are_rejected_by_file_and_line_and_the_rest_imported(
        tmp_path: Path, mapping: Vos3000Mapping) -> None:
    lines = [
        TEXT_CDRS[0],
        text_line("1", "447700900123", str(T0), str(T0 + 9), "5", "0", "0", "0", columns=12),
        text_line("1", "447700900123", "yesterday", str(T0 + 9), "5", "0", "0", "0"),
        text_line("1", "447700900123", str(T0), str(T0 + 9), "-5", "0", "0", "0"),
        text_line("1", "447700900123", str(T0), str(T0 + 9), "5", "0", "7", "0"),
        "",
        TEXT_CDRS[1],
    ]
    path = write(tmp_path / "2025112416.txt", lines)
    items = list(read_file(path, mapping))
    problems = [i for i in items if isinstance(i, Problem)]
    assert [(p.file, p.line, p.category) for p in problems] == [
        (str(path), 2, "column count"), (str(path), 3, "bad starttime"),
        (str(path), 4, "negative holdtime"), (str(path), 5, "bad enddirection")]
    assert "has 12 columns, the mapping expects 18" in problems[0].reason
    assert "'yesterday' is neither epoch seconds" in problems[1].reason
    assert problems[2].to_dict() == {"file": str(path), "line": 4,
                                     "reason": "holdtime '-5' is negative",
                                     "category": "negative holdtime", "raw": lines[3]}
    assert sum(isinstance(i, Imported) for i in items) == 2


def test_bad_dump_rows_are_rejected(tmp_path: Path, mapping: Vos3000Mapping) -> None:
    rows = [CSV_HEADER, "1001,15550001111,447700900123", *CSV_CDRS[1:3],
            csv_row("9", "447700900123", str(T0), str(T0 + 10), "12", "0", "0", "0"),
            csv_row("8", "447700900123", str(T0 + 10), str(T0), "0", "0", "0", "0"),
            csv_row("7", "447700900123", str(T0), str(T0 + 60), "30", "1", "0", "NULL"),
            csv_row("6", "447700900123", str(T0), str(T0 + 60), "30", "1", "0", "abc")]
    path = write(tmp_path / "e_cdr_20251124.csv", rows)
    items = list(read_file(path, mapping))
    problems = [(i.line, i.category) for i in items if isinstance(i, Problem)]
    assert problems == [(2, "column count"), (5, "bad holdtime"), (6, "bad stoptime"),
                        (8, "bad fee")]
    fees = [i.cdr.fee for i in items if isinstance(i, Imported)]
    assert fees == [Decimal("0.0110"), Decimal("0.0600"), None]  # NULL is no fee


# -- imported, then rated -----------------------------------------------------------------

@pytest.mark.parametrize("layout", ["text", "csv"])
def test_imported_then_rated_as_billing_md_says(tmp_path: Path, mapping: Vos3000Mapping,
                                                config: BillingConfig, layout: str) -> None:
    path = (write(tmp_path / "2025112416.txt", TEXT_CDRS) if layout == "text"
            else write(tmp_path / "e_cdr_20251124.csv", [CSV_HEADER, *CSV_CDRS]))
    result = read_all([path], mapping, None)
    lines = [json.dumps(e.to_dict()) for e in result.events()]
    cdrs = {c.callee: c for c in rate_lines(lines, config)}
    assert len(cdrs) == 5  # one version each: every CDR carries its whole call
    caller = cdrs["447700900123"]  # 95 s UK on 60/60 bills 120 s
    assert (caller.hold_s, caller.billable_s, caller.fee) == (95, 120, Decimal("0.1200"))
    assert caller.record_decision == "RECORDED" and caller.hangup_source == "CALLER"
    callee = cdrs["12125550100"]  # 61.049 s held 61 s (49 ms < 50); 6/6 bills 66 s
    assert (callee.hold_ms, callee.hold_s, callee.billable_s) == (61_049, 61, 66)
    assert callee.fee == Decimal("0.0110")
    server = cdrs["447700900124"]  # cut at max duration: recorded despite the global 0
    assert (server.record_decision, server.server_reason) == ("RECORDED", "MAX_DURATION")
    assert server.setup_ts_ms == (T0 + 8 * 3600 - 30) * 1000 and server.fee == Decimal("0.0600")
    other = cdrs["447700900125"]  # server, unknown code: OTHER, the global 0 applies
    assert (other.record_decision, other.decision_reason) == ("SKIPPED", "SERVER_HANGUP_POLICY")
    assert other.server_reason == "OTHER" and other.fee == Decimal("0.0600")
    zero = cdrs["447700900126"]  # zero hold: recorded (record_zero_hold_time), nothing billed
    assert (zero.answered, zero.hold_s, zero.fee, zero.record_decision) == (
        False, 0, Decimal("0.0000"), "RECORDED")
    assert zero.answer_ts_ms is None


# -- the comparison ------------------------------------------------------------------------

def test_compare_agrees_when_vos3000_did_not_bill_server_hangups(
        tmp_path: Path, mapping: Vos3000Mapping, config: BillingConfig) -> None:
    path = write(tmp_path / "e_cdr_20251124.csv", [CSV_HEADER, *CSV_CDRS])
    comparison = compare(read_all([path], mapping, None), config)
    acme = comparison.accounts["acme"]
    # 0.1200 + 0.0110 + 0.0600 (MAX_DURATION recorded); 1004 SKIPPED, 1005 zero
    assert (acme.calls, acme.vos3000, acme.pipeline) == (5, Decimal("0.191"), Decimal("0.191"))
    assert comparison.differences == []
    assert "calls that differ: 0" in format_comparison(comparison)


def test_compare_lists_the_calls_that_differ(
        tmp_path: Path, mapping: Vos3000Mapping, config: BillingConfig) -> None:
    rows = list(CSV_CDRS)
    rows[0] = rows[0].replace(",0.1200,", ",0.1000,")  # VOS3000 billed less
    rows[3] = rows[3].replace(",0,2,77,", ",0.0600,2,77,")  # VOS3000 billed a server hangup
    path = write(tmp_path / "e_cdr_20251124.csv", [CSV_HEADER, *rows])
    comparison = compare(read_all([path], mapping, None), config)
    acme = comparison.accounts["acme"]
    assert (acme.vos3000, acme.pipeline) == (Decimal("0.2310"), Decimal("0.1910"))
    assert [(d.call_id, d.vos3000_fee, d.pipeline_fee, d.computed_fee, d.decision)
            for d in comparison.differences] == [
        ("vos-1001", Decimal("0.1000"), Decimal("0.1200"), Decimal("0.1200"), "RECORDED"),
        ("vos-1004", Decimal("0.0600"), Decimal(0), Decimal("0.0600"),
         "SKIPPED SERVER_HANGUP_POLICY"),
    ]
    report = format_comparison(comparison)
    assert "calls that differ: 2" in report
    assert "SKIPPED SERVER_HANGUP_POLICY" in report


# -- the command, end to end ---------------------------------------------------------------

def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "import", "vos3000", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_writes_events_fees_rejects_and_compares(tmp_path: Path, config: BillingConfig) -> None:
    write(tmp_path / "mapping.toml", MAPPING.splitlines())
    txt = write(tmp_path / "2025112416.txt", [*TEXT_CDRS, "1|2|3"])
    dump = write(tmp_path / "e_cdr_20251124.csv", [CSV_HEADER, *CSV_CDRS])
    out = tmp_path / "events.jsonl"
    done = run(txt, dump, "--mapping", "mapping.toml", "--jsonl", out, "--compare",
               "--config", "billing.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) == 2 * 14  # per layout: 5 SETUP, 4 ANSWER, 5 HANGUP
    assert [e["ts_ms"] for e in events] == sorted(e["ts_ms"] for e in events)
    fees = [json.loads(line) for line in (tmp_path / "events.vosfees.jsonl").read_text()
            .splitlines()]
    assert fees[5] == {"call_id": "vos-1001", "flowno": "1001", "account": "acme",
                       "fee": "0.1200", "feetime": "95", "billingmode": None,
                       "enddirection": "0", "endreason": "0", "file": str(dump), "line": 2}
    rejects = [json.loads(line) for line in (tmp_path / "events.rejects.jsonl").read_text()
               .splitlines()]
    assert {(r["file"], r["line"], r["category"]) for r in rejects} == {
        (str(txt), 6, "column count"), (str(txt), 4, "unknown end reason"),
        (str(dump), 5, "unknown end reason")}
    assert f"{txt}:6: has 3 columns" in done.stderr
    assert "unknown end reasons (server_reason OTHER)  '77' x2" in done.stderr
    assert "acme" in done.stdout and "calls that differ: 0" in done.stdout
    # the file rates with rate-file like any event file
    rated = subprocess.run([str(CLI), "rate-file", "--config", "billing.toml", "--events",
                            str(out), "--out", "cdrs.jsonl"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120, check=False)
    assert rated.returncode == 0, rated.stderr
    assert "calls emitted    10" in rated.stderr


@pytest.mark.parametrize(("files", "args", "message"), [
    (["missing.txt"], ["--jsonl", "o.jsonl"], "missing.txt: does not exist"),
    (["2025112416.txt"], [], "nothing to do"),
    (["2025112416.txt"], ["--compare"], "--compare rates with the billing configuration"),
    (["2025112416.txt"], ["--jsonl", "o.jsonl", "--mapping", "bad.toml"],
     "bad.toml: text.columns: expected a whole number"),
    (["noheader.csv"], ["--jsonl", "o.jsonl"], "noheader.csv:1: cannot tell the layout"),
    (["noholdtime.csv"], ["--jsonl", "o.jsonl"], "noholdtime.csv:1: header lacks column(s) "
     "'holdtime'"),
    (["2025112416.txt"], ["--jsonl", "nodir/o.jsonl"], "--jsonl: cannot write nodir/o.jsonl"),
])
def test_cli_user_mistakes_are_clear_errors(tmp_path: Path, files: list[str], args: list[str],
                                            message: str) -> None:
    write(tmp_path / "2025112416.txt", TEXT_CDRS)
    write(tmp_path / "bad.toml", ["[text]", "columns = 'many'"])
    write(tmp_path / "noheader.csv", CSV_CDRS)
    write(tmp_path / "noholdtime.csv", [CSV_HEADER.replace("holdtime", "hold"), *CSV_CDRS])
    done = run(*files, *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert message in done.stderr
