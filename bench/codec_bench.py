"""Avro codec benchmark: fastavro vs the schema-compiled codec (not a test).

    .venv/bin/python bench/codec_bench.py [--calls 5000] [--rounds 15]

Realistic records: the switch simulator's traffic (deploy/demo/demo.toml), its events
encoded as the publisher does, rated by the billing core into RatedCdrs as the worker
does. Per record, in microseconds, for what the worker and sink do per message:

  decode CallEvent   codec.decode_event_dict
  encode RatedCdr    codec.encode_cdr
  decode RatedCdr    codec.decode_cdr_record
  encode CallEvent   codec.encode_event_dict (the publisher)

"fastavro" is the codec as it was before the compiled path (codec.fastavro_encode and
fastavro_decode: BytesIO plus fastavro.schemaless_writer / schemaless_reader, same
header and checks); "compiled" is pipeline.avro.codec now: its generated module as
mypyc built it (bootstrap.sh --dev), or with CDR_PURE_AVRO=1 the same source as Python
(the header line says which). Each round times every pair back
to back over all records; the best round of each is printed, so other load on the
machine affects both alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from pipeline.avro import codec  # noqa: E402
from pipeline.core.cdr import RatedCdr  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.core.correlator import Correlator  # noqa: E402
from pipeline.core.events import FIELD_NAMES, parse_event  # noqa: E402
from pipeline.switch.simulator import Tick, generate  # noqa: E402

CONFIG = ROOT / "deploy" / "demo" / "demo.toml"


# -- the fastavro codec as it was -------------------------------------------------------


def fa_decode_event_dict(data: bytes) -> dict[str, Any]:
    return codec.fastavro_decode(codec.CALL_EVENT, data)


def fa_encode_cdr(cdr: RatedCdr) -> bytes:
    return codec.fastavro_encode(codec.RATED_CDR, codec.cdr_record(cdr))


def fa_decode_cdr_record(data: bytes) -> dict[str, Any]:
    return codec.fastavro_decode(codec.RATED_CDR, data)


def fa_encode_event_dict(raw: dict[str, Any]) -> bytes:
    return codec.fastavro_encode(codec.CALL_EVENT, {name: raw.get(name) for name in FIELD_NAMES})


# -- records --------------------------------------------------------------------------


def build(calls: int) -> tuple[list[dict[str, Any]], list[bytes], list[RatedCdr], list[bytes]]:
    config = load_config(CONFIG)
    raw = [i for i in generate(config, calls=calls, switches=4, rate_cps=200, seed=5,
                               start_ms=1_764_000_000_000) if not isinstance(i, Tick)]
    events = [fa_encode_event_dict(r) for r in raw]
    correlator = Correlator(config)
    cdrs: list[RatedCdr] = []
    for data in events:
        cdrs.extend(correlator.on_event(parse_event(fa_decode_event_dict(data))))
    cdrs.extend(correlator.finish())
    return raw, events, cdrs, [fa_encode_cdr(c) for c in cdrs]


def _per_record_us(fn: Callable[[Any], Any], items: list[Any]) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - started) / len(items) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    raw, events, cdrs, cdr_messages = build(args.calls)

    # the two codecs must agree before their speed means anything
    assert all(codec.decode_event_dict(e) == fa_decode_event_dict(e) for e in events)
    assert [codec.encode_cdr(c) for c in cdrs] == cdr_messages
    assert all(codec.decode_cdr_record(m) == fa_decode_cdr_record(m) for m in cdr_messages)
    assert [codec.encode_event_dict(r) for r in raw] == events

    cases: list[tuple[str, Callable[[Any], Any], Callable[[Any], Any], list[Any]]] = [
        ("decode CallEvent", fa_decode_event_dict, codec.decode_event_dict, events),
        ("encode RatedCdr", fa_encode_cdr, codec.encode_cdr, cdrs),
        ("decode RatedCdr", fa_decode_cdr_record, codec.decode_cdr_record, cdr_messages),
        ("encode CallEvent", fa_encode_event_dict, codec.encode_event_dict, raw),
    ]
    best = {name: [float("inf"), float("inf")] for name, *_ in cases}
    for _ in range(args.rounds):
        for name, reference, compiled, items in cases:
            best[name][0] = min(best[name][0], _per_record_us(reference, items))
            best[name][1] = min(best[name][1], _per_record_us(compiled, items))

    print(f"{len(events)} CallEvents ({sum(map(len, events)) / len(events):.0f} B avg), "
          f"{len(cdrs)} RatedCdrs ({sum(map(len, cdr_messages)) / len(cdrs):.0f} B avg); "
          f"best of {args.rounds} rounds, us/record; compiled = the generated codec "
          f"{'built by mypyc' if codec.GENERATED_BUILT else 'as Python'}")
    print(f"{'':18} {'fastavro':>9} {'compiled':>9} {'speed-up':>9}")
    for name, (reference_us, compiled_us) in best.items():
        ratio = reference_us / compiled_us
        print(f"{name:18} {reference_us:9.2f} {compiled_us:9.2f} {ratio:8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
