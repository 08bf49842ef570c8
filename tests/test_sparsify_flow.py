"""The sparsify flow end to end on a tiny configuration, in a Prefect test harness with a local MLflow."""

import pytest

from flows.cli import main
from geodesic_core import build_model, save_checkpoint

TINY = ["--sparsity", "90", "--sparsity", "60", "--schedule", "cubic", "--stages", "2", "--geo.max-steps", "8", "--train.epochs", "1",
        "--finetune.epochs", "1", "--eval-every", "4", "--polish-epochs", "1"]


def _runs(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("geodesic-sparsify")
    return client, client.search_runs([exp.experiment_id])


def test_flow_tracks_every_method_and_resumes_from_cache(harness, workdir, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    assert main(["sparsify", "--data-dir", data_dir, *TINY]) == 0
    out = capsys.readouterr().out
    assert "geodesic" in out and "oneshot" in out
    client, runs = _runs(workdir)
    parents = [r for r in runs if r.data.tags.get("geodesic.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags and r.data.params["method"] != "train"]
    training = [r for r in runs if r.data.params.get("method") == "train"]
    assert len(parents) == 1 and len(children) == 2 * 6 and len(training) == 1
    assert training[0].info.status == "FINISHED" and len(client.get_metric_history(training[0].info.run_id,
                                                                                     "train_loss")) > 5
    tags = parents[0].data.tags
    assert tags["prefect.flow_run_id"] and tags["git_commit"] and len(tags["data_fingerprint"]) == 64
    assert parents[0].data.params["geo.max_steps"] == "8"
    # the load the run's times were measured under: MLflow's system metrics on the parent, a sample a second here
    cpu = [m.value for m in client.get_metric_history(parents[0].info.run_id, "system/cpu_utilization_percentage")]
    assert len(cpu) >= 5 and all(0 <= v <= 100 for v in cpu) and max(cpu) > 0
    assert "system/system_memory_usage_megabytes" in parents[0].data.metrics
    from tasks.tracking import PROCESS_CPU_METRIC, child_machine_load

    load = child_machine_load(parents[0].info.run_id)
    assert set(load) == {r.info.run_name for r in children + training} and all(0 <= v <= 100 for v in load.values())
    own = child_machine_load(parents[0].info.run_id, PROCESS_CPU_METRIC)  # the flow process's share of it
    assert set(own) == set(load) and all(0 <= v <= 100 for v in own.values()) and max(own.values()) > 0
    # each child carries both, once, beside its wall_seconds (what MLflow's Compare view shows)
    for r in children + training:
        hist = {k: client.get_metric_history(r.info.run_id, k) for k in ("machine_cpu_percent", "process_cpu_percent")}
        assert [h.step for h in hist["machine_cpu_percent"]] == [0] == [h.step for h in hist["process_cpu_percent"]]
        assert hist["machine_cpu_percent"][0].value == pytest.approx(load[r.info.run_name], abs=0.051)
        assert hist["process_cpu_percent"][0].value == pytest.approx(own[r.info.run_name], abs=0.051)
    for r in children:
        p, m = r.data.params, r.data.metrics
        assert r.info.status == "FINISHED"
        assert p["method"] in ("geodesic", "oneshot", "finetune", "distill") and p["target_sparsity"] in ("60.0", "90.0")
        assert p["geo.max_steps"] == "8" and p["geo.eta"] == "0.2"  # the settings that produced it
        assert m["sparsity"] == pytest.approx(float(p["target_sparsity"]), abs=1e-3)  # percent, as the target
        # MLflow's Duration is the method's own time
        assert (r.info.end_time - r.info.start_time) / 1000 == pytest.approx(m["wall_seconds"], abs=0.01)
        assert 0 < m["test_accuracy"] <= 100 and m["wall_seconds"] >= 0
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "checkpoints" in arts
        if p["method"] == "geodesic":
            assert {"path_metrics.parquet", "accuracy_along_path.png"} <= arts
            assert {"path_min_test_accuracy", "path_length", "steps"} <= set(m)
            # the closing correction ran (one epoch here) after the projection, and its time is the geodesic's
            assert 0 < m["polish_seconds"] < m["wall_seconds"] and 0 < m["projected_test_accuracy"] <= 100
            local = client.download_artifacts(r.info.run_id, "path_metrics.parquet", str(workdir))
            import pandas as pd

            df = pd.read_parquet(local)
            assert list(df.columns) == ["step", "distance", "test_accuracy", "test_loss", "sparsity", "path_length"]
            assert df["path_length"].is_monotonic_increasing and df["step"].iloc[0] == 0
            assert "path_metrics.csv" in arts  # a copy MLflow's UI previews
            # the path as metric histories: one point per step, at the geodesic step
            steps = m["steps"]
            for key, expected in (("distance", range(int(steps))), ("step_length", range(1, int(steps) + 1)),
                                  ("path_length", range(int(steps) + 1)),
                                  ("test_accuracy", sorted(set(df["step"])))):
                hist = [h.step for h in client.get_metric_history(r.info.run_id, key)]
                assert sorted(hist) == list(expected), key
            acc = {h.step: h.value for h in client.get_metric_history(r.info.run_id, "test_accuracy")}
            assert acc[steps] == m["test_accuracy"]  # the stage's end after its projection
    # a second run with the same parameters recomputes nothing: the core functions must not be called
    def boom(*a, **k):
        raise AssertionError("a cached task ran again")

    monkeypatch.setattr("tasks.training.train_and_save", boom)
    monkeypatch.setattr("tasks.geodesic.geodesic_stage", boom)
    monkeypatch.setattr("tasks.geodesic.polish", boom)
    monkeypatch.setattr("tasks.baselines.prune_finetune", boom)
    assert main(["sparsify", "--data-dir", data_dir, *TINY]) == 0


def test_adaptive_schedule_rejects_stages_without_a_trace_in_the_histories_and_resumes(harness, workdir, data_dir,
                                                                                        monkeypatch):
    args = ["sparsify", "--data-dir", data_dir, "--sparsity", "95", "--schedule", "adaptive", "--stages", "2",
            "--max-stages", "4", "--stage-tolerance", "0.01", "--geo.max-steps", "8", "--geo.distill-steps", "2",
            "--train.epochs", "1", "--finetune.epochs", "1", "--no-finetune.equal-time", "--no-finetune.distill",
            "--eval-every", "4"]
    assert main(args) == 0
    client, runs = _runs(workdir)
    geo = [r for r in runs if r.data.params.get("method") == "geodesic"]
    assert len(geo) == 1 and geo[0].data.params["schedule"] == "adaptive"
    m = geo[0].data.metrics
    # 0.01 points: one changed prediction of the 2,000 probe inputs rejects a stage, down to the smallest step
    assert m["rejected_stages"] >= 1 and 2 <= m["stages"] <= 4
    assert m["sparsity"] == pytest.approx(95.0, abs=1e-3)
    steps = int(m["steps"])  # a rejected stage's steps were taken again: its points never reached the history
    for key, expected in (("distance", range(steps)), ("step_length", range(1, steps + 1))):
        hist = client.get_metric_history(geo[0].info.run_id, key)
        assert sorted(h.step for h in hist) == list(expected), key
    import pandas as pd  # and the points are the accepted path's: the same numbers as its table

    df = pd.read_parquet(client.download_artifacts(geo[0].info.run_id, "path_metrics.parquet", str(workdir)))
    dist = {h.step: h.value for h in client.get_metric_history(geo[0].info.run_id, "distance")}
    rows = df[(df["distance"] > 0) & (df["step"] <= steps)]  # a row's distance: before its step (history: s - 1)
    assert len(rows) >= 2 and all(dist[int(r.step) - 1] == pytest.approx(r.distance) for r in rows.itertuples())
    import asyncio  # the Prefect UI says which stages were undone, and why

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    async def progress():
        async with get_client() as c:
            return await c.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])))

    undone = [a.description for a in asyncio.run(progress())
              if "(adaptive" in (a.description or "") and "undone: agreement with the dense network fell" in a.description]
    assert len(undone) >= m["rejected_stages"], undone

    def boom(*a, **k):
        raise AssertionError("a cached task ran again")

    monkeypatch.setattr("tasks.geodesic.geodesic_stage", boom)  # the same fidelities: the same stages, cached
    monkeypatch.setattr("tasks.baselines.prune_finetune", boom)
    assert main(args) == 0


