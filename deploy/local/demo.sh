#!/usr/bin/env bash
# The demo on a fresh machine: .venv, Kafka and ClickHouse, then `cdr-pipeline demo`.
#   deploy/local/demo.sh [demo args, e.g. --calls 20000]
#   deploy/local/demo.sh --sip    real SIP calls (SIPp) through a Kamailio switch node;
#                                 installs Kamailio and SIPp from Debian when missing (root)
#   deploy/local/demo.sh --secure on the secured stack (deploy/local/secure.sh, started if
#                                 needed), each part under its own identity (docs/security.md);
#                                 with --sip too: the Kamailio adapter publishes as `ingest`
#   deploy/local/demo.sh --secure --cluster   the same on the secured three-broker Kafka
# Leaves the stack running; stop it with deploy/local/stack.sh down (--secure [--cluster]).
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
cluster=()
args=()
for arg in "$@"; do
    case "$arg" in
        --secure) secure=1 ;;
        --cluster) cluster=(--cluster) ;;
        *) args+=("$arg") ;;
    esac
done
if [[ "$secure" == 1 ]]; then
    "$HERE/secure.sh" up ${cluster[@]+"${cluster[@]}"}
    identities=.stack/secure/identities${cluster[@]+-cluster}
    cd "$ROOT"
    exec .venv/bin/cdr-pipeline demo --identities "$identities" ${args[@]+"${args[@]}"}
fi
if [[ ${#cluster[@]} -gt 0 ]]; then
    echo "demo.sh: --cluster goes with --secure (the secured three-broker Kafka)" >&2
    exit 2
fi
"$HERE/stack.sh" up
cd "$ROOT"
exec .venv/bin/cdr-pipeline demo "$@"
