"""Tracking tasks: the only code that talks to MLflow (and creates Prefect artifacts).

Tracking URI: ``$MLFLOW_TRACKING_URI``, else a SQLite file ``./mlflow.db`` (absolute path); the artifacts of a
SQLite store lie in ``mlartifacts/`` beside the database. Runs are addressed by id through `MlflowClient`
(thread-safe; no fluent active-run state). A flow run's parent run is found again by the identity of its
settings, data and code (a killed run started again continues it), child runs by a key tag under their parent,
so a retried or resumed task never logs a run twice; `tasks.live` opens the child runs while tasks run.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

RETRY = {"cache_policy": NO_CACHE, "retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2), "retry_jitter_factor": 0.2}
PROJECT_ROOT = Path(__file__).resolve().parents[1]
UI_URL_ENV = "GEODESIC_MLFLOW_UI_URL"  # MLflow's address for people, when workers reach it by another name


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def _client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """{"geo": {"eta": 0.1}} -> {"geo.eta": "0.1"}: MLflow params named like the CLI options."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else k, v))
        return out
    return {prefix: json.dumps(value) if isinstance(value, (list, tuple)) else str(value)}


def experiment_id(name: str) -> str:
    client = _client()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location())


def artifact_location() -> str | None:
    """Artifacts of a database store lie beside the database (``mlartifacts/`` in its folder), not in the
    current folder's ``./mlruns`` (MLflow's default); a tracking server keeps its own setting (None)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def check_tracking_reachable(timeout: float = 5.0) -> None:
    """Fail early, before any work and before any run is created, when the tracking server cannot be reached.

    An HTTP server is asked for ``/health`` once, with a short timeout (MLflow's own client would retry for
    minutes); a database URI is opened with one query.
    """
    import urllib.request

    uri = tracking_uri()
    try:
        if uri.startswith(("http://", "https://")):
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise ConnectionError(f"/health answered {r.status}")
        else:
            _client().search_experiments(max_results=1)
    except Exception as exc:  # refused, timed out, DNS, HTTP error, database error
        raise RuntimeError(f"MLflow tracking at {uri} cannot be reached ({type(exc).__name__}: {str(exc)[:200]}); "
                           f"start the server or unset MLFLOW_TRACKING_URI to track locally") from exc


SYSTEM_METRICS_ENV = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"  # MLflow's own switch: "false" turns them off here
CPU_METRIC = "system/cpu_utilization_percentage"  # the machine's: every process, % of all cores
PROCESS_CPU_METRIC = "system/process_cpu_utilization_percentage"  # the flow's own process, % of all cores


@contextmanager
def recording_system_metrics(parent: dict) -> Iterator[None]:
    """While the block runs, MLflow's own system-metrics monitor samples the machine the flow runs on (CPU
    utilisation of all cores, memory, disk, network; GPU utilisation and memory where NVML is installed) every
    ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (10) and logs them on the parent run as ``system/...``
    metrics (MLflow's "System metrics" tab): the load every timing of the run was measured under. Beside MLflow's
    own metrics it samples the flow's process (`_process_monitor`): its CPU use, in % of all cores as the machine's
    is, so the two read together say how much of the machine the run had and how much other work took; and its
    resident memory. When the block ends, each child run gets its share as metrics (`_log_child_loads`). A resumed
    parent continues its step count. On unless ``$MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is ``false``; the monitor
    stops with the block (or by itself once the parent run is closed). A monitor that cannot start (psutil missing)
    is skipped with a warning, never fails the flow."""
    monitor = None
    if os.environ.get(SYSTEM_METRICS_ENV, "true").strip().lower() not in ("false", "0", "no"):
        try:
            monitor = _primed_monitor(parent["run_id"])
            monitor.start()
        except Exception as exc:  # pragma: no cover - psutil absent or the store unreachable
            import logging

            logging.getLogger(__name__).warning("system metrics not recorded: %s", exc)
            monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()
            _log_child_loads(parent["run_id"])


def _primed_monitor(run_id: str):
    """MLflow's `SystemMetricsMonitor` whose first CPU sample is real. psutil measures CPU use since the previous
    call *by the same thread*, and MLflow's monitor samples the moment its thread starts, so its first sample was an
    empty interval, reported as 0. Here the monitor's thread makes a first call, waits a second (or the sampling
    interval, if shorter), then runs MLflow's own loop; `finish` stops it as MLflow's would."""
    import threading

    import psutil
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class Primed(SystemMetricsMonitor):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.monitors.append(_process_monitor())

        def start(self) -> None:
            def run() -> None:
                psutil.cpu_percent()
                if not self._shutdown_event.wait(min(1.0, self.sampling_interval)):
                    self.monitor()

            self._process = threading.Thread(target=run, daemon=True, name="SystemMetricsMonitor")
            self._process.start()

    return Primed(run_id, resume_logging=True, tracking_uri=tracking_uri())


def _process_monitor():
    """A monitor of MLflow's kind (`BaseMetricsMonitor`) for the process it is made in: its CPU use since the
    previous sample, all its threads (torch's intra-op pool included), in % of all cores as MLflow's
    ``cpu_utilization_percentage`` is (``process_cpu_utilization_percentage``), and its resident memory
    (``process_memory_rss_megabytes``). psutil keeps a `Process`'s last CPU times on the object, not per thread, so
    the first call here (made now) starts the first interval for whichever thread samples next."""
    import psutil
    from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor

    class ProcessMonitor(BaseMetricsMonitor):
        def __init__(self) -> None:
            super().__init__()
            self.process, self.cores = psutil.Process(), psutil.cpu_count() or 1
            self.process.cpu_percent()

        def collect_metrics(self) -> None:
            self._metrics["process_cpu_utilization_percentage"].append(self.process.cpu_percent() / self.cores)
            self._metrics["process_memory_rss_megabytes"].append(self.process.memory_info().rss / 1e6)

        def aggregate_metrics(self) -> dict[str, float]:
            return {k: round(sum(v) / len(v), 1) for k, v in self._metrics.items()}

    return ProcessMonitor()


def child_machine_load(parent_run_id: str, metric: str = CPU_METRIC) -> dict[str, float]:
    """{child run name: mean CPU utilisation in % of all cores} over each child run's interval as MLflow shows it
    (its start to start + the method's wall time), from the parent's samples of ``metric``: the machine's
    (``system/cpu_utilization_percentage``, the default) or the flow process's (`PROCESS_CPU_METRIC`; a child run
    that ran beside another in the same process shares it). See `_interval_means`."""
    return {name: value for name, value in _interval_means(parent_run_id, metric).values()}


def _interval_means(parent_run_id: str, metric: str) -> dict[str, tuple[str, float]]:
    """{child run id: (its name, the mean of the parent's ``metric`` samples over the child's interval)}. MLflow's
    monitor takes a sample, waits one sampling interval i, then logs it: the value logged at time T covers
    (T − 2i, T − i], so the samples that overlap [start, end] are those logged in (start + i, end + 2i). A child
    shorter than a sample gets the first sample logged after start + i, one after the last sample the last one, so
    every child gets a value (a resumed run's children the same metrics as an uninterrupted run's). Empty when the
    parent has no samples."""
    client = _client()
    samples = sorted((m.timestamp, m.value) for m in client.get_metric_history(parent_run_id, metric))
    if not samples:
        return {}
    runs = client.search_runs([client.get_run(parent_run_id).info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL

    interval = 1000 * (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() or 10)  # MLflow's own reading of its setting
    out = {}
    for r in runs:
        start, end = r.info.start_time, r.info.end_time or samples[-1][0]
        inside = [v for t, v in samples if start + interval < t < end + 2 * interval]
        after = [v for t, v in samples if t > start + interval]
        out[r.info.run_id] = (r.info.run_name, sum(inside) / len(inside) if inside else (after or [samples[-1][1]])[0])
    return out


LOAD_METRICS = {"machine_cpu_percent": CPU_METRIC, "process_cpu_percent": PROCESS_CPU_METRIC}


def _log_child_loads(parent_run_id: str) -> None:
    """Give each child run the load it ran under, as metrics beside its ``wall_seconds`` (so MLflow's Compare view
    shows an equal-time peer's load next to the geodesic's): ``machine_cpu_percent`` and ``process_cpu_percent``,
    the means of the parent's samples over the child's interval (`_interval_means`), in % of all cores. Run once
    the monitor has stopped; a failure here is a warning, never the flow's."""
    from mlflow.entities import Metric

    try:
        client, now = _client(), int(time.time() * 1000)
        loads = {key: _interval_means(parent_run_id, metric) for key, metric in LOAD_METRICS.items()}
        for run_id in set().union(*loads.values()):  # a resumed flow's child gets the next step, not a second step 0
            client.log_batch(run_id, metrics=[Metric(key, round(loads[key][run_id][1], 1), now,
                                                     len(client.get_metric_history(run_id, key)))
                                              for key in LOAD_METRICS if run_id in loads[key]])
    except Exception as exc:  # pragma: no cover - the store unreachable at the very end
        import logging

        logging.getLogger(__name__).warning("the load of each child run not logged: %s", exc)


def log_params_once(client, run_id: str, params: dict) -> None:
    """Log the params a run does not have yet (MLflow params are write-once; a reopened run keeps its own)."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i:i + 100])


def child_track(parent: dict, key: str, settings: dict, *, finish: bool = False, **fields: Any) -> dict:
    """What a task needs to open the child run ``key`` of ``parent`` when it starts (see `tasks.live.Live`):
    the child's params are the flow's settings, flattened and named as the CLI options (``geo.eta``), plus
    ``fields`` (method, level, budget, ...), so two flow runs' children compare in MLflow setting by setting.
    ``finish``: the run belongs to one task, which closes it when it ends (training of a shared network);
    otherwise the flow's logging task closes it with the method's results."""
    return {"parent": parent, "key": key, "finish": finish,
            "params": {**flatten("", settings), **{k: str(v) for k, v in fields.items()}}}


@task(**RETRY)
def start_parent_run(experiment: str, params: dict, data_fingerprint: str, code_version: str,
                     flow_run_id: str, run_name: str) -> dict:
    """Create the flow's parent run (tags: Prefect flow-run id, git commit, data fingerprint), or continue the
    unfinished one (RUNNING after a kill, or FAILED) of an earlier flow run with the same settings, data and code:
    a killed run resumed with the same command continues the same parent and child runs."""
    from mlflow.entities import RunStatus

    from .common import content_key

    client = _client()
    exp_id = experiment_id(experiment)
    identity = content_key(experiment, params, data_fingerprint, code_version)
    found = client.search_runs([exp_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}' and "
                                         f"tags.`geodesic.role` = 'parent'", max_results=1)
    if found:
        return {"run_id": found[0].info.run_id, "experiment_id": exp_id}
    unfinished = [r for r in client.search_runs([exp_id], f"tags.`geodesic.run_identity` = '{identity}' and "
                                                          f"tags.`geodesic.role` = 'parent'",
                                                order_by=["attributes.start_time DESC"], max_results=5)
                  if r.info.status != RunStatus.to_string(RunStatus.FINISHED)]
    if unfinished:
        run_id = unfinished[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "prefect.flow_run_id", flow_run_id)
        client.set_tag(run_id, "geodesic.resumed", str(int(unfinished[0].data.tags.get("geodesic.resumed", 0)) + 1))
        if "error" in unfinished[0].data.tags:
            client.delete_tag(run_id, "error")
        return {"run_id": run_id, "experiment_id": exp_id}
    run = client.create_run(exp_id, run_name=run_name, tags={
        "prefect.flow_run_id": flow_run_id, "git_commit": git_commit(), "data_fingerprint": data_fingerprint,
        "code_version": code_version, "geodesic.role": "parent", "geodesic.run_identity": identity})
    log_params_once(client, run.info.run_id, flatten("", params))
    return {"run_id": run.info.run_id, "experiment_id": exp_id}


def find_or_create_child(client, parent: dict, key: str):
    """The child run ``key`` of ``parent`` (found by its key tag), created if there is none: (run, created)."""
    found = client.search_runs([parent["experiment_id"]], f"tags.`geodesic.key` = '{key}' and "
                                                           f"tags.`mlflow.parentRunId` = '{parent['run_id']}'",
                               max_results=1)
    if found:
        return found[0], False
    return client.create_run(parent["experiment_id"], run_name=key,
                             tags={"mlflow.parentRunId": parent["run_id"], "geodesic.key": key}), True


def log_table(client, run_id: str, folder: Path, name: str, rows: list[dict]) -> None:
    """A table as the Parquet artifact ``name`` and a CSV copy beside it (MLflow's UI previews CSV)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame.to_parquet(folder / name, index=False)
    frame.to_csv(folder / Path(name).with_suffix(".csv").name, index=False)
    for path in (folder / name, folder / Path(name).with_suffix(".csv").name):
        client.log_artifact(run_id, str(path))


def log_child_run(track: dict, metrics: dict, tables: dict[str, list[dict]], files: list[str],
                  plots: dict[str, Any] | None = None, history: list[tuple[int, dict]] = (),
                  wall_seconds: float | None = None) -> str:
    """Complete one child run (opened live by its tasks, or created here when every task was a cache hit):
    params, final metrics, the metric ``history`` ((step, values) points; steps already logged live are
    skipped), each table as Parquet with a CSV copy (MLflow's UI previews CSV), files (checkpoints), PNG plots.
    The run ends FINISHED with MLflow's Duration equal to the method's ``wall_seconds``.

    ``plots`` maps a file name to a callable ``(path) -> None`` that draws it.
    """
    from mlflow.entities import RunStatus

    from .live import History

    client = _client()
    run, _ = find_or_create_child(client, track["parent"], track["key"])
    if run.info.status == "FINISHED":
        return run.info.run_id
    run_id = run.info.run_id
    log_params_once(client, run_id, track.get("params", {}))
    hist = History(run_id, client)
    for step, values in history:
        hist.add(step, values)
    # the summary at the path's last step: a name with a history (test_accuracy, path_length) keeps one point
    # per step, and MLflow's run table shows the value at the largest step
    hist.add(max((step for step, _ in history), default=0), metrics)
    hist.flush()
    with tempfile.TemporaryDirectory() as tmp:
        for name, rows in tables.items():
            log_table(client, run_id, Path(tmp), name, rows)
        for name, draw in (plots or {}).items():
            path = Path(tmp) / name
            draw(path)
            client.log_artifact(run_id, str(path))
    for f in files:
        client.log_artifact(run_id, f, artifact_path="checkpoints")
    end = run.info.start_time + int(1000 * wall_seconds) if wall_seconds is not None else None
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=end)
    return run_id


# the histories written from a path table at the end (every evaluated point; with live metrics on, the points
# already logged are skipped); ``distance`` and ``step_length`` are logged live only, at every step
HISTORY_KEYS = ("test_accuracy", "test_loss", "sparsity", "path_length")


def path_history(rows: list[dict], keys=HISTORY_KEYS) -> list[tuple[int, dict]]:
    """(step, values) points of a path table, for the metric histories."""
    return [(int(r["step"]), {k: r[k] for k in keys if k in r}) for r in rows]


@task(**RETRY)
def log_level_runs(entries: list[tuple[dict, dict, str, list[dict] | None]]) -> list[str]:
    """One child run per method at one level: ``entries`` are (track, summary row, checkpoint path, path table or
    None); the geodesic's path table becomes ``path_metrics.parquet`` (and .csv), its metric histories, and
    ``accuracy_along_path.png``."""
    from .plots import accuracy_along_path
    from .summaries import GEODESIC_KEYS, METRIC_KEYS

    ids = []
    for track, row, ckpt, path_rows in entries:
        keys = METRIC_KEYS + (GEODESIC_KEYS if path_rows else ())
        tables = {"path_metrics.parquet": path_rows} if path_rows else {}
        plots = ({"accuracy_along_path.png": accuracy_along_path(path_rows, f"geodesic to {row['level']:g}")}
                 if path_rows else None)
        ids.append(log_child_run(track, {k: row[k] for k in keys}, tables, [ckpt], plots,
                                 history=path_history(path_rows or []), wall_seconds=row["wall_seconds"]))
    return ids


@task(**RETRY)
def fail_parent_run(parent: dict, error: str) -> None:
    """Close the parent run as FAILED (with the error as a tag) so no run is left RUNNING after a crash."""
    from mlflow.entities import RunStatus

    from .live import forget_parent

    forget_parent(parent["run_id"])
    client = _client()
    client.set_tag(parent["run_id"], "error", error[:4000])
    client.set_terminated(parent["run_id"], RunStatus.to_string(RunStatus.FAILED))


@task(**RETRY)
def finish_parent_run(parent: dict, summary_rows: list[dict], plots: dict[str, Any], title: str) -> str:
    """Log the summary table and plots on the parent run, close it, and publish Prefect artifacts
    (a results table and a link to the MLflow run)."""
    from mlflow.entities import RunStatus
    from prefect.artifacts import create_link_artifact, create_table_artifact

    from .live import forget_parent

    client = _client()
    with tempfile.TemporaryDirectory() as tmp:
        log_table(client, parent["run_id"], Path(tmp), "results.parquet", summary_rows)
        for name, draw in plots.items():
            p = Path(tmp) / name
            draw(p)
            client.log_artifact(parent["run_id"], str(p))
    forget_parent(parent["run_id"])
    for child in client.search_runs([parent["experiment_id"]], f"tags.`mlflow.parentRunId` = '{parent['run_id']}' "
                                                                "and attributes.status = 'RUNNING'"):
        # a child opened by a task of a killed attempt that this run did not need again
        client.set_terminated(child.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    client.set_terminated(parent["run_id"], RunStatus.to_string(RunStatus.FINISHED))
    create_table_artifact(key="results", table=summary_rows, description=title)
    link, how = mlflow_ui_link(parent)
    create_link_artifact(key="mlflow-run", link=link, description=f"MLflow parent run of this flow run. {how}")
    return parent["run_id"]


def mlflow_ui_link(parent: dict) -> tuple[str, str]:
    """The address of the parent run in MLflow's UI, and how to reach it. A tracking server's own address (or
    ``$GEODESIC_MLFLOW_UI_URL``, the address people use when the workers reach the server by another name);
    for a database store, the address of `mlflow ui` started on that store, with the command that starts it."""
    uri = os.environ.get(UI_URL_ENV) or tracking_uri()
    path = f"/#/experiments/{parent['experiment_id']}/runs/{parent['run_id']}"
    if uri.startswith("http"):
        return uri.rstrip("/") + path, "Open it in a browser."
    cmd = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return "http://127.0.0.1:5000" + path, f"The runs are in {uri}: start MLflow's UI on it with `{cmd}`, then open the link."


@task(**RETRY)
def log_continual_runs(tracks: dict[str, dict], entries: list[tuple[dict, list[list[float]], list[dict]]]) -> list[str]:
    """One child run per continual method (``tracks[method]``): metrics ``acc_task_j``, ``avg_accuracy``,
    ``bwt``, ``wall_seconds``; ``accuracy_matrix.parquet``; for the geodesic also the path tables (and their
    metric histories at the global geodesic step) and the plots of every stage (accuracy along the geodesic and
    the straight line, PCA of both)."""
    from .plots import accuracy_along_paths, pca_paths

    ids = []
    for row, matrix, results in entries:
        metrics = {key: v for key, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tables = {"accuracy_matrix.parquet": [{"after_task": i + 1, **{f"task_{j + 1}": a for j, a in enumerate(r)}}
                                              for i, r in enumerate(matrix)]}
        plots, history = {}, []
        if row["method"] == "geodesic":
            tables["path_metrics.parquet"] = [r for res in results for r in res["path_rows"]]
            tables["linear_path_metrics.parquet"] = [r for res in results for r in res["line_rows"]]
            history = path_history([{**r, "step": r["global_step"]} for r in tables["path_metrics.parquet"]],
                                   [f"acc_task_{j + 1}" for j in range(len(matrix))])
            for res in results:
                stage = res["index"] + 1
                plots[f"accuracy_along_paths_task{stage}.png"] = accuracy_along_paths(
                    res["path_rows"], res["line_rows"], f"task {stage}: geodesic vs straight line")
                plots[f"pca_paths_task{stage}.png"] = pca_paths(res["path_rows"], res["line_rows"],
                                                                f"task {stage}: paths from w_{stage} to w_1:{stage - 1}")
        ids.append(log_child_run(tracks[row["method"]], metrics, tables, [results[-1]["path"]], plots,
                                 history=history, wall_seconds=row["wall_seconds"]))
    return ids


@task(**RETRY)
def log_connect_runs(tracks: dict[str, dict], params, summary: list[dict], tables: dict[str, list[dict]],
                     geodesic_checkpoint: str) -> list[str]:
    """One child run per path (``geodesic``, ``linear``, each trained curve; ``tracks[method]``): endpoint
    and path accuracies, lengths under g and Euclidean, ``final_distance_ratio``, wall time;
    ``path_metrics.parquet`` (and .csv), the geodesic's metric histories, and the plots."""
    from .plots import chord_view, connect_accuracy_plot

    ids = []
    for row in summary:
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        plots = {"accuracy_along_paths.png": connect_accuracy_plot(tables, params), "paths_2d.png": chord_view(tables)}
        files = [geodesic_checkpoint] if row["method"] == "geodesic" else []
        history = path_history(tables["geodesic"], ("test_accuracy", "test_loss", "distance_ratio")) \
            if row["method"] == "geodesic" else []
        ids.append(log_child_run(tracks[row["method"]], metrics, {"path_metrics.parquet": tables[row["method"]]},
                                 files, plots, history=history, wall_seconds=row["wall_seconds"]))
    return ids


RUN_COLUMNS = {  # column of `geodesic runs` -> MLflow column (params., metrics., attributes)
    "method": "params.method", "budget": "params.budget", "level": "params.target_sparsity",
    "filters": "params.target_filters", "scenario": "params.scenario", "tasks": "params.tasks",
    "model": "params.model", "dataset": "params.dataset", "test_accuracy": "metrics.test_accuracy",
    "sparsity": "metrics.sparsity", "path_min_test_accuracy": "metrics.path_min_test_accuracy",
    "path_mean_test_accuracy": "metrics.path_mean_test_accuracy", "avg_accuracy": "metrics.avg_accuracy",
    "bwt": "metrics.bwt", "final_distance_ratio": "metrics.final_distance_ratio",
    "path_length": "metrics.path_length", "wall_seconds": "metrics.wall_seconds", "status": "status",
}


def runs_table(experiment: str, latest_only: bool = True):
    """The child runs of ``experiment`` (those of its latest flow run, or all), one row per child run: method,
    level or scenario, the headline metrics, wall time and status; columns no run has are left out."""
    import mlflow
    import pandas as pd

    from geodesic_core import InputError

    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise InputError(f"no MLflow experiment {experiment!r} at {tracking_uri()}; experiments there: "
                         f"{', '.join(names) or 'none'} (set MLFLOW_TRACKING_URI or run from the folder of mlflow.db)")
    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    if runs.empty:
        return pd.DataFrame(columns=["flow_run", *RUN_COLUMNS])
    tags = runs.get("tags.geodesic.role", pd.Series(index=runs.index, dtype=object))
    parents = runs[tags == "parent"]
    children = runs[runs.get("tags.mlflow.parentRunId", pd.Series(index=runs.index, dtype=object)).notna()]
    if latest_only and not parents.empty:
        latest = parents.sort_values("start_time").iloc[-1]["run_id"]
        children = children[children["tags.mlflow.parentRunId"] == latest]
    names = dict(zip(parents["run_id"], parents["tags.mlflow.runName"]))
    out = pd.DataFrame({"flow_run": children["tags.mlflow.parentRunId"].map(lambda r: f"{names.get(r, '?')}:{r[:6]}")})
    for col, src in RUN_COLUMNS.items():
        if src in children:
            out[col] = children[src]
    return out.dropna(axis=1, how="all").reset_index(drop=True)
