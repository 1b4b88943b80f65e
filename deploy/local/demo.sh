#!/usr/bin/env bash
# The demo on a fresh machine: .venv, Kafka and ClickHouse, then `cdr-pipeline demo`.
#   deploy/local/demo.sh [demo args, e.g. --calls 20000]
#   deploy/local/demo.sh --sip    real SIP calls (SIPp) through a Kamailio switch node;
#                                 installs Kamailio and SIPp from Debian when missing (root)
# Leaves the stack running; stop it with deploy/local/stack.sh down.
set -euo pipefail
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd -- "$HERE/../.." && pwd -P)"
for arg in "$@"; do
    if [[ "$arg" == "--sip" ]]; then
        "$HERE/kamailio.sh" install
        break
    fi
done
"$HERE/stack.sh" up
cd "$ROOT"
exec .venv/bin/cdr-pipeline demo "$@"
