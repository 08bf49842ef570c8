"""Tracking tasks: the only code that talks to MLflow (and creates Prefect artifacts).

Tracking URI: ``$MLFLOW_TRACKING_URI``, else a SQLite file ``./mlflow.db`` (absolute path) with artifacts in
``./mlartifacts``. Runs are addressed by id through `MlflowClient` (thread-safe; no fluent active-run state),
and child runs are found again by a key tag, so a retried or resumed task never logs a run twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

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
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (Path.cwd() / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


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


@task(**RETRY)
def start_parent_run(experiment: str, params: dict, data_fingerprint: str, code_version: str,
                     flow_run_id: str, run_name: str) -> dict:
    """Create the flow's parent run (tags: Prefect flow-run id, git commit, data fingerprint)."""
    from mlflow.entities import Param

    client = _client()
    exp_id = experiment_id(experiment)
    found = client.search_runs([exp_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}' and "
                                         f"tags.`geodesic.role` = 'parent'", max_results=1)
    if found:
        return {"run_id": found[0].info.run_id, "experiment_id": exp_id}
    run = client.create_run(exp_id, run_name=run_name, tags={
        "prefect.flow_run_id": flow_run_id, "git_commit": git_commit(), "data_fingerprint": data_fingerprint,
        "code_version": code_version, "geodesic.role": "parent"})
    client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in flatten("", params).items()])
    return {"run_id": run.info.run_id, "experiment_id": exp_id}


def log_child_run(parent: dict, key: str, params: dict, metrics: dict, tables: dict[str, list[dict]],
                  files: list[str], plots: dict[str, Any] | None = None) -> str:
    """One child run: params, final metrics, Parquet tables, files (checkpoints) and PNG plots.

    ``plots`` maps a file name to a callable ``(path) -> None`` that draws it.
    """
    import pandas as pd
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.utils.time import get_current_time_millis

    client = _client()
    found = client.search_runs([parent["experiment_id"]], f"tags.`geodesic.key` = '{key}' and "
                                                           f"tags.`mlflow.parentRunId` = '{parent['run_id']}'",
                               max_results=1)
    if found and found[0].info.status == "FINISHED":
        return found[0].info.run_id
    run_id = found[0].info.run_id if found else client.create_run(
        parent["experiment_id"], run_name=key,
        tags={"mlflow.parentRunId": parent["run_id"], "geodesic.key": key}).info.run_id
    now = get_current_time_millis()
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()] if not found else [],
                     metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None])
    with tempfile.TemporaryDirectory() as tmp:
        for name, rows in tables.items():
            path = Path(tmp) / name
            pd.DataFrame(rows).to_parquet(path, index=False)
            client.log_artifact(run_id, str(path))
        for name, draw in (plots or {}).items():
            path = Path(tmp) / name
            draw(path)
            client.log_artifact(run_id, str(path))
    for f in files:
        client.log_artifact(run_id, f, artifact_path="checkpoints")
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id


@task(**RETRY)
def log_level_runs(parent: dict, level_param: str, entries: list[tuple[dict, str, list[dict] | None]]) -> list[str]:
    """One child run per method at one level: ``entries`` are (summary row, checkpoint path, path table or
    None); the geodesic's path table becomes ``path_metrics.parquet`` and ``accuracy_along_path.png``."""
    from .plots import accuracy_along_path
    from .summaries import GEODESIC_KEYS, METRIC_KEYS, run_key

    ids = []
    for row, ckpt, path_rows in entries:
        keys = METRIC_KEYS + (GEODESIC_KEYS if path_rows else ())
        params = {"method": row["method"], "budget": row["budget"], level_param: row["level"]}
        tables = {"path_metrics.parquet": path_rows} if path_rows else {}
        plots = ({"accuracy_along_path.png": accuracy_along_path(path_rows, f"geodesic to {row['level']:g}")}
                 if path_rows else None)
        ids.append(log_child_run(parent, run_key(row), params, {k: row[k] for k in keys}, tables, [ckpt], plots))
    return ids


@task(**RETRY)
def fail_parent_run(parent: dict, error: str) -> None:
    """Close the parent run as FAILED (with the error as a tag) so no run is left RUNNING after a crash."""
    from mlflow.entities import RunStatus

    client = _client()
    client.set_tag(parent["run_id"], "error", error[:4000])
    client.set_terminated(parent["run_id"], RunStatus.to_string(RunStatus.FAILED))


