"""The core stays pure PyTorch: no orchestration or tracking import anywhere under geodesic_core/."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"prefect", "mlflow"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_prefect_or_mlflow():
    files = list((ROOT / "geodesic_core").rglob("*.py"))
    assert files
    bad = {str(f.relative_to(ROOT)): _imports(f) & FORBIDDEN for f in files if _imports(f) & FORBIDDEN}
    assert not bad, f"geodesic_core must not import prefect/mlflow: {bad}"


def test_core_does_not_import_tasks_or_flows():
    for f in (ROOT / "geodesic_core").rglob("*.py"):
        assert not _imports(f) & {"tasks", "flows"}, f"{f} imports a higher layer"


def test_checker_would_catch_a_forbidden_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import os\nfrom mlflow.tracking import MlflowClient\n")
    assert _imports(bad) & FORBIDDEN == {"mlflow"}


def _core_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (top-level and inside functions, relative or absolute)."""
    mods = {f.stem for f in package.glob("*.py")}
    graph = {}
    for f in package.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
                elif node.level == 0 and node.module and node.module.split(".")[0] == package.name:
                    parts = node.module.split(".")
                    deps.add(parts[1] if len(parts) > 1 else "__init__")
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith(package.name + ".")}
        graph[f.stem] = (deps & mods) - {f.stem}
    return graph


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep == "__init__":
                continue
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_core_import_graph_has_no_cycle():
    """Every module of geodesic_core/ can be read bottom-up: no two modules import each other, directly or
    through others, not even inside a function."""
    graph = _core_graph(ROOT / "geodesic_core")
    assert {"config", "continual", "scenarios", "metric", "train"} <= set(graph)
    cycle = _a_cycle(graph)
    assert cycle is None, f"import cycle in geodesic_core: {' -> '.join(cycle)}"


def test_cycle_checker_would_catch_a_cycle_inside_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert _a_cycle(_core_graph(pkg)) == ["a", "b", "c", "a"]
