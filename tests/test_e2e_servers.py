"""End to end on real servers, the way a team runs the project: `prefect server` and `mlflow server` on
127.0.0.1 (SQLite backends in a temporary folder), a process work pool, the deployments of `prefect.yaml`
(with tiny default parameters), a worker, a run triggered as the UI does (`prefect deployment run` with
parameters), then a data change announced by `geodesic data-updated` and the run its event triggers.
Everything started here is stopped by process group at the end, also when the test fails."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import seed_databases

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {"model": "lenet300", "dataset": "mnist", "sparsity": [90.0], "schedule": "cubic", "stages": 1, "eval_every": 4,
        "geo": {"max_steps": 4}, "train": {"epochs": 1}, "finetune": {"epochs": 1, "equal_time": False, "distill": False}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


class Processes:
    """Started processes, each in its own process group, stopped (TERM, then KILL) in reverse order."""

    def __init__(self, logs: Path, env: dict):
        self.logs, self.env, self.procs = logs, env, []

    def start(self, name: str, *cmd: str, cwd: Path) -> tuple[subprocess.Popen, Path]:
        log = self.logs / f"{name}.log"
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=self.env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                if proc.poll() is not None:
                    break
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(wait)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass


def _cli(env: dict, *args: str, cwd: Path = ROOT, timeout: float = 300) -> str:
    out = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _flow_runs(env: dict, deployment: str) -> list:
    code = ("import asyncio, json\n"
            "from prefect.client.orchestration import get_client\n"
            "from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName\n"
            "async def main():\n"
            "    async with get_client() as c:\n"
            f"        runs = await c.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=['{deployment}'])))\n"
            "        print(json.dumps([[str(r.id), r.state.type.value, r.created_by.type if r.created_by else None] for r in runs]))\n"
            "asyncio.run(main())\n")
    return json.loads(_cli(env, sys.executable, "-c", code).strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deployment_runs_on_a_worker_and_a_data_update_triggers_a_rerun(tmp_path, data_dir, db_templates):
    prefect_port, mlflow_port = _free_port(), _free_port()
    data = tmp_path / "data" / "MNIST" / "raw"  # a copy of the data, to change it later
    shutil.copytree(Path(data_dir) / "MNIST" / "raw", data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "GEODESIC_"))}
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "prefect-results"),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "GEODESIC_DATA_DIR": str(tmp_path / "data"), "GEODESIC_OUTPUT_DIR": str(tmp_path / "outputs"),
        "GEODESIC_PROJECT_DIR": str(ROOT), "PYTHONPATH": str(ROOT),
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # the worker polls every 10 s by default: each pickup waits for it
    })
    seed_databases(db_templates, tmp_path / "prefect.db", tmp_path / "mlflow.db")
    procs = Processes(tmp_path, env)
    try:
        server, server_log = procs.start("prefect-server", str(BIN / "prefect"), "server", "start", "--host",
                                         "127.0.0.1", "--port", str(prefect_port), cwd=tmp_path)
        mlflow, mlflow_log = procs.start("mlflow-server", str(BIN / "mlflow"), "server", "--host", "127.0.0.1",
                                         "--port", str(mlflow_port), "--workers", "1", "--backend-store-uri",
                                         f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination",
                                         str(tmp_path / "mlartifacts"), cwd=tmp_path)
        _wait_healthy(f"http://127.0.0.1:{prefect_port}/api/health", server, server_log)
        _wait_healthy(f"http://127.0.0.1:{mlflow_port}/health", mlflow, mlflow_log)

        # the project's prefect.yaml with tiny default parameters for the sparsify deployment
        spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
        dep = next(d for d in spec["deployments"] if d["name"] == "sparsify")
        dep["parameters"] = {"params": TINY}
        spec["deployments"] = [dep]
        (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(spec))
        _cli(env, str(BIN / "prefect"), "work-pool", "create", dep["work_pool"]["name"], "--type", "process")
        _cli(env, str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(tmp_path / "prefect.yaml"))
        procs.start("worker", str(BIN / "prefect"), "worker", "start", "--pool", dep["work_pool"]["name"], "--type",
                    "process", cwd=tmp_path)

        # invalid parameters are rejected by the API before a run exists (the UI shows the same error)
        for bad in ({"sparsity": [100.0]}, {"sparsity": [90.0, 90.0]}, {"model": "resnet18"},
                    {"geo": {"eta": 0}}):
            out = subprocess.run([str(BIN / "prefect"), "deployment", "run", "sparsify/sparsify", "--params",
                                  json.dumps({"params": {**TINY, **bad}})], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=120)
            assert out.returncode != 0 and "validation" in (out.stdout + out.stderr).lower(), (bad, out.stdout[-2000:])
        assert _flow_runs(env, "sparsify") == []

        # a run with parameters, as the UI creates it
        _cli(env, str(BIN / "prefect"), "deployment", "run", "sparsify/sparsify", "--params",
             json.dumps({"params": {**TINY, "seed": 1}}), "--watch", "--watch-timeout", "400", timeout=450)
        runs = _flow_runs(env, "sparsify")
        assert [r[1] for r in runs] == ["COMPLETED"]

        from mlflow import MlflowClient

        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("geodesic-sparsify")
        tracked = client.search_runs([exp.experiment_id])
        parents = [r for r in tracked if r.data.tags.get("geodesic.role") == "parent"]
        assert len(parents) == 1 and parents[0].data.tags["prefect.flow_run_id"] == runs[0][0]
        assert parents[0].data.params["seed"] == "1"
        geo = [r for r in tracked if r.data.params.get("method") == "geodesic"]
        assert len(geo) == 1 and 0 < geo[0].data.metrics["test_accuracy"] <= 100
        assert geo[0].data.metrics["sparsity"] == pytest.approx(90.0, abs=1e-3)  # percent, like the target
        assert {"path_metrics.parquet", "accuracy_along_path.png", "checkpoints"} <= {
            a.path for a in client.list_artifacts(geo[0].info.run_id)}

        # the data watch: the first check records the fingerprint, an unchanged one sends nothing ...
        geodesic = [sys.executable, "-m", "flows.cli", "data-updated", "--dataset", "mnist"]
        assert "first check" in _cli(env, *geodesic)
        assert "unchanged" in _cli(env, *geodesic)
        time.sleep(5)
        assert len(_flow_runs(env, "sparsify")) == 1
        # ... a changed file sends the event, and the deployment's trigger starts a run on the new data
        images = data / "t10k-images-idx3-ubyte"
        raw = bytearray(images.read_bytes())
        raw[16 + 14 * 28 + 14] ^= 0xFF  # one pixel of the first test image
        images.write_bytes(bytes(raw))
        assert "event sent" in _cli(env, *geodesic)
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            runs = _flow_runs(env, "sparsify")
            if len(runs) == 2 and all(r[1] in ("COMPLETED", "FAILED", "CRASHED") for r in runs):
                break
            time.sleep(3)
        assert sorted(r[1] for r in runs) == ["COMPLETED", "COMPLETED"], runs
        parents = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("geodesic.role") == "parent"]
        assert len(parents) == 2
        assert len({p.data.tags["data_fingerprint"] for p in parents}) == 2  # the rerun read the new data
    finally:
        procs.stop_all()
