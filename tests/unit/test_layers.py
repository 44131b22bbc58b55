"""The import structure: no cycles, every import points down the README's layer table.

The layers are read from the README's layout table (its ``layer`` column), so the documented
house and the checked one cannot drift apart. Imports are found with ``ast`` (every ``import``
and ``from … import`` anywhere in a module, including inside functions and ``TYPE_CHECKING``
blocks): a first-party import hidden in a function to dodge a cycle is refused too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "p1_reader", "consent")


def layer_table() -> list[tuple[str, int]]:
    """``(path, rank)`` rows of the README's layout table that name a layer."""
    rows = []
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*`([^`]+)`\s*\|\s*(\d+)\s*\|", line)
        if m:
            rows.append((m.group(1), int(m.group(2))))
    return rows


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int, bool]]:
    """``(imported first-party module, line, inside a function)`` for each import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = resolve(alias.name)
                    if target:
                        yield target, child.lineno, in_function
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    target = resolve(f"{base}.{alias.name}") or resolve(base)
                    if target:
                        yield target, child.lineno, in_function
            yield from visit(child, nested)

    def resolve(dotted: str) -> str | None:
        # the longest first-party module the dotted name starts with
        parts = dotted.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in known:
                return candidate
            parts.pop()
        return None

    yield from visit(tree, False)


def rank_of(name: str, path: Path, table: list[tuple[str, int]]) -> tuple[str, int]:
    """The most specific table row holding ``path``: (its path, its rank)."""
    rel = path.relative_to(REPO).as_posix()
    best: tuple[str, int] | None = None
    for row_path, rank in table:
        hit = rel == row_path or (row_path.endswith("/") and rel.startswith(row_path))
        if hit and (best is None or len(row_path) > len(best[0])):
            best = (row_path, rank)
    assert best is not None, f"{rel} is in no row of the README's layout table"
    return best


#: first-party imports that stay inside a function, each for a reason other than a cycle
LAZY_ON_PURPOSE: dict[tuple[str, str], str] = {
    # pyserial loads only when a port is opened: the reader module is imported by the CLI for
    # every subcommand, and the pure ones (decode, forward --input) must run without it
    ("p1_reader.reader", "p1_reader.serial_port"): "pyserial only when a port opens",
    # likewise the network sources: asyncio sockets and aiohttp only when such a source opens
    ("p1_reader.reader", "p1_reader.tcp_stream"): "a socket:// source only when one opens",
    ("p1_reader.reader", "p1_reader.homewizard"): "aiohttp only when an http:// meter opens",
}

GRAPH_CACHE: dict[str, list[tuple[str, int, bool]]] = {}


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    if not GRAPH_CACHE:
        known = modules()
        for name, path in known.items():
            GRAPH_CACHE[name] = [
                edge for edge in imports_of(name, path, known) if edge[0] != name
            ]
    return GRAPH_CACHE


def test_the_readme_documents_layers_for_every_package() -> None:
    table = layer_table()
    assert len(table) >= 8, table
    known = modules()
    for name, path in known.items():
        rank_of(name, path, table)  # raises for a module no row covers


def test_no_import_cycles() -> None:
    edges = {name: {target for target, _, _ in targets} for name, targets in graph().items()}
    # a package's __init__ is its own module: importing gateway.x.y imports gateway.x first, but
    # a cycle only counts when modules import each other by name
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_imports_point_down_the_layers() -> None:
    table = layer_table()
    known = modules()
    wrong = []
    for name, targets in graph().items():
        row, rank = rank_of(name, known[name], table)
        for target, line, _ in targets:
            target_row, target_rank = rank_of(target, known[target], table)
            if target_row == row or target_rank < rank:
                continue
            wrong.append(
                f"{known[name].relative_to(REPO)}:{line} imports {target}"
                f" ({target_row}, layer {target_rank} ≥ {row}, layer {rank})"
            )
    assert wrong == [], "imports against the layer order:\n" + "\n".join(wrong)


def test_no_first_party_imports_inside_functions() -> None:
    known = modules()
    hidden = [
        f"{known[name].relative_to(REPO)}:{line} imports {target} inside a function"
        for name, targets in graph().items()
        for target, line, in_function in targets
        if in_function and (name, target) not in LAZY_ON_PURPOSE
    ]
    assert hidden == [], "\n".join(hidden)


@pytest.mark.parametrize(
    ("source", "target", "expect"),
    [
        ("gateway/storage/db.py", "gateway/api/app.py", False),
        ("gateway/api/app.py", "gateway/storage/db.py", True),
        ("consent/model.py", "gateway/errors.py", False),
        ("gateway/ingest/pipeline.py", "p1_reader/parser.py", True),
        ("p1_reader/parser.py", "consent/model.py", False),
    ],
)
def test_the_layer_rule_itself(source: str, target: str, expect: bool) -> None:
    # the rule the test above applies, on known pairs: so the check cannot pass by being empty
    table = layer_table()
    row, rank = rank_of("", REPO / source, table)
    target_row, target_rank = rank_of("", REPO / target, table)
    assert (target_row == row or target_rank < rank) is expect


def test_no_imports_by_name_at_run_time() -> None:
    # importlib look-ups hide an edge from the checks above (and once held a cycle together)
    calls = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("import_module", "find_spec")
                and isinstance(node.value, ast.Name | ast.Attribute)
            ):
                calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert calls == [], calls
