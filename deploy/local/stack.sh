#!/usr/bin/env bash
# The local stack: Apache Kafka (KRaft, jars from Maven Central) and ClickHouse (Debian).
#   deploy/local/stack.sh up|down|status|reset|clean
# Ports: Kafka 127.0.0.1:19092 (controller 19093); ClickHouse native 19000, HTTP 18123.
# State and logs: .stack/kafka/, .stack/clickhouse/ (ignored by git).
#   deploy/local/stack.sh up|down|status|reset --secure
# The secured stack instead (deploy/local/secure.sh, docs/security.md): Kafka SASL_SSL
# 39092 / mTLS 39094 with ACLs, ClickHouse TLS 39440 with a user per component.
#   deploy/local/stack.sh up|down|status|reset --secure --cluster
# The secured three-broker Kafka cluster (SASL_SSL 49092,49192,49292, mTLS 49094,49194,
# 49294) with the same principals and ACLs, and the same secured ClickHouse.
#   deploy/local/stack.sh up|down|status|reset|clean --cluster
# The clusters instead: Kafka 3 brokers (127.0.0.1:29092,29192,29292) and ClickHouse 2
# shards x 2 replicas (native 19100-19103, cluster cdr_cluster) with ZooKeeper (12181);
# state in .stack/kafka/cluster/, .stack/clickhouse-cluster/, .stack/zookeeper/.
set -euo pipefail
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
cmd="${1:-status}"
secure=() cluster=()
for arg in "$@"; do
    case "$arg" in --secure) secure=(--secure) ;; --cluster) cluster=(--cluster) ;; esac
done
if [[ ${#secure[@]} -gt 0 ]]; then
    case "$cmd" in
        up|down|status|reset) exec "$HERE/secure.sh" "$cmd" ${cluster[@]+"${cluster[@]}"} ;;
        *) echo "stack.sh: --secure goes with up, down, status or reset" >&2; exit 2 ;;
    esac
fi
for arg in "$@"; do
    if [[ "$arg" == "--cluster" ]]; then
        rc=0
        case "$cmd" in
            up)
                "$HERE/bootstrap.sh"
                "$HERE/clickhouse.sh" up --cluster
                "$HERE/kafka.sh" up --cluster ;;
            down|status)
                "$HERE/kafka.sh" "$cmd" --cluster || rc=$?
                "$HERE/clickhouse.sh" "$cmd" --cluster || rc=$? ;;
            reset)
                "$HERE/kafka.sh" reset --cluster
                "$HERE/clickhouse.sh" reset --cluster ;;
            clean)
                "$HERE/bootstrap.sh"
                exec "$HERE/../../.venv/bin/python" "$HERE/clean.py" "${@:2}" ;;
            *) echo "stack.sh: --cluster goes with up, down, status, reset or clean" >&2; exit 2 ;;
        esac
        exit $rc
    fi
done
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
