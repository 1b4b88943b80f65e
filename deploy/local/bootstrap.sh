#!/usr/bin/env bash
# Create .venv at the repo root with the package and its dependencies (idempotent).
#   deploy/local/bootstrap.sh [--dev]     --dev adds the test and lint tools
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)"
cd "$ROOT"
EXTRAS=""
[[ "${1:-}" == "--dev" ]] && EXTRAS="[dev]"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || { echo "bootstrap.sh: Python 3.11 or newer is needed ($PY is $("$PY" -V 2>&1))" >&2; exit 1; }
if [[ ! -x .venv/bin/python ]]; then
    echo "bootstrap.sh: creating .venv" >&2
    "$PY" -m venv .venv
fi
STAMP=".venv/.cdr-installed"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)$EXTRAS"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
    echo "bootstrap.sh: installing cdr-pipeline$EXTRAS into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".$EXTRAS"
    echo "$WANT" > "$STAMP"
fi
