"""A deterministic switch-cluster traffic generator (docs/simulator.md).

``generate`` yields CallEvent dicts (spec field names, as in the JSON Lines input of
``rate-file``) and ``Tick`` control items, in publish order. Everything comes from one
seeded ``random.Random``: the same arguments give the same items, byte for byte.

Timing invariants that keep the final CDRs deterministic (billing.md section 2):
- every item is published at or after its event time, and at most ``window`` after it,
  where ``window`` = min(reorder_grace_s / 2, 5 s) for reordered events, plus up to
  ``dup_max`` for re-sent duplicates (bounded well inside ``closed_retention_s``): so no
  event misses the reorder grace of its call, and none is ever late;
- a call lasts (SETUP to HANGUP) at most max_call_duration_s - 1 s, so no call goes
  stale before its HANGUP arrives;
- ticks carry the newest event time yielded so far, never more; the final tick is far
  enough ahead that every call still open is stale, so nothing stays open.

This module imports only the billing core (no Kafka client): ``publish`` takes any
object with the ``SwitchPublisher`` methods it uses.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import random
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.config import BillingConfig
from pipeline.core.events import ILLEGAL_REASONS, SERVER_REASONS, parse_event
from pipeline.core.numbers import E164Patterns, normalize
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.switch.publisher import SwitchPublisher

log = logging.getLogger(__name__)

TICK_INTERVAL_MS = 1000
MAX_REORDER_WINDOW_MS = 5000
MAX_DUP_DELAY_MS = 30_000
DEFAULT_GATEWAY = "gw-default"

# Call kinds and their share of the calls (free / no_cdr only when the policy has patterns).
KIND_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("answered", 0.57),
    ("busy", 0.08),
    ("no_answer", 0.07),
    ("cancelled", 0.06),
    ("rejected", 0.03),
    ("server_hangup", 0.08),
    ("illegal", 0.03),
    ("free", 0.03),
    ("no_cdr", 0.02),
    ("unknown_destination", 0.02),
    ("unknown_account", 0.01),
)
# Unanswered outcomes: (hangup_source, sip_code, q850_cause).
UNANSWERED = {
    "busy": ("CALLEE", 486, 17),
    "no_answer": ("CALLEE", 480, 19),
    "cancelled": ("CALLER", 487, 16),
    "rejected": ("CALLEE", 403, 21),
}
# Server hangups: reason -> (answered, sip_code, q850_cause).
SERVER_OUTCOMES = {
    "MAX_DURATION": (True, 200, 102),
    "CREDIT_EXHAUSTED": (True, 200, 16),
    "POLICY": (False, 403, 21),
    "ADMIN": (True, 200, 16),
    "RESOURCE": (False, 503, 34),
    "MEDIA_TIMEOUT": (True, 408, 102),
    "SESSION_TIMEOUT": (True, 408, 102),
    "OTHER": (True, 500, 41),
}
# Country codes tried for destinations the decks do not cover.
FOREIGN_CODES = ("61", "81", "86", "49", "33", "55", "91", "27", "7", "52", "234", "971")
HOLD_MEDIAN_MS = 60_000  # lognormal, sigma 0.9: mean about 90 s
HOLD_SIGMA = 0.9


class SimulationError(PipelineError):
    """The simulator cannot run with these arguments or this configuration."""


@dataclass(frozen=True, slots=True)
class Tick:
    """A watermark tick: event time ``ts_ms`` reached (published to every partition)."""

    ts_ms: int


Item = dict[str, Any] | Tick


@dataclass(frozen=True)
class FaultMix:
    """Injected fault rates: ``dup`` per event, the others per call (when they apply)."""

    dup: float = 0.02  # an event re-sent later with the same event_id
    reorder: float = 0.03  # an event overtaken by later ones of its call (another node)
    missing_setup: float = 0.01
    missing_answer: float = 0.01  # answered calls only: HANGUP says answered, no ANSWER
    missing_hangup: float = 0.01
    second_hangup: float = 0.01  # the other leg's HANGUP, a different event_id, later

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SimulationError(f"fault {f.name}: expected a rate 0..1, got {value!r}")
            if not 0.0 <= float(value) <= 1.0:
                raise SimulationError(f"fault {f.name}: rate must be 0..1, got {value}")
        if self.missing_setup + self.missing_answer + self.missing_hangup > 1.0:
            raise SimulationError(
                "faults: missing_setup + missing_answer + missing_hangup exceed 1"
            )

    @classmethod
    def none(cls) -> FaultMix:
        return cls(**{f.name: 0.0 for f in fields(cls)})

    @classmethod
    def parse(cls, spec: str) -> FaultMix:
        """``"dup=0.02,reorder=0.03,..."``; unnamed kinds keep their default; ``none`` = all 0."""
        text = spec.strip()
        if text.lower() in ("none", "off", "0"):
            return cls.none()
        values: dict[str, float] = {}
        known = {f.name for f in fields(cls)}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, raw = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in known:
                raise SimulationError(
                    f"--faults: {part!r} is not KIND=RATE (kinds: {', '.join(sorted(known))})"
                )
            try:
                values[name] = float(raw)
            except ValueError:
                raise SimulationError(
                    f"--faults: {name}: {raw.strip()!r} is not a number"
                ) from None
        return cls(**values)

    def describe(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self))


@dataclass
class SimStats:
    """What a run generated; filled while the generator is consumed."""

    calls: int = 0
    events: int = 0  # event items yielded, duplicates included
    ticks: int = 0  # tick items yielded, the final one included
    kinds: Counter[str] = field(default_factory=Counter)  # call kinds (server_hangup.ADMIN, ...)
    faults: Counter[str] = field(default_factory=Counter)  # injected faults by kind
    first_ts_ms: int | None = None
    last_event_ts_ms: int | None = None  # the newest event time
    final_tick_ms: int | None = None

    def faults_text(self) -> str:
        return " ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"


# -- the configuration, seen as traffic ------------------------------------------------


@dataclass(frozen=True)
class _Catalog:
    accounts: tuple[str, ...]
    prefixes: dict[str, tuple[str, ...]]  # account -> deck prefixes of its rate table
    decks: tuple[Any, ...]  # every rate deck, to find destinations none covers
    ingress: tuple[tuple[str, str], ...]  # (gateway, route_prefix or "")
    egress: tuple[tuple[str, str], ...]
    free: E164Patterns
    no_cdr: E164Patterns
    unknown_accounts: tuple[str, ...]


def _catalog(config: BillingConfig) -> _Catalog:
    accounts = tuple(sorted(config.accounts))
    if not accounts:
        raise SimulationError(f"{config.source}: no [accounts]; the simulator needs at least one")
    gateways = [config.gateways[name] for name in sorted(config.gateways)]
    ingress = tuple((g.name, g.route_prefix or "") for g in gateways if g.rate_table is None)
    egress = tuple((g.name, g.route_prefix or "") for g in gateways if g.rate_table is not None)
    if not egress:
        egress = tuple((g.name, g.route_prefix or "") for g in gateways)
    if not egress:
        log.warning("no gateways configured; ANSWER events use egress gateway %s", DEFAULT_GATEWAY)
        egress = ((DEFAULT_GATEWAY, ""),)
    unknown = []
    for n in range(1, 4):
        name = f"acct-unknown-{n}"
        while name in config.accounts:
            name += "x"
        unknown.append(name)
    return _Catalog(
        accounts=accounts,
        prefixes={a: config.accounts[a].deck.prefixes() for a in accounts},
        decks=tuple(t.deck for t in config.rate_tables.values()),
        ingress=ingress,
        egress=egress,
        free=config.policy.free_e164s,
        no_cdr=config.policy.no_cdr_e164s,
        unknown_accounts=tuple(unknown),
    )


# -- numbers -------------------------------------------------------------------------


def _digits(rng: random.Random, count: int) -> str:
    return str(rng.randrange(10**count)).zfill(count) if count > 0 else ""


def _fill(rng: random.Random, prefix: str) -> str:
    """A plausible E.164 number (10-12 digits, at least 3 after the prefix)."""
    return prefix + _digits(rng, max(3, rng.randint(10, 12) - len(prefix)))


def _from_pattern(rng: random.Random, pattern: str) -> str:
    digits = normalize(pattern)
    return _fill(rng, digits[:-1]) if digits.endswith("*") else digits


# -- one call ------------------------------------------------------------------------


@dataclass
class _Plan:
    """A call before faults: its kind, numbers and outcome."""

    kind: str
    account: str
    number: str  # the customer number (without any ingress route prefix)
    answered: bool
    source: str
    sip: int | None
    q850: int | None
    reason: str | None = None
    illegal: str | None = None


class _Generator:
    def __init__(
        self,
        config: BillingConfig,
        calls: int,
        switches: int,
        rate_cps: float,
        seed: int,
        start_ms: int,
        faults: FaultMix,
        stats: SimStats,
        final_tick: bool,
    ) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible traffic, not secrets
        self.catalog = _catalog(config)
        self.calls, self.switches, self.rate_cps = calls, switches, rate_cps
        self.seed, self.start_ms, self.faults, self.stats = seed, start_ms, faults, stats
        self.final_tick = final_tick
        policy = config.policy
        self.max_ms = policy.max_call_duration_s * 1000
        self.grace_ms = policy.reorder_grace_s * 1000
        self.budget_ms = self.max_ms - 1000 if self.max_ms > 2000 else self.max_ms // 2
        self.window_ms = min(self.grace_ms // 2, MAX_REORDER_WINDOW_MS)
        retention_ms = policy.closed_retention_s * 1000
        self.dup_max_ms = min(MAX_DUP_DELAY_MS, retention_ms - self.window_ms - 1000)
        kinds = [
            (k, w)
            for k, w in KIND_WEIGHTS
            if (k != "free" or self.catalog.free) and (k != "no_cdr" or self.catalog.no_cdr)
        ]
        self.kinds = tuple(k for k, _ in kinds)
        self.kind_weights = tuple(w for _, w in kinds)
        self.reasons = tuple(sorted(SERVER_REASONS))
        self.illegal_reasons = tuple(sorted(ILLEGAL_REASONS))
        self.heap: list[tuple[int, int, dict[str, Any]]] = []
        self.seq = 0
        self.watermark = 0
        self.next_tick = 0
        self._warn_disabled_faults()

    def _warn_disabled_faults(self) -> None:
        if self.faults.reorder and self.window_ms <= 0:
            log.warning("reorder_grace_s is 0: reordering is not injected")
        if self.faults.dup and self.dup_max_ms <= 0:
            log.warning("closed_retention_s is too short: duplicates are not injected")

    # -- the stream ------------------------------------------------------------------

    def run(self) -> Iterator[Item]:
        offset = 0.0
        for n in range(self.calls):
            if n:
                offset += self.rng.expovariate(self.rate_cps) * 1000.0
            t0 = self.start_ms + round(offset)
            yield from self._drain(t0)
            self._call(n, t0)
        yield from self._drain(None)
        if self.final_tick and self.stats.last_event_ts_ms is not None:
            policy_ms = self.max_ms + self.grace_ms
            self.stats.final_tick_ms = self.stats.last_event_ts_ms + policy_ms + 1000
            self.stats.ticks += 1
            yield Tick(self.stats.final_tick_ms)

    def _drain(self, until: int | None) -> Iterator[Item]:
        """Yield queued events published at or before ``until`` (all if None), with ticks."""
        heap, stats = self.heap, self.stats
        while heap and (until is None or heap[0][0] <= until):
            event = heapq.heappop(heap)[2]
            ts = event["ts_ms"]
            stats.events += 1
            if stats.first_ts_ms is None or ts < stats.first_ts_ms:
                stats.first_ts_ms = ts
            yield event
            if ts > self.watermark:
                self.watermark = ts
                stats.last_event_ts_ms = ts
                if ts >= self.next_tick:
                    if self.next_tick:
                        stats.ticks += 1
                        yield Tick(ts)
                    self.next_tick = (ts // TICK_INTERVAL_MS + 1) * TICK_INTERVAL_MS

    def _push(self, publish_ms: int, event: dict[str, Any]) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (publish_ms, self.seq, event))

    # -- planning --------------------------------------------------------------------

    def _call(self, n: int, t0: int) -> None:
        rng = self.rng
        call_id = f"{self.seed}-{n:08d}"
        owner = rng.randrange(self.switches)
        plan = self._plan(rng.choices(self.kinds, self.kind_weights)[0], t0)
        self.stats.calls += 1
        self.stats.kinds[plan.kind] += 1
        events = self._events(call_id, f"sw{owner + 1}", plan, t0)
        events = self._drop_missing(events, plan)
        self._second_hangup(events, owner)
        publish = [e["ts_ms"] for e in events]
        self._reorder(events, publish, owner)
        for event, at in zip(events, publish, strict=True):
            self._push(at, event)
            self._duplicate(event, at)

    def _plan(self, kind: str, t0: int) -> _Plan:
        rng, cat = self.rng, self.catalog
        account = rng.choice(cat.accounts)
        number = self._rated_number(account)
        answered, source, sip, q850 = True, rng.choice(("CALLER", "CALLEE")), 200, 16
        plan = _Plan(kind, account, number, answered, source, sip, q850)
        if kind in UNANSWERED:
            plan.answered = False
            plan.source, plan.sip, plan.q850 = UNANSWERED[kind]
        elif kind == "server_hangup":
            plan.reason = rng.choice(self.reasons)
            plan.answered, plan.sip, plan.q850 = SERVER_OUTCOMES[plan.reason]
            plan.source = "SERVER"
            plan.kind = f"server_hangup.{plan.reason}"
        elif kind == "illegal":
            plan.illegal = rng.choice(self.illegal_reasons)
            plan.answered, plan.source, plan.sip, plan.q850 = False, "SERVER", 403, 21
            plan.reason = "POLICY"
            plan.kind = f"illegal.{plan.illegal}"
        elif kind == "free":
            plan.number = _from_pattern(rng, rng.choice(cat.free.patterns))
        elif kind == "no_cdr":
            plan.number = _from_pattern(rng, rng.choice(cat.no_cdr.patterns))
        elif kind == "unknown_destination":
            unknown = self._unrated_number(t0)
            if unknown is None:
                plan.kind = "answered"
            else:
                plan.number = unknown
                plan.answered = rng.random() < 0.7
        elif kind == "unknown_account":
            plan.account = rng.choice(cat.unknown_accounts)
        return plan

    def _rated_number(self, account: str) -> str:
        """A number under one of the account's deck prefixes, not free and not no-CDR."""
        rng, cat = self.rng, self.catalog
        choices = cat.prefixes[account] or FOREIGN_CODES
        number = ""
        for _ in range(20):
            number = _fill(rng, rng.choice(choices))
            if not cat.free.matches(number) and not cat.no_cdr.matches(number):
                break
        return number

    def _unrated_number(self, ts_ms: int) -> str | None:
        """A number no deck has a row for (and no pattern matches), or None if none found."""
        rng, cat = self.rng, self.catalog
        for _ in range(50):
            number = _fill(rng, rng.choice(FOREIGN_CODES))
            if cat.free.matches(number) or cat.no_cdr.matches(number):
                continue
            if all(deck.lookup(number, ts_ms) is None for deck in cat.decks):
                return number
        return None

    # -- the events of a call ----------------------------------------------------------

    def _offsets(self, plan: _Plan) -> tuple[int | None, int | None, int]:
        """(ringing, answer, hangup) offsets from SETUP in ms; at most budget_ms in all."""
        rng, budget = self.rng, self.budget_ms
        base = plan.kind.split(".")[0]
        pdd = min(max(150, int(rng.lognormvariate(math.log(1800), 0.5))), 12_000)
        if plan.answered:
            ring = pdd if rng.random() < 0.9 else None
            answer = pdd + rng.randint(1500, 18_000)
            if plan.reason == "MAX_DURATION":
                hangup = budget
            else:
                hold = int(rng.lognormvariate(math.log(HOLD_MEDIAN_MS), HOLD_SIGMA))
                hangup = answer + hold
        elif base in ("no_answer", "cancelled"):
            ring, answer = pdd, None
            low, high = (20_000, 60_000) if base == "no_answer" else (1000, 25_000)
            hangup = pdd + rng.randint(low, high)
        elif base == "busy" and rng.random() < 0.3:
            ring, answer = pdd, None
            hangup = pdd + rng.randint(500, 3000)
        else:  # busy, rejected, illegal, unanswered server hangups: quick
            ring, answer = None, None
            hangup = rng.randint(20, 500) if base == "illegal" else rng.randint(100, 3000)
        hangup = min(hangup, budget)
        answer = min(answer, hangup) if answer is not None else None
        ring = min(ring, answer if answer is not None else hangup) if ring is not None else None
        return ring, answer, hangup

    def _events(self, call_id: str, switch: str, plan: _Plan, t0: int) -> list[dict[str, Any]]:
        rng, cat = self.rng, self.catalog
        ring, answer, hangup = self._offsets(plan)
        setup: dict[str, Any] = {
            "event_id": f"{call_id}-s",
            "call_id": call_id,
            "switch_id": switch,
            "event_type": "SETUP",
            "ts_ms": t0,
            "account_id": plan.account,
            "caller": "1" + _digits(rng, 10),
            "callee": plan.number,
        }
        ingress_prefix = ""
        if cat.ingress and rng.random() < 0.3:
            name, ingress_prefix = rng.choice(cat.ingress)
            setup["callee"] = ingress_prefix + plan.number
            setup["ingress_gateway"] = name
        if plan.illegal is not None or rng.random() < 0.5:
            octets = (rng.randrange(256), rng.randrange(256), rng.randrange(1, 255))
            setup["caller_ip"] = "10.{}.{}.{}".format(*octets)
        if plan.illegal is not None:
            setup["illegal_reason"] = plan.illegal
        events = [setup]
        egress: str | None = None
        ringing = None
        if ring is not None:
            ringing = self._simple(call_id, switch, "RINGING", "r", t0 + ring)
            events.append(ringing)
        if answer is not None:
            event = self._simple(call_id, switch, "ANSWER", "a", t0 + answer)
            egress, route_prefix = rng.choice(cat.egress)
            event["egress_gateway"] = egress
            if ingress_prefix or (route_prefix and rng.random() < 0.8):
                event["callee_gateway"] = route_prefix + plan.number
            events.append(event)
        elif plan.illegal is None and (ring is not None or plan.source == "CALLEE"):
            # The call reached a gateway that did not answer: name it, so failed
            # attempts count against it. Chosen from the call id, not the random
            # stream, so every other event of the traffic stays as it was.
            egress = cat.egress[zlib.crc32(call_id.encode()) % len(cat.egress)][0]
        hangup_event = self._hangup(call_id, switch, plan, t0 + hangup, "h")
        if egress is not None:
            hangup_event["egress_gateway"] = egress
            if ringing is not None:
                ringing["egress_gateway"] = egress
        events.append(hangup_event)
        return events

    @staticmethod
    def _simple(call_id: str, switch: str, kind: str, tag: str, ts: int) -> dict[str, Any]:
        return {
            "event_id": f"{call_id}-{tag}",
            "call_id": call_id,
            "switch_id": switch,
            "event_type": kind,
            "ts_ms": ts,
        }

    def _hangup(self, call_id: str, switch: str, plan: _Plan, ts: int, tag: str) -> dict[str, Any]:
        event = self._simple(call_id, switch, "HANGUP", tag, ts)
        event["answered"] = plan.answered
        event["hangup_source"] = plan.source
        if plan.sip is not None:
            event["sip_code"] = plan.sip
        if plan.q850 is not None:
            event["q850_cause"] = plan.q850
        if plan.source == "SERVER" and plan.reason is not None:
            event["server_reason"] = plan.reason
        return event

    # -- faults ------------------------------------------------------------------------

    def _other_switch(self, owner: int) -> str:
        if self.switches == 1:
            return "sw1"
        return f"sw{(owner + self.rng.randrange(1, self.switches)) % self.switches + 1}"

    def _drop_missing(self, events: list[dict[str, Any]], plan: _Plan) -> list[dict[str, Any]]:
        f = self.faults
        r = self.rng.random()
        if r < f.missing_setup:
            drop, kind = "SETUP", "missing_setup"
        elif r < f.missing_setup + f.missing_hangup:
            drop, kind = "HANGUP", "missing_hangup"
        elif r < f.missing_setup + f.missing_hangup + f.missing_answer and any(
            e["event_type"] == "ANSWER" for e in events
        ):
            drop, kind = "ANSWER", "missing_answer"
        else:
            return events
        self.stats.faults[kind] += 1
        return [e for e in events if e["event_type"] != drop]

    def _second_hangup(self, events: list[dict[str, Any]], owner: int) -> None:
        """The other leg's HANGUP: same outcome, a later time, another id and node."""
        if not self.faults.second_hangup or events[-1]["event_type"] != "HANGUP":
            return
        if self.rng.random() >= self.faults.second_hangup:
            return
        first = events[-1]
        second = dict(first)
        second["event_id"] = first["event_id"] + "2"
        second["switch_id"] = self._other_switch(owner)
        second["ts_ms"] = first["ts_ms"] + self.rng.randint(5, 1500)
        flip = {"CALLER": "CALLEE", "CALLEE": "CALLER"}
        second["hangup_source"] = flip.get(first["hangup_source"], first["hangup_source"])
        events.append(second)
        self.stats.faults["second_hangup"] += 1

    def _reorder(self, events: list[dict[str, Any]], publish: list[int], owner: int) -> None:
        """Delay one event past the next one(s) of its call, by less than ``window_ms``.

        The events it is overtaken by come from another node of the cluster.
        """
        if self.window_ms <= 0 or len(events) < 2 or self.rng.random() >= self.faults.reorder:
            return
        window = self.window_ms
        times = [e["ts_ms"] for e in events]
        candidates = [i for i in range(len(times) - 1) if times[i + 1] - times[i] < window]
        if not candidates:
            return
        i = self.rng.choice(candidates)
        ts = events[i]["ts_ms"]
        publish[i] = self.rng.randint(events[i + 1]["ts_ms"] + 1, ts + window)
        other = self._other_switch(owner)
        for later in events[i + 1 :]:
            if later["ts_ms"] < publish[i]:
                later["switch_id"] = other
        self.stats.faults["reorder"] += 1

    def _duplicate(self, event: dict[str, Any], publish_ms: int) -> None:
        if self.dup_max_ms <= 0 or self.rng.random() >= self.faults.dup:
            return
        self._push(publish_ms + self.rng.randint(1, self.dup_max_ms), dict(event))
        self.stats.faults["dup"] += 1


