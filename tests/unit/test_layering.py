"""The house's floors: no import cycle, and no import that runs up.

Each package of `pipeline/` is one room with one job, on a floor. A module may import
from its own package or from a package on a lower floor, never from one on its own
floor or above: the billing core knows nothing of Kafka or ClickHouse, the adapters
nothing of the drivers that use them, and a reader (dashboard) nothing of the demo.
Imports inside `if TYPE_CHECKING:` are annotations only and do not count; every other
import does, also one inside a function (a lazy import is still a dependency).
Across all modules (not only packages) there is no import cycle either.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.paths import ROOT

PIPELINE = ROOT / "pipeline"

# Lower number: lower floor. A package not listed here fails the test until it is
# given a floor (a new room has to be placed on purpose).
FLOORS: dict[str, int] = {
    "errors": 0,  # the exception hierarchy every floor raises
    "core": 1,  # the billing rules, pure
    "runtime": 1,  # settings, logging, GC tuning, HTTP token
    "avro": 2,  # the wire format
    "kafka": 2,  # Kafka adapters (clients, admin, dead letters)
    "storage": 2,  # ClickHouse adapters and schema
    "offline": 3,  # rate-file
    "switch": 3,  # the simulator and the switch publisher
    "sip": 3,  # a real SIP switch node (Kamailio) and SIPp traffic
    "worker": 3,  # the streaming correlator
    "sink": 3,  # Kafka to ClickHouse
    "rerate": 3,  # re-rating with an audit trail
    "ingest": 4,  # ways in: a switch's feed, HTTP, files, VOS3000 history (uses switch)
    "dashboard": 4,  # readers: web dashboard and report
    "demo": 5,  # drives every room above
    "commands": 6,  # the list of subcommands
    "cli": 7,  # the entry point
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PIPELINE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) for every runtime import in `tree`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:  # `from pipeline.x import module`
                yield node.lineno, f"{node.module}.{alias.name}"
        stack.extend(ast.iter_child_nodes(node))


def _graph() -> dict[str, set[tuple[str, int]]]:
    modules = _modules()
    graph: dict[str, set[tuple[str, int]]] = {name: set() for name in modules}
    for name, path in modules.items():
        for line, target in _imports(ast.parse(path.read_text(), str(path))):
            if target in modules and target not in (name, "pipeline"):
                graph[name].add((target, line))
    return graph


def _room(module: str) -> str:
    return module.split(".")[1]


def test_every_room_has_a_floor() -> None:
    rooms = {_room(m) for m in _modules() if m != "pipeline"}
    assert rooms - set(FLOORS) == set(), "place the new package on a floor in FLOORS"
    assert set(FLOORS) - rooms == set(), "FLOORS names a package that no longer exists"


def test_no_import_runs_up_or_sideways() -> None:
    bad = []
    for module, targets in _graph().items():
        if module == "pipeline":
            continue
        for target, line in targets:
            src, dst = _room(module), _room(target)
            if src != dst and FLOORS[dst] >= FLOORS[src]:
                bad.append(f"{module}:{line} imports {target} "
                           f"({src} is on floor {FLOORS[src]}, {dst} on {FLOORS[dst]})")
    assert bad == [], "\n".join(sorted(bad))


def test_no_import_cycle() -> None:
    graph = {m: {t for t, _ in targets} for m, targets in _graph().items()}
    cycles = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "\n".join(cycles)


def test_the_checks_see_a_lazy_import() -> None:
    """The scan counts an import inside a function and skips a TYPE_CHECKING one."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a.b\n"
                     "def f():\n    from c.d import e\n")
    found = {module for _, module in _imports(tree)}
    assert "c.d" in found and "a.b" not in found
