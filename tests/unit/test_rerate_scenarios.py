"""Re-rating scenarios (configs, traffic) shared by the re-rating tests, and the pure
tests of re-rating: reconstruction of calls from stored facts, comparison, delta report.

The integration tests (tests/integration/test_rerate_*.py) import the builders below.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig, load_config
from pipeline.core.summary import newest_versions
from pipeline.offline.rate_file import rate_lines
from pipeline.rerate.cli import parse_time
from pipeline.rerate.compare import changed_fields, same_billing
from pipeline.rerate.delta import DeltaReport, format_report
from pipeline.rerate.facts import cdr_of, rerate_row, row_of, view_of
from pipeline.rerate.progress import Progress
from pipeline.switch.simulator import FaultMix, Item, generate, jsonl_line

T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z
HEADER = (
    "prefix,description,rate_per_min,first_increment_s,next_increment_s,connect_fee,"
    "effective_from,effective_to\n"
)
SPLIT = "2025-11-24T16:03:00Z"  # an effective-dated change inside the traffic

DECKS_OLD = {
    "retail-usd.csv": HEADER
    + "44,UK,0.0500,60,60,0,,\n"
    + f"447,UK mobile,0.1200,30,6,0,,{SPLIT}\n"
    + f"447,UK mobile,0.0900,30,6,0,{SPLIT},\n"
    + "1,USA,0.0100,6,6,0.0150,,\n"
    + "33,France,0.0400,1,1,0,,\n",
    "retail-eur.csv": HEADER
    + "49,Germany,0.0300,60,1,0,,\n"
    + "33,France,0.0350,30,6,0.0100,,\n"
    + "44,UK,0.0450,60,60,0,,\n",
    "vendor-a.csv": HEADER
    + "44,UK,0.0300,1,1,0,,\n447,UK mobile,0.0700,1,1,0,,\n1,USA,0.0040,1,1,0,,\n"
    + "33,France,0.0200,1,1,0,,\n49,Germany,0.0150,1,1,0,,\n",
    "vendor-b.csv": HEADER
    + "44,UK,0.0250,1,1,0,,\n447,UK mobile,0.0650,1,1,0,,\n1,USA,0.0050,1,1,0,,\n"
    + "33,France,0.0180,1,1,0,,\n49,Germany,0.0140,1,1,0,,\n",
}
# The new tariff: UK mobile after the split and USA dearer for acme, France cheaper for
# beta, the vendor deck of out-a late with a new UK rate. UK landline and Germany stay.
DECKS_NEW = {
    **DECKS_OLD,
    "retail-usd.csv": DECKS_OLD["retail-usd.csv"]
    .replace(f"447,UK mobile,0.0900,30,6,0,{SPLIT},", f"447,UK mobile,0.0950,30,6,0,{SPLIT},")
    .replace("1,USA,0.0100,6,6,0.0150,,", "1,USA,0.0120,6,6,0.0150,,"),
    "retail-eur.csv": DECKS_OLD["retail-eur.csv"].replace(
        "33,France,0.0350,30,6,0.0100,,", "33,France,0.0300,30,6,0.0100,,"
    ),
    "vendor-a.csv": DECKS_OLD["vendor-a.csv"].replace(
        "44,UK,0.0300,1,1,0,,", "44,UK,0.0320,1,1,0,,"
    ),
}

CONFIG = """\
[policy]
fee_precision = 4
record_server_hangup = {record_server_hangup}
free_e164s = ["800*"]
no_cdr_e164s = ["999*"]
max_call_duration_s = 7200
reorder_grace_s = 10
{extra_policy}

[rate_tables.retail-usd]
currency = "USD"
deck = "{deck_dir}/retail-usd.csv"

[rate_tables.retail-eur]
currency = "EUR"
deck = "{deck_dir}/retail-eur.csv"

[rate_tables.vendor-a]
currency = "USD"
deck = "{deck_dir}/vendor-a.csv"

[rate_tables.vendor-b]
currency = "EUR"
deck = "{deck_dir}/vendor-b.csv"

[accounts.acme]
rate_table = "retail-usd"

[accounts.beta]
rate_table = "retail-eur"

[gateways.in-1]
route_prefix = "777"

[gateways.out-a]
route_prefix = "0011"
rate_table = "vendor-a"

