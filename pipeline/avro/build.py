"""The Avro codec's generated module, written out for deploy/local/bootstrap.sh to
compile with mypyc (see compiled.py).

    python -m pipeline.avro.build DIR

Writes DIR/<module>.py, the source codec.py runs (`codec.SOURCE`: the current schemas'
functions), and prints three lines: the stamp a build of that source carries, the
folder the build belongs in, and the module's name. codec.py uses the build only while
its stamp is the one its own source gives.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.avro import codec, compiled


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pipeline.avro.build DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{compiled.MODULE}.py").write_text(codec.SOURCE)
    print(compiled.source_stamp(codec.SOURCE))
    print(compiled.BUILD_DIR)
    print(compiled.MODULE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
