"""Garbage-collector settings for the long-running and bulk commands.

The billing core allocates many small, acyclic objects (events, states, CDRs);
CPython's default gen-0 threshold (700) makes the cyclic collector rescan the
live call states thousands of times a second, a quarter of the core's time in
bench/core_bench.py. A larger threshold keeps collection, less often.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 100_000


def tune_gc() -> None:
    """Call once in an entry point, after configuration is loaded."""
    gc.collect()
    gc.freeze()  # configuration and decks: never garbage, never rescanned
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, max(gen1, 50), max(gen2, 100))
