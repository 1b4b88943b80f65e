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
HASH="$(sha256sum pyproject.toml | cut -d' ' -f1)"
HAVE="$(cat "$STAMP" 2>/dev/null || true)"
# An install with the dev tools also serves a plain request (stack.sh after test.sh).
if [[ "$HAVE" != "$HASH$EXTRAS" && "$HAVE" != "$HASH[dev]" ]]; then
    echo "bootstrap.sh: installing cdr-pipeline$EXTRAS into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    # setuptools says, for every editable install, to beware of a folder named like
    # the package in the working directory: that folder is the package itself here.
    .venv/bin/python -m pip install -q -e ".$EXTRAS" 2> >(grep -v -e '^ *$' \
        -e 'BuildBackendWarning: Editable installation' -e '^ *!!$' -e '^ *\*\*\*\*' \
        -e 'Please be careful with folders' -e 'name as your package as they may' \
        -e 'with strategy, WheelFile' >&2)
    echo "$HASH$EXTRAS" > "$STAMP"
fi
