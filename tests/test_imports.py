"""The house's layers (docs/design.md, "The map of the house"): no import cycle, no upward import,
every module in a layer, none over 400 lines.

Every `import` and `from ... import` of a qtool module counts, at module level or inside a
function (a late import still ties the two modules together). A module may import from its
own package and from any layer below its own; not from a layer above, nor from another package
of its own layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qtool"
DESIGN = ROOT / "docs" / "design.md"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the qtool package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _target(name: str, known: dict[str, Path]) -> str:
    while name not in known and "." in name:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> dict[str, set[str]]:
    """Module -> the qtool modules it imports (anywhere in its text)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {_target(alias.name, known) for alias in node.names if alias.name.split(".")[0] == "qtool"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "qtool":
                for alias in node.names:  # `from qtool.files import strict_json` imports a module
                    full = f"{node.module}.{alias.name}"
                    edges.add(full if full in known else _target(node.module, known))
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                raise AssertionError(f"{name}: relative import (write qtool.… in full)")
        graph[name] = edges - {name}
    return graph


def layers() -> list[list[str]]:
    """The layers of the map in docs/design.md, top first: each a list of module prefixes."""
    text = DESIGN.read_text()
    block = re.search(r"## The map of the house\n.*?```text\n(.*?)```", text, re.S)
    assert block, "docs/design.md has no map block"
    found = []
    for line in block.group(1).splitlines():
        if not line.strip() or line.startswith(" "):
            continue  # a description running on
        names = re.split(r"\s{2,}", line.strip())[0].split()
        prefixes = []
        for entry in names:
            entry = entry.removesuffix("/").removesuffix(".py")
            prefixes.append("qtool" if entry == "qtool/__init__" else f"qtool.{entry}")
        found.append(prefixes)
    return found


def layer_of(module: str, map_: list[list[str]]) -> tuple[int, str]:
    """(layer index, the package or module of the map that holds `module`)."""
    if module in ("qtool", "qtool.__main__"):
        return 0, "qtool"
    best = None
    for index, prefixes in enumerate(map_):
        for prefix in prefixes:
            if prefix != "qtool" and (module == prefix or module.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    assert best is not None, f"{module} is in no layer of docs/design.md's map"
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_map_names_every_package_once():
    map_ = layers()
    names = [prefix for prefixes in map_ for prefix in prefixes]
    assert len(names) == len(set(names)), names
    assert {"qtool.cli", "qtool.recipe", "qtool.commands", "qtool.quant", "qtool.errors"} <= set(names)
    for prefix in names:
        relative = Path(*prefix.split(".")[1:]) if prefix != "qtool" else Path("__init__.py")
        assert (PACKAGE / relative).is_dir() or (PACKAGE / relative).with_suffix(".py").is_file(), prefix


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_upward_import():
    map_ = layers()
    upward = []
    for module, imported in import_graph().items():
        rank, home = layer_of(module, map_)
        for other in imported:
            other_rank, other_home = layer_of(other, map_)
            if other_home == home or (other_home == "qtool" and other == "qtool" and home == "qtool"):
                continue
            if other_rank <= rank:
                upward.append(f"{module} ({home}) imports {other} ({other_home})")
    assert upward == []


def test_no_module_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_can_fail():
    """The walker sees a late import, and the cycle finder and layer rule catch what they should."""
    graph = import_graph()
    assert "qtool.ir.external_data" in graph["qtool.commands.calibrate"]  # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    map_ = layers()
    assert layer_of("qtool.cli.main", map_)[0] < layer_of("qtool.commands.registry", map_)[0] \
        < layer_of("qtool.quant.encoding", map_)[0] < layer_of("qtool.errors", map_)[0]
