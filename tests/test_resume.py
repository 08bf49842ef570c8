"""A sparsify run killed with SIGKILL in the middle resumes from its completed tasks (real processes)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["sparsify", "--sparsity", "90", "--stages", "3", "--geo.max-steps", "15", "--train.epochs", "1",
        "--finetune.epochs", "1", "--no-finetune.equal-time"]


def _run(tmp_path, data_dir, env, log):
    """Start the CLI in its own process group; output goes to a file (a full pipe would block the run)."""
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *ARGS, "--data-dir", data_dir], cwd=tmp_path, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def test_killed_run_resumes_without_recomputing_finished_tasks(tmp_path, data_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GEODESIC_OUTPUT_DIR": str(tmp_path / "outputs"),
           "PREFECT_HOME": str(tmp_path / "prefect-home")}
    for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(k, None)
    ckpts = tmp_path / "outputs" / "checkpoints"
    proc = _run(tmp_path, data_dir, env, tmp_path / "first.log")
    deadline = time.time() + 240
    try:  # kill as soon as the first geodesic segment has written its checkpoint
        while not list(ckpts.glob("geodesic-*.pt")):
            if proc.poll() is not None:
                raise AssertionError(f"run ended before it could be killed:\n{(tmp_path / 'first.log').read_text()[-3000:]}")
            assert time.time() < deadline, "no segment finished in time"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in ckpts.glob("*.pt")}
    assert any(n.startswith("trained-") for n in done_before)
    proc = _run(tmp_path, data_dir, env, tmp_path / "second.log")
    proc.wait(timeout=300)
    out = (tmp_path / "second.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in ckpts.glob("*.pt")}
    trained = [n for n in done_before if n.startswith("trained-")]
    assert after[trained[0]] == done_before[trained[0]]  # the dense network was not trained again
    assert "Cached" in out and "geodesic" in out
    assert len([n for n in after if n.startswith("geodesic-")]) == 3
    assert any(n.startswith("final-") for n in after)