[gateways.out-b]
rate_table = "vendor-b"
"""


def write_config(
    directory: Path,
    name: str,
    *,
    tariff: str = "old",
    record_server_hangup: bool = True,
    extra_policy: str = "",
) -> Path:
    """A billing TOML under `directory` (decks in a sub-directory per tariff)."""
    deck_dir = directory / f"decks-{tariff}"
    deck_dir.mkdir(parents=True, exist_ok=True)
    for file, text in (DECKS_OLD if tariff == "old" else DECKS_NEW).items():
        (deck_dir / file).write_text(text)
    path = directory / f"{name}.toml"
    path.write_text(
        CONFIG.format(
            record_server_hangup=str(record_server_hangup).lower(),
            extra_policy=extra_policy,
            deck_dir=deck_dir.name,
        )
    )
    return path


FAULTS = FaultMix(
    dup=0.05,
    reorder=0.05,
    missing_setup=0.03,
    missing_answer=0.03,
    missing_hangup=0.03,
    second_hangup=0.03,
)


def traffic(
    config: BillingConfig, calls: int, *, seed: int = 7, start_ms: int = T0, rate_cps: float = 1.0
) -> list[Item]:
    """Simulated events and ticks (with faults), deterministic."""
    return list(
        generate(
            config,
            calls=calls,
            seed=seed,
            start_ms=start_ms,
            rate_cps=rate_cps,
            faults=FAULTS,
            switches=3,
        )
    )


def rated(items: Iterable[Item], config: BillingConfig) -> list[RatedCdr]:
    """Every CDR version `rate-file` emits for these events, in emission order."""
    return list(rate_lines([jsonl_line(i) for i in items], config))


def newest(items: Iterable[Item], config: BillingConfig) -> dict[str, RatedCdr]:
    return newest_versions(rated(items, config))


def start_of(cdr: RatedCdr) -> int:
    return next(t for t in (cdr.setup_ts_ms, cdr.answer_ts_ms, cdr.end_ts_ms) if t is not None)


def billing(cdr: RatedCdr | dict[str, Any]) -> dict[str, Any]:
    """A CDR without version and tariff version, comparable across stores."""
    values = cdr._asdict() if isinstance(cdr, RatedCdr) else dict(cdr)
    out = {k: v for k, v in values.items() if k not in ("version", "tariff_version")}
    out["flags"] = list(out["flags"] or [])
    out["answered"] = bool(out["answered"])
    return {k: out[k] for k in RatedCdr._fields if k in out}


# -- pure tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BillingConfig]:
    tmp = tmp_path_factory.mktemp("rerate-configs")
    return {
        "old": load_config(write_config(tmp, "old")),
        "new": load_config(write_config(tmp, "new", tariff="new")),
        "no-server-hangup": load_config(write_config(tmp, "nosh", record_server_hangup=False)),
        "odd": load_config(
            write_config(
                tmp,
                "odd",
                extra_policy="free_time_s = 3\nhold_time_precision_ms = 0\n"
                "gateway_route_prefix_billing = false\nrecord_zero_hold_time = false\n"
                'fee_rounding = "down"\nrecord_illegal_call = false',
            )
        ),
    }


@pytest.fixture(scope="module")
def items(configs: dict[str, BillingConfig]) -> list[Item]:
    return traffic(configs["old"], 1500, rate_cps=5.0)


@pytest.mark.parametrize("name", ["old", "no-server-hangup", "odd"])
def test_reconstruction_reproduces_every_stored_cdr(
    configs: dict[str, BillingConfig], items: list[Item], name: str
) -> None:
    config = configs[name]
    final = newest(items, config)
    statuses = {c.status for c in final.values()}
    assert statuses == {"COMPLETE", "ANSWER_MISSING", "SETUP_MISSING", "HANGUP_MISSING"}
    for cdr in final.values():
        row = row_of(cdr)
        assert rerate_row(row, config) == cdr, cdr.call_id


def test_reconstruction_keeps_negative_pdd_and_hold(configs: dict[str, BillingConfig]) -> None:
    config = configs["old"]
    events = [
        {
            "event_id": "s",
            "call_id": "neg",
            "switch_id": "sw1",
            "event_type": "SETUP",
            "ts_ms": T0,
            "account_id": "acme",
            "caller": "1555",
            "callee": "447700900123",
        },
        {
            "event_id": "r",
            "call_id": "neg",
            "switch_id": "sw1",
            "event_type": "RINGING",
            "ts_ms": T0 - 5,
        },
        {
            "event_id": "a",
            "call_id": "neg",
            "switch_id": "sw1",
            "event_type": "ANSWER",
            "ts_ms": T0 + 9000,
            "egress_gateway": "out-b",
        },
        {
            "event_id": "h",
            "call_id": "neg",
            "switch_id": "sw1",
            "event_type": "HANGUP",
            "ts_ms": T0 + 8000,
            "answered": True,
            "hangup_source": "CALLER",
        },
    ]
    (cdr,) = newest(events, config).values()
    assert set(cdr.flags) == {"NEGATIVE_PDD", "NEGATIVE_HOLD"}
    assert rerate_row(row_of(cdr), config) == cdr


def test_new_tariff_from_facts_equals_rate_file_with_the_new_config(
    configs: dict[str, BillingConfig], items: list[Item]
) -> None:
    old, new = newest(items, configs["old"]), newest(items, configs["new"])
    changed = 0
    for call_id, stored in old.items():
        again = rerate_row(row_of(stored), configs["new"])
        assert again == new[call_id]
        changed += not same_billing(row_of(stored), again)
    assert 0 < changed < len(old)  # the new tariff moves some calls, not all


def test_compare_ignores_version_tariff_and_money_scale(
    configs: dict[str, BillingConfig], items: list[Item]
) -> None:
    cdr = next(c for c in newest(items, configs["old"]).values() if c.fee)
    assert cdr.fee is not None
    row = row_of(cdr, run_id="rr-x")
    assert same_billing(row, cdr._replace(version=cdr.version + 7, tariff_version="other"))
    rescaled = cdr._replace(fee=cdr.fee.quantize(Decimal("0.000001")))
    assert same_billing(row, rescaled)
    dearer = cdr._replace(fee=cdr.fee + Decimal("0.0001"))
    assert not same_billing(row, dearer)
    assert changed_fields(row, dearer) == ("fee",)
    flagged = cdr._replace(flags=(*cdr.flags, "UNKNOWN_INGRESS_GATEWAY"))
    assert changed_fields(row, flagged) == ("flags",)
    # as read back from ClickHouse: answered 0/1, flags a list
    stored = list(row)
    stored[RatedCdr._fields.index("answered")] = int(cdr.answered)
    stored[RatedCdr._fields.index("flags")] = list(cdr.flags)
    assert same_billing(stored, cdr)
    assert cdr_of(stored) == cdr


def test_view_of_a_hangup_missing_call_has_no_hangup(
    configs: dict[str, BillingConfig], items: list[Item]
) -> None:
    cdr = next(c for c in newest(items, configs["old"]).values() if c.status == "HANGUP_MISSING")
    view, status = view_of(row_of(cdr))
    assert status == "HANGUP_MISSING" and view.hangup is None and view.setup is not None


def _call(call_id: str, **changes: Any) -> RatedCdr:
    base = dict.fromkeys(RatedCdr._fields)
    base.update(
        call_id=call_id,
        version=4000,
        status="COMPLETE",
        record_decision="RECORDED",
        billing_mode="NORMAL",
        account_id="acme",
        switch_id="sw1",
        answered=True,
        hold_ms=60000,
        hold_s=60,
        rated_s=60,
        hangup_source="CALLER",
        currency="USD",
        rate_prefix="44",
        fee=Decimal("1.00"),
        egress_gateway="out-a",
        cost_currency="USD",
        cost=Decimal("0.50"),
        tariff_version="t1",
        flags=(),
    )
    base.update(changes)
    return RatedCdr(**base)  # type: ignore[arg-type]


def test_delta_report_totals_differences_and_recovered_revenue() -> None:
    report = DeltaReport()
    same = _call("c1")
    report.add(row_of(same), same, None)
    old = _call("c2", rate_prefix="447", fee=Decimal("2.00"))
    report.add(row_of(old), old._replace(fee=Decimal("2.50")), ("fee",))
    skipped = _call(
        "c3",
        record_decision="SKIPPED",
        decision_reason="SERVER_HANGUP_POLICY",
        fee=Decimal("0.70"),
        rate_prefix="1",
    )
    report.add(
        row_of(skipped),
        skipped._replace(record_decision="RECORDED", decision_reason=None),
        ("record_decision", "decision_reason"),
    )
    eur = _call("c4", account_id="beta", currency="EUR", fee=Decimal("3.00"))
    report.add(
        row_of(eur), eur._replace(fee=Decimal("2.00"), cost=Decimal("0.40")), ("fee", "cost")
    )

    data = report.as_dict()
    acme = next(a for a in data["accounts"] if a["account_id"] == "acme")
    assert (acme["old_total"], acme["new_total"], acme["difference"]) == ("3.00", "4.20", "1.20")
    assert (acme["calls"], acme["calls_changed"]) == (3, 2)
    assert [d["prefix"] for d in acme["top_destinations"]] == ["1", "447"]
    beta = next(a for a in data["accounts"] if a["account_id"] == "beta")
    assert beta["difference"] == "-1.00"
    assert data["decision_changes"] == {"SKIPPED->RECORDED": 1}
    assert data["recovered_revenue"] == {"USD": "0.70"}
    assert data["calls"] == 4 and data["calls_changed"] == 3
    text = format_report(report)
    assert "acme" in text and "+1.20" in text and "recovered revenue" in text


def test_parse_time_accepts_iso_and_epoch_ms() -> None:
    assert parse_time("1764000000000") == T0
    assert parse_time("2025-11-24T16:00:00Z") == T0
    assert parse_time("2025-11-24T18:00:00+02:00") == T0
    assert parse_time("2025-11-24") == T0 - 16 * 3600 * 1000


def test_progress_shows_rate_and_eta() -> None:
    out = io.StringIO()
    progress = Progress(1000, stream=out, interval_s=0.0)
    progress.started -= 10
    progress.update(250, 5)
    line = out.getvalue()
    assert "250 calls of ~1,000 (25%)" in line and "25/s" in line and "ETA 0m30s" in line
