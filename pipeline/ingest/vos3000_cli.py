"""`cdr-pipeline import vos3000`: VOS3000 CDR exports -> CallEvents, with a fee comparison.

A carrier moving its billing off VOS3000 needs two things from its history: the calls
as events (so rate-file, the live pipeline and rerate can take them) and proof that the
pipeline bills them as VOS3000 did. This command gives both: --jsonl / --publish for
the events, --compare for a per-account report of VOS3000's fees against the
pipeline's. Parsing and mapping live in ``pipeline.ingest.vos3000`` (pure); Kafka and
the billing core are imported only when a run asks for them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pipeline.core.events import CallEvent
from pipeline.errors import PipelineError
from pipeline.ingest.vos3000 import LAYOUTS, Imported, Problem, Vos3000Mapping, read_file

if TYPE_CHECKING:
    from pipeline.core.cdr import RatedCdr
    from pipeline.core.config import BillingConfig

log = logging.getLogger(__name__)

_PHASE = {"SETUP": 0, "ANSWER": 1, "HANGUP": 2}
_SHOWN_PROBLEMS = 10


class ImportUsageError(PipelineError):
    """The command line asks for something the importer cannot do; names the option."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import",
        help="import another switch's CDR history as call events",
        description="Importers of CDR history. See docs/switches.md.",
    )
    sub = p.add_subparsers(dest="switch", required=True, metavar="SWITCH")
    v = sub.add_parser(
        "vos3000",
        help="VOS3000 CDR exports (hourly .txt or e_cdr CSV dumps) -> call events",
        description="Read VOS3000 CDR exports and turn each CDR into SETUP/ANSWER/HANGUP "
        "call events (ids derived from the CDR id: a re-import is harmless). Write them as "
        "JSON Lines (the rate-file input), publish them to the call-events topic, and/or "
        "compare VOS3000's own fees with the pipeline's per account. Lines that do not "
        "parse are reported by file and line, never fatal.",
    )
    v.add_argument("files", nargs="+", type=Path, metavar="FILE", help="VOS3000 export files")
    v.add_argument("--layout", choices=LAYOUTS,
                   help="text (hourly YYYYMMDDHH.txt) or csv (e_cdr dump with a header); "
                   "default: detected per file")
    v.add_argument("--mapping", type=Path, metavar="TOML",
                   help="column mapping (default: built in, as deploy/vos3000/mapping.toml)")
    v.add_argument("--config", type=Path,
                   help="billing TOML (needed by --compare; [kafka] settings for --publish)")
    v.add_argument("--jsonl", type=Path, metavar="OUT", help="write the events here, JSON Lines")
    v.add_argument("--publish", action="store_true",
                   help="publish the events to the call-events topic (idempotent, acks=all)")
    v.add_argument("--bootstrap", help="Kafka bootstrap servers for --publish "
                   "(default: [kafka] bootstrap, env CDR_KAFKA_BOOTSTRAP)")
    v.add_argument("--compare", action="store_true",
                   help="rate the events offline and print VOS3000's fees against the "
                   "pipeline's, per account, and the calls that differ")
    v.add_argument("--fees", type=Path, metavar="F",
                   help="VOS3000's fee per call, JSON Lines (default with --jsonl: "
                   "OUT.vosfees.jsonl)")
    v.add_argument("--rejects", type=Path, metavar="F",
                   help="lines not imported and notices, JSON Lines (default with --jsonl: "
                   "OUT.rejects.jsonl)")
    v.set_defaults(handler=_run)


# -- reading -------------------------------------------------------------------------

@dataclass
class ImportResult:
    """Everything read from the files: the CDRs that mapped and the lines that did not."""

    imported: list[Imported] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: int = 0
    rejects_by_category: Counter[str] = field(default_factory=Counter)
    hangups: Counter[str] = field(default_factory=Counter)
    unknown_end_reasons: Counter[str] = field(default_factory=Counter)

    def add(self, item: Imported | Problem) -> None:
        if isinstance(item, Problem):
            self.problems.append(item)
            self.rejects_by_category[item.category] += 1
            return
        self.imported.append(item)
        self.hangups[item.events[-1].hangup_source or "?"] += 1
        if item.notice is not None:
            self.problems.append(item.notice)
            self.unknown_end_reasons[item.notice.end_reason or ""] += 1

    def events(self) -> list[CallEvent]:
        """All events in time order, so history read out of order is not judged late."""
        events = [event for item in self.imported for event in item.events]
        return sorted(events, key=lambda e: (e.ts_ms, e.call_id, _PHASE[e.event_type]))