def generate(
    config: BillingConfig,
    *,
    calls: int,
    switches: int = 4,
    rate_cps: float = 50.0,
    seed: int = 1,
    start_ms: int,
    faults: FaultMix | None = None,
    stats: SimStats | None = None,
    final_tick: bool = True,
) -> Iterator[Item]:
    """Event dicts and ticks in publish order; pass ``stats`` to read what was generated."""
    if calls < 0:
        raise SimulationError(f"--calls must be >= 0, got {calls}")
    if switches < 1:
        raise SimulationError(f"--switches must be >= 1, got {switches}")
    if not rate_cps > 0 or math.isinf(rate_cps):
        raise SimulationError(f"--rate-cps must be a positive number, got {rate_cps}")
    if not 0 <= start_ms < 4_000_000_000_000:
        raise SimulationError(f"--start-ms must be epoch milliseconds, got {start_ms}")
    generator = _Generator(
        config,
        calls,
        switches,
        rate_cps,
        seed,
        start_ms,
        faults if faults is not None else FaultMix(),
        stats if stats is not None else SimStats(),
        final_tick,
    )
    return generator.run()


# -- sinks ---------------------------------------------------------------------------


def jsonl_line(item: Item) -> str:
    """One JSON Lines line: the event, or ``{"tick_ms": N}`` for a tick (the rate-file form)."""
    if isinstance(item, Tick):
        return json.dumps({"tick_ms": item.ts_ms}) + "\n"
    return json.dumps(item) + "\n"


