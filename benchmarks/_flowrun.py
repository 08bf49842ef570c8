"""Run one of the project's flows on the embedded defaults in a fresh temporary working directory (nothing
cached, so every time is measured) and return its summary rows."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_fresh(command: str, argv: list[str], config_cls, flow_module: str, flow_name: str):
    """Parse ``argv`` as `geodesic <command>` options, run the flow, return (params, summary, seconds, load): ``load``
    is {MLflow child run: (the machine's, the flow process's) mean CPU use in % of all cores while it ran}, from
    the system metrics the flow records on its parent run (`tasks.tracking.recording_system_metrics`, sampled
    every 5 s here): what an equal-time peer's budget was measured under, beside what it trained under."""
    import importlib

    from flows.cli import build_parser, config_from_args, run_local, runner_from_args

    args = build_parser().parse_args([command, *argv])
    params = config_from_args(config_cls, args)
    module = importlib.import_module(flow_module)
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["GEODESIC_OUTPUT_DIR"] = str(Path(tmp) / "outputs")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "5")
        t0 = time.perf_counter()
        try:
            summary = run_local(getattr(module, flow_name), params, data_dir=data_dir, experiment=module.EXPERIMENT,
                                runner=runner_from_args(args))
            seconds = time.perf_counter() - t0
            load = _child_loads()
        finally:
            os.chdir(cwd)
    return params, summary, seconds, load


def _child_loads() -> dict[str, tuple[float, float | None]]:
    """{child run: (the machine's, the flow process's mean CPU use)} of the one parent run in ./mlflow.db (see
    `run_fresh`): the ``machine_cpu_percent`` and ``process_cpu_percent`` the flow logged on each child as it ended
    (`tasks.tracking.recording_system_metrics`)."""
    from mlflow import MlflowClient

    from tasks.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r.info.run_id for r in runs if r.data.tags.get("geodesic.role") == "parent"]
    if len(parents) != 1:
        return {}
    return {r.info.run_name: (r.data.metrics["machine_cpu_percent"], r.data.metrics.get("process_cpu_percent"))
            for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0]
            and "machine_cpu_percent" in r.data.metrics}


def print_load(load: dict[str, tuple[float, float | None]]) -> None:
    """One line: the machine's and the flow process's mean CPU use while each child run ran, so an equal-time
    comparison can be read against the load its budget was measured under: the machine's use above the process's
    is other work's (another flow, a test run), and a process that got less than its threads could use ran
    starved. Children that ran side by side in the flow share its process's number."""
    if load:
        cores = os.cpu_count() or 1
        cell = lambda m, p: f"{m:.0f}% / {'n/a' if p is None else f'{p:.0f}%'}"  # noqa: E731
        print(f"\nCPU use while each ran (MLflow system metrics, % of {cores} cores: the machine / this flow's "
              "process): " + ", ".join(f"{name} {cell(*pct)}" for name, pct in sorted(load.items())))
    else:
        print("\nmachine CPU use: not recorded (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false)")


def with_default(argv: list[str], flag: str) -> list[str]:
    """``argv`` with the boolean option ``--flag`` turned on unless it already says ``--flag`` or ``--no-flag``."""
    return argv if any(a in (f"--{flag}", f"--no-{flag}") for a in argv) else [f"--{flag}", *argv]


LEVEL = 0.4  # points within which two accuracies are "level": about two standard errors on 10,000 images at 96%


def versus(geodesic: float, peer: float, tolerance: float = LEVEL) -> str:
    """'ahead (+d)', 'level (d)' or 'behind (-d)': the geodesic's number against a peer's, level within
    ``tolerance`` points."""
    d = geodesic - peer
    return f"{'ahead' if d > tolerance else 'behind' if d < -tolerance else 'level'} ({d:+.2f})"
