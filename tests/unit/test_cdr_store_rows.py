"""The sink's columnar path: Avro record -> `cdr_row` -> columns, the same values
`insert_cdrs` sends for the RatedCdr; batch digests (no ClickHouse needed here; the
round trip through a real server is in tests/integration/test_clickhouse_storage.py)."""

from __future__ import annotations

from pathlib import Path

from pipeline.avro import codec
from pipeline.core.cdr import RatedCdr
from pipeline.core.config import load_config
from pipeline.core.correlator import Correlator
from pipeline.core.events import parse_event
from pipeline.storage.cdr_store import CDR_COLUMNS, _columns_for, cdr_row, row_digest
from pipeline.switch.simulator import FaultMix, Tick, generate

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "demo.toml"


def simulated_cdrs(calls: int = 400) -> list[RatedCdr]:
    """Every kind of CDR the demo traffic makes: answered, busy, illegal, free, server
    hangups, incomplete calls (missing events), late corrections."""
    config = load_config(DEMO_CONFIG)
    correlator = Correlator(config)
    out: list[RatedCdr] = []
    items = generate(config, calls=calls, switches=3, rate_cps=50, seed=11,
                     start_ms=1_764_000_000_000, faults=FaultMix())
    for offset, item in enumerate(items):
        if isinstance(item, Tick):
            out.extend(correlator.advance(item.ts_ms, offset))
        else:
            out.extend(correlator.on_event(parse_event(item), offset))
    return out


def test_cdr_rows_hold_exactly_what_insert_cdrs_sends() -> None:
    """...for the same message decoded with `decode_cdr` (the sink's former path)."""
    cdrs = simulated_cdrs()
    assert {c.status for c in cdrs} >= {"COMPLETE", "SETUP_MISSING"}
    assert any(c.fee is None for c in cdrs) and any(c.flags for c in cdrs)
    assert any(c.setup_ts_ms is None for c in cdrs)  # call_start_ms from answer / end
    rows = [cdr_row(codec.decode_cdr_record(codec.encode_cdr(c))) for c in cdrs]
    assert all(len(r) == len(CDR_COLUMNS) for r in rows)
    expected = _columns_for([codec.decode_cdr(codec.encode_cdr(c)) for c in cdrs])
    for (name, _), got, want in zip(CDR_COLUMNS, zip(*rows, strict=True), expected, strict=True):
        assert list(got) == want, name
        assert [type(v) for v in got] == [type(v) for v in want], name
        if name in ("rate_per_min", "fee", "cost"):  # same scale, not only equal amounts
            assert [v.as_tuple() for v in got if v is not None] == [
                v.as_tuple() for v in want if v is not None], name


def test_cdr_row_takes_call_start_from_setup_then_answer_then_end() -> None:
    (cdr, *_) = simulated_cdrs(5)
    for setup, answer, end, start in [(5, 6, 7, 5), (None, 6, 7, 6), (None, None, 7, 7),
                                      (None, None, None, 0)]:
        changed = cdr._replace(setup_ts_ms=setup, answer_ts_ms=answer, end_ts_ms=end)
        row = cdr_row(codec.decode_cdr_record(codec.encode_cdr(changed)))
        named = dict(zip((n for n, _ in CDR_COLUMNS), row, strict=True))
        assert named["call_start_ms"] == start
        assert named["rerate_run_id"] == "" and named["answered"] in (0, 1)


def test_row_digest_is_the_sorted_call_version_pairs() -> None:
    rows = [cdr_row(codec.decode_cdr_record(codec.encode_cdr(c))) for c in simulated_cdrs(50)]
    assert row_digest(rows[::-1]) == row_digest(rows)
    bumped = [(rows[0][0], rows[0][1] + 1, *rows[0][2:]), *rows[1:]]
    assert row_digest(bumped) != row_digest(rows)
    assert row_digest(rows[1:]) != row_digest(rows)
