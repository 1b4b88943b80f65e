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

# The billing core's hot modules compiled with mypyc, which comes with mypy (--dev).
# pipeline/core/__init__.py uses the build only while its STAMP matches the sources
# and the interpreter; a changed source means a rebuild here (and pure Python till then).
if [[ -x .venv/bin/mypyc ]]; then
    CORE_INFO="$(.venv/bin/python -c 'import pipeline.core as c
print(c.build_stamp()); print(c.BUILD_DIR)
print(" ".join(f"pipeline/core/{m}.py" for m in c.COMPILED_MODULES))')"
    { read -r CORE_STAMP; read -r CORE_OUT; read -r CORE_MODULES; } <<< "$CORE_INFO"
    if [[ "$(cat "$CORE_OUT/STAMP" 2>/dev/null)" != "$CORE_STAMP" ]]; then
        echo "bootstrap.sh: compiling the billing core with mypyc (about a minute)" >&2
        CORE_TMP="$(mktemp -d)"
        mkdir -p "$CORE_TMP/pipeline/core"
        cp pipeline/__init__.py pipeline/errors.py "$CORE_TMP/pipeline/"
        cp pipeline/core/*.py "$CORE_TMP/pipeline/core/"
        # shellcheck disable=SC2086  # the module list is meant to split
        if (cd "$CORE_TMP" && "$ROOT/.venv/bin/mypyc" $CORE_MODULES > build.log 2>&1); then
            rm -rf "$CORE_OUT"
            mkdir -p "$CORE_OUT/pipeline/core"
            cp "$CORE_TMP"/pipeline/core/*.so "$CORE_OUT/pipeline/core/"
            cp "$CORE_TMP"/*.so "$CORE_OUT/"
            echo "$CORE_STAMP" > "$CORE_OUT/STAMP"
            rm -rf "$CORE_TMP"
        else
            echo "bootstrap.sh: mypyc failed; the core runs as pure Python" \
                "(log: $CORE_TMP/build.log)" >&2
        fi
    fi
fi

# The Avro codec's generated module (pipeline/avro/compiled.py: the current schemas'
# encoders and decoders), compiled the same way; pipeline/avro/codec.py uses the build
# only while its STAMP matches the source it generates (schemas, generator, interpreter).
if [[ -x .venv/bin/mypyc ]]; then
    AVRO_TMP="$(mktemp -d)"
    AVRO_INFO="$(.venv/bin/python -m pipeline.avro.build "$AVRO_TMP")"
    { read -r AVRO_STAMP; read -r AVRO_OUT; read -r AVRO_MODULE; } <<< "$AVRO_INFO"
    if [[ "$(cat "$AVRO_OUT/STAMP" 2>/dev/null)" != "$AVRO_STAMP" ]]; then
        echo "bootstrap.sh: compiling the Avro codec with mypyc (about a minute)" >&2
        mkdir -p "$AVRO_TMP/pipeline/avro"
        cp pipeline/__init__.py "$AVRO_TMP/pipeline/"
        cp pipeline/avro/__init__.py pipeline/avro/errors.py "$AVRO_TMP/pipeline/avro/"
        if (cd "$AVRO_TMP" && "$ROOT/.venv/bin/mypyc" "$AVRO_MODULE.py" > build.log 2>&1); then
            rm -rf "$AVRO_OUT"
            mkdir -p "$AVRO_OUT"
            cp "$AVRO_TMP/$AVRO_MODULE".*.so "$AVRO_OUT/"
            echo "$AVRO_STAMP" > "$AVRO_OUT/STAMP"
            rm -rf "$AVRO_TMP"
        else
            echo "bootstrap.sh: mypyc failed; the Avro codec runs as Python" \
                "(log: $AVRO_TMP/build.log)" >&2
        fi
    else
        rm -rf "$AVRO_TMP"
    fi
fi
