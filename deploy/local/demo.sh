#!/usr/bin/env bash
# The demo on a fresh machine: .venv, Kafka and ClickHouse, then `cdr-pipeline demo`.
#   deploy/local/demo.sh [demo args, e.g. --calls 20000]
#   deploy/local/demo.sh --sip    real SIP calls (SIPp) through a Kamailio switch node;
#                                 installs Kamailio and SIPp from Debian when missing (root)
#   deploy/local/demo.sh --secure on the secured stack (deploy/local/secure.sh, started if
#                                 needed), each part under its own identity (docs/security.md)
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
secure=0
args=()
for arg in "$@"; do
    if [[ "$arg" == "--secure" ]]; then secure=1; else args+=("$arg"); fi
done
if [[ "$secure" == 1 ]]; then
    "$HERE/secure.sh" up
    cd "$ROOT"
    exec .venv/bin/cdr-pipeline demo --identities .stack/secure/identities ${args[@]+"${args[@]}"}
fi
"$HERE/stack.sh" up
cd "$ROOT"
exec .venv/bin/cdr-pipeline demo "$@"
