"""The package's layering: errors at the bottom importing nothing of the kit, and no import cycle anywhere
(imports inside functions count: they tie modules together just the same)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "imgcollapse"


def import_graph() -> dict[str, set[str]]:
    """{module: the kit's modules it imports}, from the source (every import statement, at any depth)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if path.name == "__init__.py" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: up from this module's package
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + [base] * bool(base))
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_errors_import_nothing_of_the_kit():
    graph = import_graph()
    assert graph["imgcollapse.errors"] == set() and graph["imgcollapse.metric_facts"] == set()
    assert graph["imgcollapse._version"] == {"imgcollapse.metric_facts"}  # --version's ruler number, nothing else


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            assert state.get(target) != 1, " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_components_do_not_import_the_run_layer():
    """Data, models, regimes and metrics sit below config, run and chain: they never import them."""
    run_layer = {"imgcollapse.config", "imgcollapse.run", "imgcollapse.chain", "imgcollapse.resume"}
    for module, imports in import_graph().items():
        if module.startswith(("imgcollapse.data", "imgcollapse.models", "imgcollapse.metrics", "imgcollapse.regimes")):
            assert not imports & run_layer, (module, imports & run_layer)


ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"


def layer_table() -> list[tuple[str, list[str]]]:
    """(layer, the backticked paths of its row) of docs/ARCHITECTURE.md's module table, top layer first."""
    text = ARCHITECTURE.read_text()
    section = text.split("## The modules (imports point down only)")[1].split("\n## ")[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return [(cells[1].strip(), re.findall(r"`([^`]+)`", cells[2])) for cells in rows[1:]]


def layer_of(module: str, table: list[tuple[str, list[str]]]) -> int | None:
    """The row index of `module` in the table: the most specific path that names it (a file beats its folder)."""
    best: tuple[int, int] | None = None  # (specificity, row)
    for row, (_, paths) in enumerate(table):
        for path in paths:
            name = "imgcollapse" if path == "__init__.py" else \
                "imgcollapse." + path.removesuffix(".py").removesuffix("/").replace("/", ".")
            exact = module == name
            if exact or (path.endswith("/") and module.startswith(name + ".")):
                rank = (2 if exact and not path.endswith("/") else 1, row)
                best = rank if best is None or rank[0] > best[0] else best
    return None if best is None else best[1]


def test_the_architecture_table_names_every_module_and_only_real_ones():
    """docs/ARCHITECTURE.md stays true: every module of the package is in a row, every path in a row exists."""
    table = layer_table()
    assert [layer for layer, _ in table][:2] == ["package", "study"] and table[-1][0] == "bottom"
    for _, paths in table:
        for path in paths:
            assert (PACKAGE / path).exists(), f"docs/ARCHITECTURE.md names {path}, which imgcollapse/ does not have"
    unplaced = [m for m in import_graph() if layer_of(m, table) is None]
    assert not unplaced, f"modules in no row of docs/ARCHITECTURE.md's table: {unplaced}"


def test_no_import_points_up_the_layers():
    """A module imports only its own layer and the ones below (docs/ARCHITECTURE.md's table, top first)."""
    table = layer_table()
    upward = [f"{m} ({table[layer_of(m, table)][0]}) -> {t} ({table[layer_of(t, table)][0]})"
              for m, imports in import_graph().items() for t in imports if layer_of(t, table) < layer_of(m, table)]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)
