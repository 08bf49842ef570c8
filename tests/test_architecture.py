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
