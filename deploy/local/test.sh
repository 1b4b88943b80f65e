#!/usr/bin/env bash
# The whole test suite on a fresh machine: .venv, Kafka and ClickHouse, pytest.
#   deploy/local/test.sh [pytest args]
# Starts what is not running and stops, at the end, what it started.
set -euo pipefail
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd -- "$HERE/../.." && pwd -P)"
cd "$ROOT"
"$HERE/bootstrap.sh" --dev

started=()
cleanup() {
    for svc in "${started[@]}"; do "$HERE/$svc.sh" down >/dev/null 2>&1 || true; done
    "$HERE/kafka.sh" down --cluster >/dev/null 2>&1 || true
}
trap cleanup EXIT
for svc in clickhouse kafka; do
    if ! "$HERE/$svc.sh" status >/dev/null 2>&1; then
        "$HERE/$svc.sh" up
        started+=("$svc")
    fi
done

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "test.sh: pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit $rc