def read_all(paths: Iterable[Path], mapping: Vos3000Mapping,
             layout: str | None) -> ImportResult:
    result = ImportResult()
    for path in paths:
        result.files += 1
        for item in read_file(path, mapping, layout):
            result.add(item)
        log.debug("%s read", path)
    return result


# -- writing ---------------------------------------------------------------------------

def fee_record(item: Imported) -> dict[str, Any]:
    """VOS3000's own billing of one call, for --compare and the carrier's records."""
    cdr = item.cdr
    return {
        "call_id": cdr.call_id, "flowno": cdr.uid, "account": cdr.account,
        "fee": None if cdr.fee is None else str(cdr.fee),
        "feetime": None if cdr.fee_time is None else str(cdr.fee_time),
        "billingmode": cdr.billing_mode, "enddirection": cdr.end_direction,
        "endreason": cdr.end_reason, "file": cdr.file, "line": cdr.line,
    }


def _open(path: Path, option: str) -> IO[str]:
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise ImportUsageError(f"{option}: cannot write {path}: {exc.strerror}") from None


def write_jsonl(path: Path, option: str, records: Iterable[dict[str, Any]]) -> int:
    count = 0
    with _open(path, option) as out:
        for record in records:
            out.write(json.dumps(record, sort_keys=True) + "\n")
            count += 1
    return count


def _beside(out: Path | None, suffix: str) -> Path | None:
    """OUT.jsonl -> OUT<suffix>: where side files go when not named."""
    if out is None:
        return None
    return out.with_name(out.name.removesuffix(".jsonl") + suffix)


# -- publishing ------------------------------------------------------------------------

def publish(events: list[CallEvent], config: Path | None, bootstrap: str | None) -> str:
    """Publish to the settings' call-events topic; flushes and reports the counts."""
    from pipeline.runtime.settings import load_settings, replace
    from pipeline.switch.publisher import SwitchPublisher

    kafka = replace(load_settings(config).kafka, bootstrap=bootstrap)
    with SwitchPublisher(kafka, kafka.call_events) as publisher:
        publisher.partitions()  # a missing topic fails here, clearly, not after a timeout
        for event in events:
            publisher.publish(event)
    stats = publisher.stats
    return (f"kafka {kafka.call_events}@{kafka.bootstrap}: {stats.events} events, "
            f"{stats.delivered} delivered")


# -- comparing -------------------------------------------------------------------------

@dataclass
class AccountTotals:
    calls: int = 0
    vos3000: Decimal = Decimal(0)
    pipeline: Decimal = Decimal(0)
    currencies: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Difference:
    call_id: str
    account: str
    vos3000_fee: Decimal
    pipeline_fee: Decimal  # what the pipeline bills: the fee of a RECORDED CDR, else 0
    computed_fee: Decimal | None  # the pipeline's fee whatever the decision
    decision: str


@dataclass
class Comparison:
    accounts: dict[str, AccountTotals] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def rate_events(events: list[CallEvent], config: BillingConfig,
                rejected: list[str]) -> dict[str, RatedCdr]:
    """The newest CDR of every call, rated by the offline driver (the rate-file path)."""
    from pipeline.core.summary import newest_versions
    from pipeline.offline.rate_file import Reject, rate_lines

    def on_reject(item: Reject) -> None:
        rejected.append(f"event {item.line}: {item.reason}")

    lines = (json.dumps(event.to_dict()) for event in events)
    return newest_versions(rate_lines(lines, config, on_reject))


def _decision(cdr: RatedCdr | None) -> str:
    if cdr is None:
        return "NOT RATED"
    return f"{cdr.record_decision} {cdr.decision_reason}" if cdr.decision_reason \
        else cdr.record_decision


def compare(result: ImportResult, config: BillingConfig) -> Comparison:
    """VOS3000's fee per call against what the pipeline bills (only RECORDED CDRs)."""
    comparison = Comparison()
    cdrs = rate_events(result.events(), config, comparison.rejected)
    for item in result.imported:
        cdr = cdrs.get(item.cdr.call_id)
        vos = item.cdr.fee if item.cdr.fee is not None else Decimal(0)
        recorded = cdr is not None and cdr.record_decision == "RECORDED"
        billed = cdr.fee if recorded and cdr is not None and cdr.fee is not None else Decimal(0)
        totals = comparison.accounts.setdefault(item.cdr.account, AccountTotals())
        totals.calls += 1
        totals.vos3000 += vos
        totals.pipeline += billed
        if cdr is not None and cdr.currency:
            totals.currencies.add(cdr.currency)
        if vos != billed:
            comparison.differences.append(Difference(
                item.cdr.call_id, item.cdr.account, vos, billed,
                None if cdr is None else cdr.fee, _decision(cdr)))
    return comparison


