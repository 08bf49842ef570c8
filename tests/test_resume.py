"""Runs killed with SIGKILL (real processes) at several points of each flow resume from their finished tasks.
Each flow's run is killed at each of its kill points in turn, every start resuming the last: no start recomputes
a finished task (every checkpoint written before a kill is left untouched to the end), the run ends with exactly
the numbers of an uninterrupted run (so a run is repeatable to the bit on the CPU), and it continues the same
MLflow runs: every metric history holds each step once, none lost. (A killed endpoint training of the connect
flow is the sparsify flow's killed training: the same task.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import seed_databases

ROOT = Path(__file__).resolve().parents[1]

FLOWS = {
    "sparsify": ["--sparsity", "90", "--sparsity", "60", "--schedule", "cubic", "--stages", "2", "--geo.max-steps", "10", "--geo.distill-steps",
                 "2", "--train.epochs", "1", "--finetune.epochs", "1", "--no-finetune.equal-time", "--no-finetune.distill"],
    "continual": ["--tasks", "2", "--methods", "geodesic", "--methods", "sgd", "--methods", "ewc", "--train.epochs", "1",
                  "--geo.max-steps", "12", "--eval-every", "4", "--fisher-samples", "200", "--linear-points", "5"],
    "connect": ["--train.epochs", "1", "--bezier-train.epochs", "1", "--geo.max-steps", "15", "--max-segments", "3",
                "--eval-every", "5", "--linear-points", "5", "--geo.eta", "0.5", "--relax-epochs", "1",
                "--relax-lr", "0.001"],
}
# where to kill each flow's run, in the order the run gets there: a log line the run has printed (then 1 s later,
# inside its first task), or a checkpoint kind written by the run just started
KILL_POINTS = {
    "sparsify": [("training", "log:Beginning flow run"), ("geodesic segment", "ckpt:geodesic-*.pt"),
                 ("evaluation and baselines", "ckpt:final-*.pt")],
    "continual": [("per-task training", "ckpt:task-*.pt"), ("traversal", "ckpt:continual-geodesic-*.pt")],
    "connect": [("geodesic segment", "ckpt:connect-*.pt"), ("relaxation", "ckpt:relaxed-*.tensors.pt")],
}
IGNORED = {"wall_seconds", "polish_seconds", "machine_cpu_percent", "process_cpu_percent"}  # measured times and
# loads differ between runs, everything else must not


def _env(work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "GEODESIC_"))}
    env.update({"PYTHONPATH": str(ROOT), "GEODESIC_OUTPUT_DIR": str(work / "outputs"),
                "PREFECT_HOME": str(work / "prefect-home"), "DO_NOT_TRACK": "1",
                "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(work / "outputs" / "prefect-results"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"})
    return env


def _start(flow: str, work: Path, data_dir: str, log: Path, templates: dict | None) -> subprocess.Popen:
    """The CLI in its own process group; output to a file (a full pipe would block the run). With
    ``templates`` a fresh ``work`` starts on existing databases; without, as a user's first run does."""
    work.mkdir(parents=True, exist_ok=True)
    if templates:
        seed_databases(templates, work / "prefect-home" / "prefect.db", work / "mlflow.db")
    return subprocess.Popen([sys.executable, "-m", "flows.cli", flow, *FLOWS[flow], "--data-dir", data_dir],
                            cwd=work, env=_env(work), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=600)
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    return out


def _metrics(work: Path) -> dict:
    """{child run name: metrics} of the last completed flow run tracked in ``work``'s MLflow file."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = max((r for r in runs if r.data.tags.get("geodesic.role") == "parent" and r.info.status == "FINISHED"),
                 key=lambda r: r.info.start_time)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert children
    return {r.info.run_name: {k: v for k, v in r.data.metrics.items() if k not in IGNORED} for r in children}


def _histories(work: Path) -> dict:
    """{child run name: {metric: steps}} of the one parent run in ``work``'s MLflow file, checking that the run
    (continued after a kill) ended FINISHED with every child FINISHED and no step logged twice."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("geodesic.role") == "parent"]
    assert [p.info.status for p in parents] == ["FINISHED"]  # the killed run's parent, continued
    out = {}
    for r in runs:
        if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id:
            assert r.info.status == "FINISHED", r.info.run_name
            out[r.info.run_name] = {}
            for key in r.data.metrics:
                steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
                assert len(steps) == len(set(steps)), f"{r.info.run_name}: {key} logged twice at a step"
                out[r.info.run_name][key] = sorted(steps)
    return out


def _kill_at(proc: subprocess.Popen, log: Path, ckpts: Path, point: str, when: str) -> None:
    """SIGKILL the run's process group once it reaches ``when`` (a checkpoint must be one it wrote itself)."""
    kind, what = when.split(":", 1)
    old = set(ckpts.glob(what)) if ckpts.exists() else set()
    deadline = time.monotonic() + 300
    try:
        while not (what in log.read_text() if kind == "log" else set(ckpts.glob(what)) - old):
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before the kill point ({point}):\n{log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, f"kill point {point} not reached"
            time.sleep(0.05)
        if kind == "log":
            time.sleep(1.0)  # inside the first task
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group (its own session) unless it has ended."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("flow", list(KILL_POINTS))
def test_a_run_killed_at_each_point_resumes_from_its_finished_tasks(request, tmp_path, data_dir, db_templates,
                                                                    flow):
    # the uninterrupted run, in its own folder, runs beside the killed ones (the two share nothing but the CPU). The
    # sparsify flow's (the README's main job) starts in a fresh Prefect home and MLflow file, so a first start with
    # its migrations stays tested.
    reference = tmp_path / "reference"
    uninterrupted = _start(flow, reference, data_dir, tmp_path / "reference.log",
                           None if flow == "sparsify" else db_templates)
    request.addfinalizer(lambda: _stop(uninterrupted))  # a failed test leaves no run behind
    work, ckpts = tmp_path / "run", tmp_path / "run" / "outputs" / "checkpoints"
    def kept(finished: dict[str, int], where: str) -> dict[str, int]:
        """Every checkpoint's mtime now, after checking that none of ``finished`` was written again."""
        now = {p.name: p.stat().st_mtime_ns for p in ckpts.glob("*.pt")} if ckpts.exists() else {}
        rewritten = [n for n, t in finished.items() if now.get(n) != t]
        assert not rewritten, f"finished tasks were recomputed after a kill, {where}: {rewritten}"
        return now

    finished: dict[str, int] = {}  # checkpoint -> its mtime when a kill found it written
    for i, (point, when) in enumerate(KILL_POINTS[flow]):
        log = tmp_path / f"start-{i}.log"
        _kill_at(_start(flow, work, data_dir, log, db_templates), log, ckpts, point, when)
        now = kept(finished, f"before {point}")
        if when.startswith("ckpt:"):
            assert len(now) > len(finished), f"nothing was finished before the kill at {point}"
        finished = now
    _finish(_start(flow, work, data_dir, tmp_path / "last.log", db_templates), tmp_path / "last.log")
    kept(finished, "at the end")
    _finish(uninterrupted, tmp_path / "reference.log")
    expected, histories = _metrics(reference), _histories(reference)
    from geodesic_core.checkpoint import load_checkpoint, load_tensors

    for path in ckpts.glob("*.pt"):  # no half-written checkpoint: each one loads and matches its content hash
        (load_tensors if path.name.endswith(".tensors.pt") else load_checkpoint)(path)
    assert _metrics(work) == expected
    # the same MLflow runs continued: every metric history has each step once, none lost
    assert _histories(work) == histories