@task(**RETRY)
def finish_parent_run(parent: dict, summary_rows: list[dict], plots: dict[str, Any], title: str) -> str:
    """Log the summary table and plots on the parent run, close it, and publish Prefect artifacts
    (a results table and a link to the MLflow run)."""
    import pandas as pd
    from mlflow.entities import RunStatus
    from prefect.artifacts import create_link_artifact, create_table_artifact

    client = _client()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.parquet"
        pd.DataFrame(summary_rows).to_parquet(path, index=False)
        client.log_artifact(parent["run_id"], str(path))
        for name, draw in plots.items():
            p = Path(tmp) / name
            draw(p)
            client.log_artifact(parent["run_id"], str(p))
    client.set_terminated(parent["run_id"], RunStatus.to_string(RunStatus.FINISHED))
    create_table_artifact(key="results", table=summary_rows, description=title)
    uri = os.environ.get(UI_URL_ENV) or tracking_uri()  # the address a browser reaches, if the workers' differs
    link = (f"{uri.rstrip('/')}/#/experiments/{parent['experiment_id']}/runs/{parent['run_id']}"
            if uri.startswith("http") else f"{uri} (experiment {parent['experiment_id']}, run {parent['run_id']})")
    create_link_artifact(key="mlflow-run", link=link, description="MLflow parent run of this flow run")
    return parent["run_id"]


@task(**RETRY)
def log_continual_runs(parent: dict, params, entries: list[tuple[dict, list[list[float]], list[dict]]]) -> list[str]:
    """One child run per continual method: params ``method``, ``scenario``, ``tasks``; metrics ``acc_task_j``,
    ``avg_accuracy``, ``bwt``, ``wall_seconds``; ``accuracy_matrix.parquet``; for the geodesic also the path
    tables and the plots of every stage (accuracy along the geodesic and the straight line, PCA of both)."""
    from .plots import accuracy_along_paths, pca_paths

    ids = []
    for row, matrix, results in entries:
        k = len(matrix)
        metrics = {key: v for key, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tables = {"accuracy_matrix.parquet": [{"after_task": i + 1, **{f"task_{j + 1}": a for j, a in enumerate(r)}}
                                              for i, r in enumerate(matrix)]}
        plots = {}
        if row["method"] == "geodesic":
            tables["path_metrics.parquet"] = [r for res in results for r in res["path_rows"]]
            tables["linear_path_metrics.parquet"] = [r for res in results for r in res["line_rows"]]
            for res in results:
                stage = res["index"] + 1
                plots[f"accuracy_along_paths_task{stage}.png"] = accuracy_along_paths(
                    res["path_rows"], res["line_rows"], f"task {stage}: geodesic vs straight line")
                plots[f"pca_paths_task{stage}.png"] = pca_paths(res["path_rows"], res["line_rows"],
                                                                f"task {stage}: paths from w_{stage} to w_1:{stage - 1}")
        ids.append(log_child_run(parent, f"{row['method']}-{params.scenario}-{k}",
                                 {"method": row["method"], "scenario": params.scenario, "tasks": k}, metrics, tables,
                                 [results[-1]["path"]], plots))
    return ids


@task(**RETRY)
def log_connect_runs(parent: dict, params, summary: list[dict], tables: dict[str, list[dict]],
                     geodesic_checkpoint: str) -> list[str]:
    """One child run per path (``geodesic``, ``linear``, ``bezier`` if trained): endpoint and path accuracies, lengths under g and
    Euclidean, ``final_distance_ratio``, wall time; ``path_metrics.parquet`` and the plots."""
    from .plots import chord_view, connect_accuracy_plot

    ids = []
    for row in summary:
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        plots = {"accuracy_along_paths.png": connect_accuracy_plot(tables, params), "paths_2d.png": chord_view(tables)}
        files = [geodesic_checkpoint] if row["method"] == "geodesic" else []
        ids.append(log_child_run(parent, f"{row['method']}-{params.model}-{params.dataset}",
                                 {"method": row["method"], "model": params.model, "dataset": params.dataset},
                                 metrics, {"path_metrics.parquet": tables[row["method"]]}, files, plots))
    return ids
