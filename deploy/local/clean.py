"""Delete what interrupted tests, benchmarks and demo runs left on the local stack.

A test or benchmark deletes its own topics and ClickHouse databases when it ends;
one that is killed leaves them behind, and hundreds of leftover topics slow the
broker down (docs/kafka.md). This deletes only names that tests, benchmarks
and demo runs make (a random or time-stamped part after a fixed start): the CDRs
the demo stored (database `cdr`), and anything else, stay. A demo run deletes
its topics when it ends, so the demo topics found here are a killed run's.
Do not run it while tests, benchmarks or the demo run.

    bash deploy/local/stack.sh clean [--dry-run] [--cluster]

--cluster cleans the clusters instead (stack.sh up --cluster): the three-broker Kafka
and the ClickHouse 2 x 2, whose leftover databases are dropped ON CLUSTER, on every
server (each must be up).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# What tests/ and bench/ name their topics and databases (uuid hex parts).
LEFTOVER_TOPIC = re.compile(
    r"^(test-"                      # tests/integration (unique_topic and others)
    r"|e2e[0-9a-f]{8}-"             # tests/e2e harness (with the worker's own topics)
    r"|crash[0-9a-f]{8}-"           # tests/integration/test_worker_crash.py
    r"|bench[0-9a-f]{6}-"           # bench/stream_bench.py
    r"|rerate-bench-events-[0-9a-f]{8}$"  # bench/rerate_bench.py
    r"|demo-[0-9]{14}-)"            # pipeline/demo/run.py (the README's first command)
)
LEFTOVER_DATABASE = re.compile(
    r"^(e2e[0-9a-f]{8}"
    r"|(cdr_test|cdr_ctest|sink_test|sink_cli)_[0-9a-f]{12}"
    r"|cbench_\w+_[0-9a-f]{6}"        # bench/cluster_bench.py
    r"|bench[0-9a-f]{6}_\w+"
    r"|rerate_bench_(raw_)?[0-9a-f]{8}(_\w+)?)$"
)


# The clusters of `stack.sh up --cluster` (kafka.sh --cluster, clickhouse.sh --cluster).
CLUSTER_BOOTSTRAP = "127.0.0.1:29092,127.0.0.1:29192,127.0.0.1:29292"
CLUSTER_CLICKHOUSE = "native://127.0.0.1:19100/default"
CLICKHOUSE_CLUSTER = "cdr_cluster"


def leftover_topics(names: list[str]) -> list[str]:
    return sorted(n for n in names if LEFTOVER_TOPIC.match(n))


def leftover_databases(names: list[str]) -> list[str]:
    return sorted(n for n in names if LEFTOVER_DATABASE.match(n))


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka.admin import AdminClient

    from pipeline.kafka.admin import delete_topics
    from pipeline.storage.url import open_backend

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:19092")
    ap.add_argument("--clickhouse", default="native://127.0.0.1:19000/default")
    ap.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    ap.add_argument("--cluster", action="store_true",
                    help="the clusters (Kafka 29092.., ClickHouse 19100.., ON CLUSTER)")
    args = ap.parse_args(argv)
    on_cluster = ""
    if args.cluster:
        args.bootstrap = CLUSTER_BOOTSTRAP
        args.clickhouse = CLUSTER_CLICKHOUSE
        on_cluster = f" ON CLUSTER {CLICKHOUSE_CLUSTER}"

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    topics = leftover_topics(list(admin.list_topics(timeout=30).topics))
    backend, _ = open_backend(args.clickhouse)
    databases = leftover_databases([str(row[0]) for row in backend.execute("SHOW DATABASES")])
    print(f"{len(topics)} leftover topics, {len(databases)} leftover databases")
    for name in topics + databases:
        print(f"  {name}")
    if args.dry_run:
        return 0
    for start in range(0, len(topics), 100):
        delete_topics(args.bootstrap, topics[start:start + 100], timeout_s=120)
    for name in databases:
        backend.execute(f"DROP DATABASE IF EXISTS {name}{on_cluster}")
    print("deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
