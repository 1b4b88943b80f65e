#!/usr/bin/env bash
# The whole test suite on a fresh machine: .venv, Kafka and ClickHouse, pytest.
#   deploy/local/test.sh [pytest args]
# Starts what is not running and stops, at the end, what it started.
set -euo pipefail
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd -- "$HERE/../.." && pwd -P)"
cd "$ROOT"
"$HERE/bootstrap.sh" --dev
# The dashboard's browser test drives Debian's headless Chromium.
if ! command -v chromium >/dev/null 2>&1; then
    echo "test.sh: installing chromium for the headless browser test" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }
fi

# The switch tests start their own Kamailio nodes and SIPp on free ports; the
# packages come from Debian.
"$HERE/kamailio.sh" install >/dev/null

started=()
cleanup() {
    for svc in "${started[@]}"; do "$HERE/$svc.sh" down >/dev/null 2>&1 || true; done
    "$HERE/kafka.sh" down --cluster >/dev/null 2>&1 || true
    "$HERE/clickhouse.sh" down --cluster >/dev/null 2>&1 || true
    "$HERE/secure.sh" down >/dev/null 2>&1 || true
    "$HERE/secure.sh" down --cluster >/dev/null 2>&1 || true
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
