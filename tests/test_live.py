"""Watching a run: live metric histories in MLflow (batched, one point per step), progress (plain lines off a
terminal, a Prefect progress artifact per long task), `geodesic runs`, and one source of defaults per flow."""

import re

import pytest

from flows.cli import build_parser, main


def test_a_step_logged_before_a_kill_is_not_logged_again(tmp_path):
    from mlflow import MlflowClient

    from tasks.live import History

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    first = History(run_id, client)
    for step in range(10):
        first.add(step, {"distance": 10.0 - step, "path_length": float(step)})
    assert first.flush() == 20
    again = History(run_id, client)  # the resumed task computes steps 5..14 again
    for step in range(5, 15):
        again.add(step, {"distance": 10.0 - step, "path_length": float(step), "nan": float("nan")})
    again.add(14, {"distance": -99.0})  # a later point at the same step replaces the earlier
    assert again.flush() == 10
    for key in ("distance", "path_length"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(15)), key
    assert {m.step: m.value for m in client.get_metric_history(run_id, "distance")}[14] == -99.0
    assert client.get_metric_history(run_id, "nan") == []


def test_the_flows_defaults_are_the_same_in_the_help_the_form_and_the_run():
    from prefect.utilities.callables import parameter_schema

    from flows.connect import connect_flow
    from flows.continual import continual_flow
    from flows.sparsify import sparsify_flow
    from geodesic_core.connect import ConnectConfig
    from geodesic_core.continual import ContinualConfig
    from geodesic_core.sparsify import SparsifyConfig

    for cmd, flow, cls in (("sparsify", sparsify_flow, SparsifyConfig), ("continual", continual_flow, ContinualConfig),
                           ("connect", connect_flow, ConnectConfig)):
        run = cls()  # what a run with no options uses
        schema = parameter_schema(flow.fn).model_dump()
        defs = schema["definitions"]
        helps = {a.dest: a.help for a in build_parser()._subparsers._group_actions[0].choices[cmd]._actions}
        for nested in ("geo", "train"):
            ref = defs[cls.__name__]["properties"][nested]["$ref"].split("/")[-1]
            for name, value in getattr(run, nested).model_dump().items():
                form = defs[ref]["properties"][name].get("default")  # what the Prefect UI's form pre-fills
                assert form == value, f"{cmd}: {nested}.{name} form {form} != run {value}"
                if f"{nested}.{name}" in helps:
                    assert f"(default: {value})" in helps[f"{nested}.{name}"], f"{cmd}: --{nested}.{name}"
    assert SparsifyConfig().geo.eta == 0.2 and SparsifyConfig(geo={"anchor": 0.5}).geo.eta == 0.2
    assert ContinualConfig().resolved().geo.temperature == 10.0 and ConnectConfig().geo.max_steps == 500


def test_a_run_reports_progress_and_live_metrics_and_lists_its_runs(harness, workdir, data_dir, capfd):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType
    from prefect.settings import PREFECT_API_URL

    # the CLI in a process of its own, its output a pipe (not a terminal), against the test's Prefect server
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "GEODESIC_OUTPUT_DIR": str(workdir / "outputs"), "GEODESIC_LOG_SECONDS": "1"}
    args = ["sparsify", "--data-dir", data_dir, "--sparsity", "90", "--schedule", "cubic", "--stages", "2", "--geo.max-steps", "6",
            "--train.epochs", "1", "--finetune.epochs", "1", "--no-finetune.equal-time", "--eval-every", "3"]
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    # plain log lines, no control characters (no cursor moves, colours, carriage returns)
    bad = re.search(r".{0,40}[\x00-\x08\x0b-\x1f\x7f].{0,20}", text)
    assert bad is None, repr(bad.group())
    assert "geodesic 90%, stage 1/2: started (at most 6 steps)" in text
    assert re.search(r"geodesic 90%, stage 2/2: done, \d+ steps in [\d.]+ s \(distance", text)
    assert re.search(r"train lenet300 on mnist \(seed 0\): step \d+/469", text)  # a line while it ran
    assert re.search(r"train lenet300 on mnist \(seed 0\): done, 469 steps", text)

    async def progress():
        async with get_client() as c:
            return await c.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])))

    import asyncio

    arts = asyncio.run(progress())
    titles = {a.description: a.data for a in arts}
    # every long task kept a progress artifact, finished at 100%
    for title in ("geodesic 90%, stage 1/2", "geodesic 90%, stage 2/2", "oneshot 90", "finetune 90", "distill 90",
                  "train lenet300 on mnist (seed 0)"):
        assert titles.get(title) == 100.0, (title, titles)

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("geodesic-sparsify")
    runs = client.search_runs([exp.experiment_id])
    geo = next(r for r in runs if r.info.run_name == "geodesic-90")
    steps = int(geo.data.metrics["steps"])
    assert [m.step for m in client.get_metric_history(geo.info.run_id, "step_length")] == list(range(1, steps + 1))
    # `geodesic runs` prints what MLflow holds
    assert main(["runs", "--experiment", "geodesic-sparsify", "--csv"]) == 0
    lines = capfd.readouterr().out.strip().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert {"method", "level", "test_accuracy", "wall_seconds", "status"} <= set(header)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(rows) == len(children)
    got = {(r["method"], r["budget"]): float(r["test_accuracy"]) for r in rows if r["method"] != "train"}
    want = {(r.data.params["method"], r.data.params["budget"]): r.data.metrics["test_accuracy"]
            for r in children if r.data.params["method"] != "train"}
    assert got == pytest.approx(want) and all(r["status"] == "FINISHED" for r in rows)
    assert main(["runs", "--experiment", "no-such-experiment"]) == 2
    assert "experiments there: " in capfd.readouterr().err