def format_comparison(comparison: Comparison) -> str:
    lines = ["VOS3000 fees against the pipeline's (pipeline: RECORDED CDRs only)",
             f"{'account':<20} {'calls':>6} {'vos3000':>14} {'pipeline':>14} "
             f"{'pipeline-vos':>14}  currency"]
    for account, t in sorted(comparison.accounts.items()):
        lines.append(f"{account:<20} {t.calls:>6} {t.vos3000!s:>14} {t.pipeline!s:>14} "
                     f"{t.pipeline - t.vos3000!s:>14}  {','.join(sorted(t.currencies)) or '-'}")
    lines.append(f"calls that differ: {len(comparison.differences)}")
    if comparison.differences:
        lines.append(f"{'call_id':<32} {'account':<16} {'vos3000':>12} {'pipeline':>12} "
                     f"{'computed':>12}  decision")
    for d in comparison.differences:
        computed = "-" if d.computed_fee is None else str(d.computed_fee)
        lines.append(f"{d.call_id:<32} {d.account:<16} {d.vos3000_fee!s:>12} "
                     f"{d.pipeline_fee!s:>12} {computed:>12}  {d.decision}")
    for text in comparison.rejected:
        lines.append(f"not rated: {text}")
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------

def _check_args(args: argparse.Namespace) -> None:
    if not (args.jsonl or args.publish or args.compare):
        raise ImportUsageError("nothing to do: give --jsonl OUT, --publish, --compare or more")
    if args.compare and args.config is None:
        raise ImportUsageError("--compare rates with the billing configuration: give --config")
    if args.bootstrap and not args.publish:
        raise ImportUsageError("--bootstrap is for --publish")
    for path in args.files:
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise ImportUsageError(f"{path}: {what}")


def format_summary(result: ImportResult, events: int) -> str:
    rejected = [p for p in result.problems if not p.notice]
    lines = [
        f"files read       {result.files}",
        f"CDRs imported    {len(result.imported)}  ({events} events)",
        f"lines rejected   {len(rejected)}"
        + (f"  ({', '.join(f'{k}: {v}' for k, v in sorted(result.rejects_by_category.items()))})"
           if rejected else ""),
        "hangup source    " + (", ".join(f"{k} {v}" for k, v in sorted(result.hangups.items()))
                               or "-"),
    ]
    if result.unknown_end_reasons:
        codes = ", ".join(f"{k!r} x{v}" for k, v in sorted(result.unknown_end_reasons.items()))
        lines.append(f"unknown end reasons (server_reason OTHER)  {codes}")
    for problem in result.problems[:_SHOWN_PROBLEMS]:
        lines.append(f"  {problem.file}:{problem.line}: {problem.reason}")
    if len(result.problems) > _SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(result.problems) - _SHOWN_PROBLEMS} more")
    return "\n".join(lines)


def _write_outputs(args: argparse.Namespace, result: ImportResult,
                   events: list[CallEvent]) -> list[str]:
    outputs = []
    if args.jsonl is not None:
        write_jsonl(args.jsonl, "--jsonl", (e.to_dict() for e in events))
        outputs.append(f"events -> {args.jsonl}")
    fees = args.fees or _beside(args.jsonl, ".vosfees.jsonl")
    if fees is not None:
        write_jsonl(fees, "--fees", (fee_record(item) for item in result.imported))
        outputs.append(f"VOS3000 fees -> {fees}")
    rejects = args.rejects or _beside(args.jsonl, ".rejects.jsonl")
    if rejects is not None:
        write_jsonl(rejects, "--rejects", (p.to_dict() for p in result.problems))
        outputs.append(f"rejects and notices -> {rejects}")
    return outputs


def _run(args: argparse.Namespace) -> int:
    from pipeline.ingest.vos3000 import load_mapping

    _check_args(args)
    mapping = load_mapping(args.mapping)
    config = None
    if args.compare:
        from pipeline.core.config import load_config

        config = load_config(args.config)
    result = read_all(args.files, mapping, args.layout)
    events = result.events()
    outputs = _write_outputs(args, result, events)
    if args.publish:
        outputs.append(publish(events, args.config, args.bootstrap))
    print(format_summary(result, len(events)), file=sys.stderr)
    for line in outputs:
        print(line, file=sys.stderr)
    if config is not None:
        print(format_comparison(compare(result, config)))
    return 0
