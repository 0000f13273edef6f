"""The package's shape, read from its source (ast): no import cycle, a cheap command line, tests of public names.

An import cycle is first sought among the imports a module runs when it is imported: those at module
level, including inside a module-level ``if``/``try``/``with`` and in class bodies, but not inside
``if TYPE_CHECKING:`` (never run). Imports inside functions run when the function is called, after
every module has loaded, so they cannot break an import; but they hide a dependency (``model`` imported
``schema`` inside ``load_model`` while ``schema`` imported ``model``), so a second test counts them
as well: no cycle either way. The model stage allows none of the package's own modules inside
functions (:func:`test_the_model_stage_imports_the_package_at_module_level_only`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "lympho_features"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules an import statement of ``module`` loads (``from . import x``: x when it is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != PACKAGE:
        return []
    return [target] + [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]


def _with_parents(target: str, importer: str) -> list[str]:
    """``target`` and the packages above it that loading it runs (not those the importer is inside: already
    loading, their ``__init__`` is what imports the importer)."""
    parts = target.split(".")
    out = []
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name in MODULES and not (importer == name or importer.startswith(name + ".")):
            out.append(name)
    return out


def _import_time_statements(body):
    """Statements run when a module is imported: module level, module-level blocks and class bodies."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            ):
                yield from _import_time_statements(node.orelse)
            else:
                yield from _import_time_statements(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            handlers = [s for h in node.handlers for s in h.body]
            yield from _import_time_statements(node.body + handlers + node.orelse + node.finalbody)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from _import_time_statements(node.body)


def import_graph(inside_functions: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules its import runs (with ``inside_functions``, also those its functions import)."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        statements = (
            [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
            if inside_functions
            else _import_time_statements(tree.body)
        )
        edges = set()
        for node in statements:
            for target in _resolve(module, node):
                edges.update(_with_parents(target, module))
        graph[module] = edges - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_imports_it_must():
    # The reader of the source finds what the model stage imports, relative and absolute, with parent packages.
    graph = import_graph()
    assert {"lympho_features.model.cellscore", "lympho_features.feature_sets"} <= graph["lympho_features.model.inputs"]
    assert (
        "lympho_features.model" in graph["lympho_features.cli"]
        or "lympho_features.feature_sets" in (graph["lympho_features.cli"])
    )
    assert "lympho_features.model" not in graph["lympho_features.model.inputs"]  # its own package: not an edge
    # the command line imports the model stage only inside its commands
    assert "lympho_features.model" not in graph["lympho_features.cli"]
    assert "lympho_features.model" in import_graph(inside_functions=True)["lympho_features.cli"]
    # and finds a cycle when there is one
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("inside_functions", [False, True], ids=["module-level", "with-function-level"])
def test_no_import_cycle_among_the_package_modules(inside_functions):
    found = cycles(import_graph(inside_functions))
    assert not found, "modules importing each other: " + "; ".join(" <-> ".join(c) for c in found)


OWN_MODULES = [m for m in MODULES if m.startswith(f"{PACKAGE}.model")] + [
    f"{PACKAGE}.folders",
    f"{PACKAGE}.feature_sets",
    f"{PACKAGE}.schema",
]


@pytest.mark.parametrize("module", OWN_MODULES)
def test_the_model_stage_imports_the_package_at_module_level_only(module):
    tree = ast.parse(MODULES[module].read_text())
    hidden = []
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        for node in ast.walk(fn):
            if isinstance(node, ast.Import | ast.ImportFrom) and _resolve(module, node):
                hidden.append(f"{fn.name}: {ast.unparse(node)}")
    assert not hidden, f"{module} imports the package inside functions: {hidden}"


def test_the_command_line_starts_without_the_learning_libraries():
    # `lympho --help` and `lympho extract` read the feature sets' names but must not pay for LightGBM/sklearn.
    code = (
        "import sys\nimport lympho_features.cli\n"
        "loaded = [m for m in ('lightgbm', 'sklearn', 'lympho_features.model') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


TESTS_OF_THE_MODEL_STAGE = ("test_model.py", "test_model_cli.py", "test_cellscore.py", "test_architecture.py")


def private_names_used(path: Path) -> list[str]:
    """``_name`` imported from, or read as an attribute of, a lympho_features module in a test file."""
    tree = ast.parse(path.read_text())
    package_aliases = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE:
            found += [f"from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
            package_aliases |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in MODULES}
        elif isinstance(node, ast.Import):
            package_aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith(PACKAGE)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in package_aliases:
                found.append(ast.unparse(node))
    return found


@pytest.mark.parametrize("name", TESTS_OF_THE_MODEL_STAGE)
def test_tests_of_the_model_stage_use_public_names_only(name):
    assert private_names_used(Path(__file__).with_name(name)) == []


def test_private_names_are_found(tmp_path):
    sample = tmp_path / "t.py"
    sample.write_text(
        "from lympho_features.model import _fold_task, predict\nfrom lympho_features import model as m\n"
        "import lympho_features.model.validation\nm._pool(1)\nlympho_features.model.validation._run_folds\n"
    )
    assert sorted(private_names_used(sample)) == [
        "from lympho_features.model import _fold_task",
        "lympho_features.model.validation._run_folds",
        "m._pool",
    ]