def test_bar_mode_draws_rows_and_prints_prefects_logs_above_them():
    import logging

    from geodesic_core.train import TrainStep
    from tasks.live import DISPLAY, Live, ReportConfig

    import torch

    cfg = ReportConfig(progress="bar", live_metrics=False)
    with Live("a", 10, cfg=cfg) as a, Live("b", cfg=cfg) as b:
        assert DISPLAY.rows == 2 and DISPLAY.progress is not None
        for step in range(1, 11):
            a.advance(distance="d")
            b.train_step(TrainStep(step, 0, torch.tensor(1.0), torch.eye(4), torch.tensor([0, 1, 2, 0]), 0.1, 10, step == 10), every=5)
        logging.getLogger("prefect.test").info("a log line")
        assert b.total == 10 and b.status["acc"] == "acc 75.0%"
    assert DISPLAY.rows == 0 and DISPLAY.progress is None and DISPLAY.swapped == []
    with pytest.raises(Exception, match="GEODESIC_PROGRESS"):
        ReportConfig.from_env(progress="fancy")


def test_a_retried_geo_step_is_a_metric_at_its_step():
    """A Geo step that overflowed and was taken again shorter (`GeoConfig.nonfinite_retries`) shows in MLflow as the
    metric ``nonfinite_retries`` at that step; a step that did not overflow logs no such point."""
    import torch

    from geodesic_core.geo import StepInfo
    from tasks.live import Live, ReportConfig

    logged = []
    with Live("g", 4, cfg=ReportConfig(progress="off", live_metrics=False)) as live:
        live.log = lambda step, values: logged.append((step, values))
        for step, retries in ((1, 0), (2, 2), (3, 0)):
            live.geo_step(StepInfo(step, 5.0 - step, 1.0, 0.1, 0.1 * step, 0.0, 0.0, torch.zeros(3), retries))
    assert [(s, v) for s, v in logged if "nonfinite_retries" in v] == [(2, {"nonfinite_retries": 2})]
    assert {s for s, v in logged if "step_length" in v} == {1, 2, 3}


def test_an_option_not_given_keeps_the_environments_setting(monkeypatch):
    from flows.common import RunnerConfig
    from tasks.live import ReportConfig

    monkeypatch.setenv("GEODESIC_PROGRESS", "off")
    monkeypatch.setenv("GEODESIC_LIVE_METRICS", "false")
    monkeypatch.setenv("GEODESIC_WORKERS", "3")
    assert ReportConfig.from_env(progress=None, live_metrics=None) == ReportConfig(progress="off", live_metrics=False)
    assert ReportConfig.from_env(progress="log", live_metrics=None).progress == "log"
    assert RunnerConfig.from_env(task_runner=None, workers=None, dask_address=None).workers == 3


def test_a_users_sqlite_store_keeps_artifacts_beside_it_and_the_link_says_how_to_open_it(tmp_path, monkeypatch):
    from tasks.tracking import artifact_location, mlflow_ui_link

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'db' / 'runs.db'}")
    assert artifact_location() == (tmp_path / "db" / "mlartifacts").as_uri()  # not ./mlruns of the current folder
    link, how = mlflow_ui_link({"experiment_id": "3", "run_id": "abc"})
    assert link == "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'db' / 'runs.db'}" in how
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert artifact_location() is None  # a server keeps its own setting
    monkeypatch.setenv("GEODESIC_MLFLOW_UI_URL", "https://mlflow.example.org")
    assert mlflow_ui_link({"experiment_id": "3", "run_id": "abc"})[0] == "https://mlflow.example.org/#/experiments/3/runs/abc"
