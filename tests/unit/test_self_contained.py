"""The repository stands on its own: nothing it tracks reaches outside the clone.

A user has only the clone. A test, script, doc or default that names a folder
beside it, or an absolute path of a development machine, works for its author
and fails for everyone else.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.paths import ROOT

# The team folder's name, built from pieces so that this file names it nowhere.
_TEAM = "sha" + "red"
_PATTERNS = {
    "a folder beside the clone": re.escape("../" + _TEAM),
    "the team's folder": rf"\b{_TEAM}/(spec|examples|notes|hooks)\b",
    "a development machine's absolute path": r"(?<![\w.])/(work|root|home)/[\w.-]+",
}


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [name for name in out.decode().split("\0") if name]


def test_no_tracked_file_reaches_outside_the_clone() -> None:
    found = []
    for name in _tracked():
        path = ROOT / name
        if not path.is_file() or path.suffix in {".png", ".jar", ".gz"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for what, pattern in _PATTERNS.items():
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{name}:{line}: {what}: {match.group(0)}")
    assert not found, "\n".join(found)


def test_the_worked_example_is_in_the_repository() -> None:
    example = ROOT / "examples" / "basic"
    for name in ("README.md", "config.toml", "events.jsonl", "expected.jsonl",
                 "decks/retail-usd.csv", "decks/vendor-a.csv"):
        assert (example / name).is_file(), name
