#!/usr/bin/env bash
# The local stack: Apache Kafka (KRaft, jars from Maven Central) and ClickHouse (Debian).
#   deploy/local/stack.sh up|down|status|reset|clean
# Ports: Kafka 127.0.0.1:19092 (controller 19093); ClickHouse native 19000, HTTP 18123.
# State and logs: .stack/kafka/, .stack/clickhouse/ (ignored by git).
set -euo pipefail
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
cmd="${1:-status}"
case "$cmd" in
    up)
        "$HERE/bootstrap.sh"
        "$HERE/clickhouse.sh" up
        "$HERE/kafka.sh" up
        ;;
    down)
        rc=0
        "$HERE/kafka.sh" down || rc=$?
        "$HERE/clickhouse.sh" down || rc=$?
        exit $rc
        ;;
    status)
        rc=0
        "$HERE/kafka.sh" status || rc=$?
        "$HERE/clickhouse.sh" status || rc=$?
        exit $rc
        ;;
    reset)
        "$HERE/kafka.sh" reset
        "$HERE/clickhouse.sh" reset
        ;;
    clean)
        # Topics and databases that interrupted tests and benchmarks left; the stack
        # must be up. Keeps the demo's data (see clean.py).
        shift
        "$HERE/bootstrap.sh"
        exec "$HERE/../../.venv/bin/python" "$HERE/clean.py" "$@"
        ;;
    *) echo "usage: stack.sh up|down|status|reset|clean" >&2; exit 2 ;;
esac
