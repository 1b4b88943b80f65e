"""Real SIP traffic for the Kamailio switch node (deploy/kamailio), made with SIPp.

Deliberately independent of Kafka, Faust and ClickHouse: it only starts SIPp
processes and reads what SIPp itself recorded, so tests and benchmarks can
compare SIPp's view of the calls with what the pipeline made of them.
"""

from pipeline.sip.traffic import (
    CallFacts,
    CallSpec,
    Gateway,
    LoadResult,
    RunResult,
    UacRun,
    run_calls,
    run_load,
    start_calls,
    start_gateway,
)

__all__ = [
    "CallFacts",
    "CallSpec",
    "Gateway",
    "LoadResult",
    "RunResult",
    "UacRun",
    "run_calls",
    "run_load",
    "start_calls",
    "start_gateway",
]