def write_jsonl(items: Iterable[Item], path: str | Path) -> int:
    """Write items in order as JSON Lines; returns the number of lines."""
    count = 0
    try:
        with Path(path).open("w", encoding="utf-8") as handle:
            for item in items:
                handle.write(jsonl_line(item))
                count += 1
    except OSError as exc:
        raise SimulationError(f"{path}: cannot write: {exc.strerror}") from None
    return count


class _Pacer:
    """Hold the publish rate to ``pace`` calls (SETUP events) per second of real time."""

    def __init__(self, pace: float, publisher: SwitchPublisher) -> None:
        self.pace, self.publisher = pace, publisher
        self.started = time.monotonic()
        self.calls = 0

    def on_setup(self) -> None:
        self.calls += 1
        due = self.started + self.calls / self.pace
        while (wait := due - time.monotonic()) > 0.001:
            self.publisher.poll(min(wait, 0.05))  # serve delivery reports while waiting


def publish(
    items: Iterable[Item], publisher: SwitchPublisher, pace: float | None = None
) -> tuple[int, int]:
    """Publish events and ticks in order, then flush; returns (events, ticks) published.

    With ``pace`` (calls per second of real time, counted by SETUP events) it sleeps to
    hold that rate; without it, as fast as the producer takes them.
    """
    if pace is not None and not pace > 0:
        raise SimulationError(f"--pace must be a positive number of calls per second, got {pace}")
    pacer = _Pacer(pace, publisher) if pace is not None else None
    events = ticks = 0
    for item in items:
        if isinstance(item, Tick):
            publisher.publish_tick(item.ts_ms)
            ticks += 1
            continue
        if pacer is not None and item["event_type"] == "SETUP":
            pacer.on_setup()
        publisher.publish(parse_event(item))
        events += 1
    publisher.flush()
    return events, ticks
