"""Faust's internals are reached only from pipeline/worker/faust_compat.py.

What it checks, by AST scan of every `pipeline/**/*.py` but faust_compat.py: in a
module under `pipeline/worker/`, or anywhere in a module that imports faust, aiokafka
or mode (lazy imports included), no private attribute is read, written or deleted:
no `x._name` (dunders like `__class__` are fine) and no `getattr`/`setattr`/`hasattr`/
`delattr` with a constant private name. Allowed are:
- `self._name` / `cls._name` inside a class of the module that does not derive from a
  faust, aiokafka or mode class (the module's own state, e.g. Handoff._records);
- `name._name` (or `name.a._name`) where `name` was imported from another library
  than faust, aiokafka, mode or pipeline itself: `os._exit`, confluent-kafka's
  `KafkaError._SSL` (librdkafka's error codes are spelt that way).
Every worker module is held to it whether or not it imports Faust, because Faust's
objects reach them as arguments (the app, its consumer, a message).

It cannot follow values: `x = app.consumer; x.wait_first = ...` (replacing a public
method) passes. Such patches belong in faust_compat.py too, and docs/streaming.md and
the module's docstring say so; this test catches the usual way in, a private name.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.paths import ROOT

PIPELINE = ROOT / "pipeline"
WORKER = PIPELINE / "worker"
COMPAT = WORKER / "faust_compat.py"
FAMILY = frozenset({"faust", "aiokafka", "mode"})
REFLECTION = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


class _Fence(ast.NodeVisitor):
    def __init__(self, tree: ast.Module) -> None:
        self.family_names: set[str] = set()  # names bound from faust, aiokafka or mode
        self.other_names: set[str] = set()  # bound from another library (os, confluent_kafka)
        self.imports_family = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._bind(alias.name, alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    self._bind(node.module, alias.asname or alias.name)
        self.own_class: list[bool] = []  # per enclosing class: not derived from Faust's
        self.found: list[str] = []

    def _bind(self, module: str, name: str) -> None:
        top = module.split(".")[0]
        if top in FAMILY:
            self.imports_family = True
            self.family_names.add(name)
        elif top != "pipeline":
            self.other_names.add(name)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        own = not any(_root(base) in self.family_names for base in node.bases)
        self.own_class.append(own)
        self.generic_visit(node)
        self.own_class.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _private(node.attr) and not self._allowed(node.value):
            self.found.append(f"{node.lineno}: {ast.unparse(node)}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id in REFLECTION
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str) and _private(node.args[1].value)):
            self.found.append(f"{node.lineno}: {ast.unparse(node)}")
        self.generic_visit(node)

    def _allowed(self, base: ast.expr) -> bool:
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            return bool(self.own_class) and self.own_class[-1]
        root = _root(base)
        return root is not None and root in self.other_names


def violations(source: str, in_worker: bool) -> list[str]:
    """The fence's findings in one module's source ([] when it is out of scope)."""
    tree = ast.parse(source)
    fence = _Fence(tree)
    if not (in_worker or fence.imports_family):
        return []
    fence.visit(tree)
    return fence.found


def test_no_module_but_faust_compat_touches_faust_internals() -> None:
    files = sorted(PIPELINE.rglob("*.py"))
    assert len(files) > 50 and COMPAT in files
    found = []
    for path in files:
        if path == COMPAT:
            continue
        in_worker = WORKER in path.parents
        for hit in violations(path.read_text(), in_worker):
            found.append(f"{path.relative_to(ROOT)}:{hit}")
    assert found == [], "move these into pipeline/worker/faust_compat.py:\n" + "\n".join(found)


def test_faust_compat_is_where_the_internals_are() -> None:
    """The rule sees the internals faust_compat.py reaches (so it would see them
    anywhere else)."""
    hits = " ".join(violations(COMPAT.read_text(), in_worker=True))
    for name in ("_getmany", "_acked", "_unacked_messages", "_fetcher", "_fetch_max_wait_ms",
                 "_ensure_producer", "_current_event", "_stopped", "_crashed"):
        assert f".{name}" in hits, name


def test_the_rule_flags_internals_and_allows_own_state() -> None:
    faust_module = """
import os
import faust
from confluent_kafka import KafkaError
from faust.sensors import Monitor
from pipeline.worker import faust_compat

class Own:
    def __init__(self, app):
        self._app = app                          # own state: fine
        os._exit                                 # another library's module: fine
        KafkaError._SSL                          # another library's constant: fine
        self.__class__                           # dunder: fine
        self._app.consumer._read_offset          # flagged

class Lean(Monitor):
    def on(self):
        return self._tp_end_offsets              # Faust's state, via a subclass: flagged

def patch(consumer):
    consumer._add_gap = None                     # flagged
    getattr(consumer, "_stopped")                # flagged
    getattr(consumer, "stopped")                 # public: fine
    faust.streams._current_event                 # flagged
    self._x                                      # no class: flagged
    faust_compat._close                          # the fence's own privates: flagged
"""
    found = violations(faust_module, in_worker=False)
    assert [hit.split(": ", 1)[1] for hit in found] == [
        "self._app.consumer._read_offset", "self._tp_end_offsets", "consumer._add_gap",
        "getattr(consumer, '_stopped')", "faust.streams._current_event", "self._x",
        "faust_compat._close"]


def test_worker_modules_are_held_to_it_without_importing_faust() -> None:
    source = "def seek(app):\n    return app.consumer._thread\n"
    assert violations(source, in_worker=True) == ["2: app.consumer._thread"]
    # Outside the worker, a module without Faust imports is none of this rule's business.
    assert violations(source, in_worker=False) == []
