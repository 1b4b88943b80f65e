#!/usr/bin/env bash
# The demo on a fresh machine: .venv, Kafka and ClickHouse, then `cdr-pipeline demo`.
#   deploy/local/demo.sh [demo args, e.g. --calls 20000]
# Leaves the stack running; stop it with deploy/local/stack.sh down.
set -euo pipefail
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd -- "$HERE/../.." && pwd -P)"
"$HERE/stack.sh" up
cd "$ROOT"
exec .venv/bin/cdr-pipeline demo "$@"
