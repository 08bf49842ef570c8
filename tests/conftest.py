import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

warnings.filterwarnings("ignore", category=FutureWarning)

ROOT = Path(__file__).resolve().parents[1]
# the README's test command gives a data root relative to where pytest starts; tests change directory
if os.environ.get("GEODESIC_DATA_DIR"):
    os.environ["GEODESIC_DATA_DIR"] = str(Path(os.environ["GEODESIC_DATA_DIR"]).resolve())


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The data root CI points at (GEODESIC_DATA_DIR), else the shared copy beside the project."""
    d = str(Path(os.environ.get("GEODESIC_DATA_DIR") or ROOT.parent / "shared" / "data").resolve())
    if not (Path(d) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"MNIST not found under {d}: set GEODESIC_DATA_DIR to the shared data folder")
    return d


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def tiny_cnn_bn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(3 * 2 * 2, 4))
    with torch.no_grad():  # non-trivial batch-norm statistics and affine parameters
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.normal_()
        m[1].bias.normal_()
    return m


@pytest.fixture(params=["mlp", "cnn_bn"])
def tiny(request):
    """(model, inputs) pairs small enough for explicit Jacobians."""
    gen = torch.Generator().manual_seed(1)
    if request.param == "mlp":
        return tiny_mlp(), torch.randn(7, 6, generator=gen)
    return tiny_cnn_bn(), torch.randn(5, 2, 4, 4, generator=gen)


@pytest.fixture(scope="session")
def harness():
    """One Prefect test server for every in-process flow test of the session (starting one costs 14-16 s).
    Each test's results and outputs live in its own ``workdir``, so caches never cross tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def db_templates(tmp_path_factory) -> dict[str, Path]:
    """A migrated Prefect database and an initialised MLflow database, made once per session. A test that
    starts the CLI or a server in a fresh folder copies them there (`seed_databases`) instead of paying the
    migrations again in every process (~10 s for Prefect, ~3 s for MLflow on 2 cores): the run then starts
    the way a user's second run does, on databases that exist; what it does with them is unchanged."""
    root = tmp_path_factory.mktemp("db-templates")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update({"PREFECT_HOME": str(root / "prefect-home"), "DO_NOT_TRACK": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"})
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "prefect"), "server", "database", "upgrade", "-y"], env=env, check=True,
                   capture_output=True, timeout=300)
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{root / 'mlflow.db'}").search_experiments()  # creates the tables
    out = {"prefect": root / "prefect-home" / "prefect.db", "mlflow": root / "mlflow.db"}
    assert all(p.is_file() for p in out.values()), out
    return out


def seed_databases(templates: dict[str, Path], prefect_db: Path, mlflow_db: Path) -> None:
    """Copy the session's database templates to where a fresh run would create them (nothing is replaced)."""
    for src, dst in ((templates["prefect"], prefect_db), (templates["mlflow"], mlflow_db)):
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory: outputs, MLflow SQLite file and Prefect results all under ``tmp_path``."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEODESIC_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "results"}):
        yield tmp_path