@pytest.mark.parametrize("args,match", [
    (["--sparsity", "0"], "between 0 and 100"),
    (["--sparsity", "100"], "between 0 and 100"),
    (["--sparsity", "90", "--sparsity", "90"], "must not repeat"),
    (["--sparsity", "ninety"], "valid number"),
    (["--model", "resnet18"], "valid models"),
    (["--dataset", "svhn"], "valid datasets"),
    (["--geo.eta", "0"], "--geo.eta"),
    (["--geo.eps", "-1"], "--geo.eps"),
    (["--refresh-every", "0"], "--refresh-every"),
    (["--schedule", "adaptive", "--stages", "5", "--max-stages", "3"], "max_stages"),
    (["--stage-tolerance", "0"], "--stage-tolerance"),
    (["--geo.solver", "newton"], "invalid choice"),
])
def test_bad_input_fails_before_any_work(tmp_path, monkeypatch, data_dir, capsys, args, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if match == "invalid choice" else _nullctx():
        assert main(["sparsify", "--data-dir", data_dir, *args]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


def test_missing_data_and_foreign_checkpoint(tmp_path, monkeypatch, data_dir, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sparsify", "--data-dir", str(tmp_path / "none")]) == 2
    assert "GEODESIC_DATA_DIR" in capsys.readouterr().err
    ck = tmp_path / "cnn.pt"
    save_checkpoint(ck, build_model("cnn", 10, 1, 28), {"model": "cnn", "num_classes": 10, "in_channels": 1,
                                                         "image_size": 28, "test_accuracy": 0.0})
    assert main(["sparsify", "--data-dir", data_dir, "--checkpoint", str(ck)]) == 2
    assert "'cnn' network but 'lenet300'" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_structured_filter_sparsification_runs_end_to_end(harness, workdir, data_dir, capsys):
    args = ["sparsify", "--data-dir", data_dir, "--model", "cnn", "--structured", "--layer", "0", "--n-filters", "8",
            "--stages", "2", "--geo.max-steps", "6", "--train.epochs", "1", "--finetune.epochs", "1",
            "--no-finetune.equal-time", "--no-finetune.distill", "--geo.distill-steps", "2", "--prune-train-epochs", "0.02",
            "--polish-epochs", "1"]
    assert main(args) == 0
    client, runs = _runs(workdir)
    cycle = [r for r in runs if r.data.params.get("method") == "prune_train"]  # the paper's structured baseline
    assert len(cycle) == 1 and cycle[0].data.params["budget"] == "0.02ep_per_filter"
    geo = [r for r in runs if r.data.params.get("method") == "geodesic"]
    assert len(geo) == 1 and geo[0].data.params["target_filters"] == "8.0"
    oneshot = [r for r in runs if r.data.params.get("method") == "oneshot"]
    # a working traversal: at least as good as zeroing the filters in one shot (both ~95-98% here)
    assert geo[0].data.metrics["test_accuracy"] >= oneshot[0].data.metrics["test_accuracy"] - 0.5
    from pathlib import Path

    from geodesic_core import load_model

    for run in (geo[0], cycle[0]):  # both end with exactly 8 filters removed (weights and bias)
        ckpt_dir = client.download_artifacts(run.info.run_id, "checkpoints", str(workdir / run.info.run_id))
        model, meta = load_model(next(Path(ckpt_dir).glob("*.pt")))
        zero = model[0].weight.detach().flatten(1).abs().sum(1) == 0
        assert int(zero.sum()) == 8 and bool((model[0].bias.detach()[zero] == 0).all())
    assert meta["result"]["steps"] == 8 * round(0.02 * 469)  # prune-train: 8 cycles of 0.02 epochs (batch 128)


def test_structured_layer_must_be_a_conv(tmp_path, monkeypatch, data_dir, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sparsify", "--data-dir", data_dir, "--model", "cnn", "--structured", "--layer", "7"]) == 2
    assert "conv layers: 0, 3" in capsys.readouterr().err


def test_a_levels_cache_key_ignores_other_levels_and_unrelated_settings():
    from flows.sparsify import _for_level
    from geodesic_core.sparsify import SparsifyConfig

    a = SparsifyConfig(sparsity=[60, 90])
    b = SparsifyConfig(sparsity=[90, 98], train={"epochs": 3}, finetune={"epochs": 5})
    assert _for_level(a, 90.0) == _for_level(b, 90.0)
    assert _for_level(a, 90.0, finetune=True) != _for_level(b, 90.0, finetune=True)
    assert _for_level(a, 90.0) != _for_level(SparsifyConfig(sparsity=[90], geo={"eta": 0.1}), 90.0)


def test_a_crash_closes_the_parent_run_as_failed(harness, workdir, data_dir, monkeypatch):
    def crash(*a, **k):
        raise RuntimeError("injected failure in a geodesic segment")

    monkeypatch.setattr("tasks.geodesic.geodesic_stage", crash)
    with pytest.raises(Exception, match="injected failure"):
        main(["sparsify", "--data-dir", data_dir, "--sparsity", "90", "--schedule", "cubic", "--stages", "1", "--train.epochs", "1",
              "--no-finetune.equal-time"])
    _, runs = _runs(workdir)
    parent = [r for r in runs if r.data.tags.get("geodesic.role") == "parent"]
    assert len(parent) == 1 and parent[0].info.status == "FAILED"
    assert "injected failure" in parent[0].data.tags["error"]


NUMBERS = ("method", "level", "test_accuracy", "sparsity", "steps", "path_min_test_accuracy", "path_length")


def test_a_dask_cluster_of_two_worker_processes_gives_the_thread_pools_numbers(harness, workdir, data_dir,
                                                                               monkeypatch):
    """The same small run on the default thread pool and on a local Dask cluster of 2 worker processes. Dask
    runs torch with one intra-op thread per worker (OMP_NUM_THREADS=1); the thread-pool run does the same
    here, so every float sum is taken in the same order and the numbers must agree to the last bit."""
    import torch

    from flows.cli import build_parser, config_from_args, run_local
    from flows.common import RunnerConfig
    from flows.sparsify import sparsify_flow
    from geodesic_core.sparsify import SparsifyConfig

    args = build_parser().parse_args(["sparsify", *TINY, "--no-finetune.equal-time"])  # equal time: not repeatable
    params = config_from_args(SparsifyConfig, args)
    rows = {}
    threads = torch.get_num_threads()
    for runner in ("thread", "dask"):
        out = workdir / runner
        monkeypatch.setenv("GEODESIC_OUTPUT_DIR", str(out))  # nothing cached between the two runs
        monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(out / "results"))
        torch.set_num_threads(1 if runner == "thread" else threads)
        try:
            summary = run_local(sparsify_flow, params, data_dir=data_dir, experiment=f"runner-{runner}",
                                runner=RunnerConfig(task_runner=runner, workers=2))
        finally:
            torch.set_num_threads(threads)
        rows[runner] = sorted(({k: r.get(k) for k in NUMBERS} for r in summary), key=lambda r: (r["level"], r["method"]))
    assert len(rows["thread"]) == 2 * 4  # geodesic, oneshot, finetune, distill at 2 levels
    assert rows["dask"] == rows["thread"]


def test_task_runner_settings_are_validated(monkeypatch, capsys, tmp_path, data_dir):
    from flows.common import RunnerConfig

    monkeypatch.chdir(tmp_path)
    assert main(["sparsify", "--data-dir", data_dir, "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    monkeypatch.setenv("GEODESIC_TASK_RUNNER", "spark")
    with pytest.raises(Exception, match="'thread' or 'dask'"):
        RunnerConfig.from_env()
    monkeypatch.setenv("GEODESIC_TASK_RUNNER", "dask")
    monkeypatch.setenv("GEODESIC_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    assert RunnerConfig.from_env().build().address == "tcp://10.0.0.5:8786"
    assert not (tmp_path / "outputs").exists()


class _FlakyClient:
    """An MLflow client whose metric logging fails ``failures`` times (a tracking server that drops out)."""

    calls = 0

    def __init__(self, real, failures):
        self._real, self._failures = real, failures

    def __getattr__(self, name):
        return getattr(self._real, name)

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if metrics:
            type(self).calls += 1
            if type(self).calls <= self._failures:
                raise ConnectionError("tracking server unavailable (injected)")
        return self._real.log_batch(run_id, metrics=metrics, params=params, tags=tags)


def test_tracking_failures_are_retried_and_a_final_failure_loses_no_checkpoint(harness, workdir, data_dir,
                                                                                monkeypatch):
    import tasks.tracking as tracking

    real = tracking._client
    args = ["sparsify", "--data-dir", data_dir, "--sparsity", "90", "--schedule", "cubic", "--stages", "1", "--geo.max-steps", "6",
            "--train.epochs", "1", "--finetune.epochs", "1", "--no-finetune.equal-time", "--no-finetune.distill"]
    # a server that is down for good: the tracking task fails after its retries, clearly, and the parent
    # run is closed as FAILED; the computed networks stay on disk (live metrics off: only the final logging
    # task's calls are counted; with them on, a failed live flush warns and the compute goes on, see below)
    monkeypatch.setenv("GEODESIC_LIVE_METRICS", "false")
    # nor the system metrics' own best-effort calls after the flow (each child's load), which warn and never retry
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    _FlakyClient.calls = 0
    monkeypatch.setattr(tracking, "_client", lambda: _FlakyClient(real(), failures=10**6))
    with pytest.raises(Exception, match="tracking server unavailable"):
        main(args)
    assert _FlakyClient.calls == 1 + 3  # the first try and three retries (with backoff)
    ckpts = workdir / "outputs" / "checkpoints"
    finished = {p.name: p.stat().st_mtime_ns for p in ckpts.glob("*.pt")}
    assert any(n.startswith("final-") for n in finished) and any(n.startswith("geodesic-") for n in finished)
    _, runs = _runs(workdir)
    assert [r.info.status for r in runs if r.data.tags.get("geodesic.role") == "parent"] == ["FAILED"]
    # a server that drops out twice: the retries carry the run through, from the cached computation
    monkeypatch.delenv("GEODESIC_LIVE_METRICS")
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING")
    _FlakyClient.calls = 0
    monkeypatch.setattr(tracking, "_client", lambda: _FlakyClient(real(), failures=2))
    assert main(args) == 0
    assert _FlakyClient.calls > 2
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.glob("*.pt")} == finished  # nothing recomputed
    _, runs = _runs(workdir)
    parents = [r for r in runs if r.data.tags.get("geodesic.role") == "parent" and r.info.status == "FINISHED"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 3 and all("test_accuracy" in r.data.metrics for r in children)


def test_task_threads_split_the_cores_between_them():
    """Each worker thread of the default runner gets cores // workers PyTorch threads (see
    ComputeThreadPoolTaskRunner): this relies on Prefect's executor initializer hook, which a Prefect upgrade
    could rename; then this test fails instead of the flows silently slowing down."""
    import os

    import torch

    from flows.common import RunnerConfig

    for workers in (1, 2):
        runner = RunnerConfig(workers=workers).build()
        with runner:
            got = runner._executor.submit(torch.get_num_threads).result()
        assert got == max(1, (os.cpu_count() or 1) // workers)


@pytest.mark.parametrize("switch", ["true", "false"])
def test_system_metrics_follow_mlflows_switch(workdir, db_templates, monkeypatch, switch):
    """`recording_system_metrics`: MLflow's monitor samples the machine onto the parent run while the block runs
    (a second between samples here), and nothing when MLflow's own switch says false; it stops with the block."""
    import os
    import shutil
    import subprocess
    import sys
    import threading
    import time

    from mlflow import MlflowClient

    from tasks.tracking import CPU_METRIC, PROCESS_CPU_METRIC, recording_system_metrics, tracking_uri

    shutil.copyfile(db_templates["mlflow"], workdir / "mlflow.db")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", switch)
    client = MlflowClient(tracking_uri())
    run_id = client.create_run(client.create_experiment("sm")).info.run_id
    # one core kept busy all along by another process (a spinning thread here would starve the monitor of the GIL)
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 30: pass"])
    try:
        cpu0, wall0 = time.process_time(), time.monotonic()
        with recording_system_metrics({"run_id": run_id}):
            time.sleep(4.5)
        # what this process itself used meanwhile (the monitor, and threads an earlier test left behind), % of all cores
        mine = 100 * (time.process_time() - cpu0) / ((time.monotonic() - wall0) * (os.cpu_count() or 1))
    finally:
        spin.kill()
        spin.wait()
    assert not any(t.name == "SystemMetricsMonitor" for t in threading.enumerate())
    cpu = client.get_metric_history(run_id, CPU_METRIC)
    if switch == "false":
        assert cpu == []
    else:
        # every sample sees the busy core, the first one too (it covers the second before the monitor started, not
        # an empty interval that psutil reports as 0)
        one_core = 100 / (os.cpu_count() or 1)
        assert len(cpu) >= 2 and all(one_core / 2 < m.value <= 100 for m in cpu), [m.value for m in cpu]
        assert [m.step for m in cpu] == list(range(len(cpu)))
        # the process's own share, beside the machine's: this one sleeps while the other spins, so its samples read
        # its own CPU time, not the spinning core (the two would be equal if the process's measured the machine)
        own = [m.value for m in client.get_metric_history(run_id, PROCESS_CPU_METRIC)]
        assert len(own) == len(cpu) and all(0 <= v <= 100 for v in own), own
        assert abs(sum(own) / len(own) - mine) < one_core / 4, (own, mine)
        assert client.get_run(run_id).data.metrics["system/process_memory_rss_megabytes"] > 50  # torch is loaded
    assert switch == "true" or client.get_metric_history(run_id, PROCESS_CPU_METRIC) == []


def test_machine_load_meter_sees_a_busy_core():
    """`benchmarks/_load.MachineLoad`: a thread spinning for 0.5 s shows as at least half of one core's share of the
    machine's use, and as this process's CPU time in its own; a process sleeping while another spins shows in the
    machine's only."""
    import os
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _load import MachineLoad

    meter, cpu0, wall0 = MachineLoad(), time.process_time(), time.monotonic()
    t = time.perf_counter()
    while time.perf_counter() - t < 0.5:
        pass
    one_core = 100 / (os.cpu_count() or 1)
    own = 100 * (time.process_time() - cpu0) / ((time.monotonic() - wall0) * (os.cpu_count() or 1))
    assert one_core / 2 <= meter.percent() <= 100
    # the process's share: its CPU time over the wall time, per core (whatever share of a core the spinning thread
    # got on a loaded machine)
    assert meter.process_percent() == pytest.approx(own, rel=0.2, abs=1.0) and own > 0
    import subprocess

    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(1.0)  # the other interpreter started and spinning
        meter.restart()
        time.sleep(1.0)
        reading = meter.reading()
    finally:
        spin.kill()
        spin.wait()
    assert reading["machine_cpu_percent"] >= one_core / 2 and reading["process_cpu_percent"] < one_core / 4, reading
