"""A stored CDR back to the events it was rated from: the `clickhouse` source of re-rating.

A RatedCdr keeps every fact rating and policy read (times, numbers, gateways, hangup
cause, illegal reason), so one synthetic event of each type rebuilds a CallView that
`rate_call` rates exactly as the correlator's view was rated; the unit and integration
tests check that under the old configuration the result is the stored CDR itself.

Stored rows are tuples in `STORED_COLUMNS` order (the RatedCdr fields, then the
table's `call_start_ms` and `rerate_run_id`): the reader selects them in that order
and nothing here builds dicts, because re-rating runs over millions of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.core import cdr as cdr_rules
from pipeline.core.cdr import CDR_FIELDS, RatedCdr
from pipeline.core.config import BillingConfig
from pipeline.core.events import CallEvent
from pipeline.core.rating import CallView, rate_call

StoredRow = Sequence[Any]

STORED_COLUMNS: tuple[str, ...] = (*CDR_FIELDS, "call_start_ms", "rerate_run_id")
COL = {name: i for i, name in enumerate(STORED_COLUMNS)}

I_CALL_ID = COL["call_id"]
I_VERSION = COL["version"]
I_STATUS = COL["status"]
I_DECISION = COL["record_decision"]
I_ACCOUNT = COL["account_id"]
I_CALLER = COL["caller"]
I_CALLEE = COL["callee"]
I_CALLEE_GW = COL["callee_gateway"]
I_INGRESS = COL["ingress_gateway"]
I_EGRESS = COL["egress_gateway"]
I_SWITCH = COL["switch_id"]
I_SETUP_TS = COL["setup_ts_ms"]
I_ANSWER_TS = COL["answer_ts_ms"]
I_END_TS = COL["end_ts_ms"]
I_PDD = COL["pdd_ms"]
I_ANSWERED = COL["answered"]
I_HANGUP_SOURCE = COL["hangup_source"]
I_SIP = COL["sip_code"]
I_Q850 = COL["q850_cause"]
I_SERVER_REASON = COL["server_reason"]
I_ILLEGAL = COL["illegal_reason"]
I_RATE_PREFIX = COL["rate_prefix"]
I_CURRENCY = COL["currency"]
I_FEE = COL["fee"]
I_COST = COL["cost"]
I_COST_CURRENCY = COL["cost_currency"]
I_TARIFF = COL["tariff_version"]
I_FLAGS = COL["flags"]
I_CALL_START = COL["call_start_ms"]
I_RUN_ID = COL["rerate_run_id"]

_new = tuple.__new__  # CallEvent(...) spelled positionally, without keyword handling


def view_of(row: StoredRow) -> tuple[CallView, str]:
    """The CallView the stored CDR was rated from, and its status.

    Event ids are synthetic (rating never reads them). A RINGING event exists when
    the CDR has a post-dial delay; a NEGATIVE_PDD flag puts it before the SETUP, as
    the switch did. HANGUP_MISSING calls get no HANGUP: `rate_call` closes them
    itself (answer + max_call_duration_s, or the last event time, the stored end).
    RINGING and HANGUP carry the stored egress gateway too: a call not answered keeps
    the gateway it last tried (the ANSWER's wins when there is one).
    """
    call_id = row[I_CALL_ID]
    switch_id = row[I_SWITCH]
    status = row[I_STATUS]
    setup_ts = row[I_SETUP_TS]
    answer_ts = row[I_ANSWER_TS]
    end_ts = row[I_END_TS]
    setup = ringing = answer = hangup = None
    if setup_ts is not None:
        setup = _new(
            CallEvent,
            (
                "rerate:SETUP",
                call_id,
                switch_id,
                "SETUP",
                setup_ts,
                row[I_ACCOUNT],
                row[I_CALLER],
                row[I_CALLEE],
                row[I_INGRESS],
                None,
                row[I_ILLEGAL],
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            ),
        )
        pdd = row[I_PDD]
        if pdd is not None:
            if pdd == 0 and "NEGATIVE_PDD" in row[I_FLAGS]:
                pdd = -1
            ringing = _new(
                CallEvent,
                (
                    "rerate:RINGING",
                    call_id,
                    switch_id,
                    "RINGING",
                    setup_ts + pdd,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    row[I_EGRESS],
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                ),
            )
    if answer_ts is not None:
        answer = _new(
            CallEvent,
            (
                "rerate:ANSWER",
                call_id,
                switch_id,
                "ANSWER",
                answer_ts,
                None,
                None,
                None,
                None,
                None,
                None,
                row[I_EGRESS],
                row[I_CALLEE_GW],
                None,
                None,
                None,
                None,
                None,
            ),
        )
    if status != "HANGUP_MISSING":
        hangup = _new(
            CallEvent,
            (
                "rerate:HANGUP",
                call_id,
                switch_id,
                "HANGUP",
                end_ts,
                None,
                None,
                None,
                None,
                None,
                None,
                row[I_EGRESS],
                None,
                bool(row[I_ANSWERED]),
                row[I_HANGUP_SOURCE],
                row[I_SIP],
                row[I_Q850],
                row[I_SERVER_REASON],
            ),
        )
    last = end_ts
    if last is None:
        last = max(t for t in (setup_ts, answer_ts, 0) if t is not None)
    return CallView(call_id, setup, ringing, answer, hangup, last), status


def rerate_row(row: StoredRow, config: BillingConfig) -> RatedCdr:
    """The stored call rated under `config`, at the stored version (the caller decides
    the version it is written with)."""
    view, status = view_of(row)
    return rate_call(view, status, row[I_VERSION], config)


def cdr_of(row: StoredRow) -> RatedCdr:
    """The stored row as a RatedCdr (flags as a tuple, answered as a bool)."""
    values = list(row[: len(CDR_FIELDS)])
    values[I_ANSWERED] = bool(values[I_ANSWERED])
    values[I_FLAGS] = tuple(values[I_FLAGS] or ())
    return RatedCdr(*values)


def row_of(cdr: RatedCdr, call_start_ms: int | None = None, run_id: str = "") -> tuple[Any, ...]:
    """A RatedCdr as a stored row (for tests and the Kafka source's new calls)."""
    if call_start_ms is None:
        call_start_ms = cdr_rules.call_start_ms(cdr) or 0
    return (*cdr, call_start_ms, run_id)
