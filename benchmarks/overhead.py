"""Orchestration overhead: the sparsify flow through Prefect + MLflow against the same core functions called
directly, side by side in one process.

* ``direct``: Algorithm 1 and its baselines as a plain script would run them: the dense network trained in
  memory, then for every level the stages (`geodesic_stage`), the final projection, the one-shot,
  prune + fine-tune and prune + distillation baselines (fixed budget and equal time), with the same evaluation along the path; no
  checkpoints, no Prefect, no MLflow.
* ``flow``: `geodesic sparsify` with the same parameters on the embedded defaults (Prefect's ephemeral
  server, MLflow on SQLite, checkpoints, cache keys, plots, artifacts), in a fresh folder so nothing is
  cached, with ``--workers`` task-runner threads: 1 runs the levels one after another as ``direct`` does, 2
  (the default of `geodesic sparsify`) runs two levels side by side, each on half the cores.

``direct`` runs in a thread of its own that ends before the flow starts, as a separate script would: PyTorch
keeps an OpenMP thread team per calling thread, and a team left behind would slow the flow's threads (see
`flows.common.ComputeThreadPoolTaskRunner`).

Overhead = flow wall / direct wall − 1, reported with and without the ephemeral server's start (paid once
per process; zero against a running server). Both orders of the two runs are measured (``--repeats``) to
average out warm-up.

``--live-cost`` measures instead what watching a run costs: the same flow with live reporting on (progress
lines, Prefect progress artifacts, metric histories sent to MLflow every 20 s) and off (``--progress off
--no-live-metrics``: the histories then written once at the end), side by side, both orders, and the time
the tasks spend inside the reporting calls (`tasks.live.COST`), which the spread of whole runs on a busy machine
cannot resolve below a few percent.

    python benchmarks/overhead.py --data-dir ../shared/data [--sparsity 90 --sparsity 98] [--repeats 1]
``--system-metrics-cost`` measures what the system metrics cost (`tasks.tracking.recording_system_metrics`: MLflow's
monitor on every flow's parent run): one sample of MLflow's monitor (CPU, memory, disk, network), the run-status check
and the logging into a SQLite store, repeated, as CPU time per sample and as the share of one core at the sampling
interval.

    python benchmarks/overhead.py --data-dir ../shared/data --live-cost [--repeats 2]
    python benchmarks/overhead.py --system-metrics-cost [--repeats 200]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")


def direct(params, data_dir: str) -> tuple[float, list[dict]]:
    """The flow's computation, in memory, by the core functions; returns (seconds, rows)."""

    from geodesic_core import build_model, evaluate, flat_params, param_slices, sparsity
    from geodesic_core.data import get_spec, load_split
    from geodesic_core.sparsify import (fidelity_probe, geodesic_stage, project_to_level, prune_finetune,
                                        run_schedule)
    from geodesic_core.train import train
    from tasks.geodesic import _path_recorder
    from tasks.live import Live, ReportConfig

    t0 = time.perf_counter()
    spec = get_spec(params.dataset)
    train_split, test = load_split(params.dataset, True, data_dir), load_split(params.dataset, False, data_dir)
    dense = build_model(params.model, spec.num_classes, spec.in_channels, spec.image_size, seed=params.seed)
    train(dense, train_split, params.train.model_copy(update={"seed": params.seed}), augment=spec.augment)
    evaluate(dense, test)
    dense.requires_grad_(False)
    rows = []
    geo_cfg = params.geo.model_copy(update={"seed": params.seed})
    for level in params.levels():
        model = copy.deepcopy(dense).requires_grad_(True)
        slices = param_slices(model)
        path: list[dict] = []
        silent = Live("direct", cfg=ReportConfig(progress="off", live_metrics=False)).__enter__()
        record, spent, _ = _path_recorder(model, slices, test, params.eval_every, path, silent)
        geo_seconds = [0.0]

        def run_stage(stage_level, start, attempt):
            t = time.perf_counter()
            spent[0] = 0.0
            res = geodesic_stage(model, slices, stage_level, train_split.x, geo_cfg, refresh_every=params.refresh_every,
                                 scope=params.scope, anchor=dense, callbacks=[record], start_step=start, stage=attempt)
            geo_seconds[0] += time.perf_counter() - t - spent[0]
            evaluate(model, test)
            return res

        run_schedule(model, params.stage_schedule(level), run_stage, dense,
                     fidelity_probe(train_split.x, seed=params.seed))
        project_to_level(model, level, scope=params.scope)
        acc, _ = evaluate(model, test)
        rows.append({"method": "geodesic", "level": level, "test_accuracy": acc,
                     "sparsity": sparsity(flat_params(model), slices)})
        oneshot = copy.deepcopy(dense)
        project_to_level(oneshot, level, scope=params.scope)
        rows.append({"method": "oneshot", "level": level, "test_accuracy": evaluate(oneshot, test)[0]})
        budgets = [None, geo_seconds[0]] if params.finetune.equal_time else [None]
        for distill in ([False, True] if params.finetune.distill else [False]):  # on the labels; label-free
            for budget in budgets:
                ft = copy.deepcopy(dense).requires_grad_(True)
                prune_finetune(ft, level, train_split, params.finetune.train_config(params.seed, distill=distill),
                               scope=params.scope, wall_seconds=budget, augment=spec.augment,
                               teacher=dense if distill else None)
                name = "distill" if distill else "finetune"
                rows.append({"method": name if budget is None else f"{name} (equal time)", "level": level,
                             "test_accuracy": evaluate(ft, test)[0]})
    return time.perf_counter() - t0, rows


async def _flow_run_seconds(flow_run_id) -> float:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return (await client.read_flow_run(flow_run_id)).total_run_time.total_seconds()


def through_flow(params, data_dir: str, workers: int, report=None) -> tuple[float, float, list[dict]]:
    """The flow on the embedded defaults in a fresh folder; returns (process seconds, flow-run seconds, rows)."""
    from flows.cli import run_local
    from flows.common import RunnerConfig
    from flows.sparsify import sparsify_flow
    from tasks.common import split

    split.cache_clear()  # the flow loads its data itself, as a fresh process would
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="geodesic-overhead-") as work:
        os.chdir(work)
        os.environ["GEODESIC_OUTPUT_DIR"] = os.path.join(work, "outputs")
        os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = os.path.join(work, "outputs", "prefect-results")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            t0 = time.perf_counter()
            state = run_local(sparsify_flow, params, data_dir=data_dir, experiment="overhead",
                              runner=RunnerConfig(workers=workers), report=report, return_state=True)
            total = time.perf_counter() - t0
            if not state.is_completed():
                raise SystemExit(f"the flow run did not complete: {state}")
            rows = state.result()
            flow_seconds = asyncio.run(_flow_run_seconds(state.state_details.flow_run_id))
        finally:
            os.chdir(cwd)
    return total, flow_seconds, rows


def live_cost(params, data_dir: str, workers: int, repeats: int) -> None:
    """The flow with live reporting on and off, side by side (alternating which runs first)."""
    from tasks.live import COST, ReportConfig

    settings = {"on": ReportConfig(progress="log", live_metrics=True),
                "off": ReportConfig(progress="off", live_metrics=False)}
    times: dict[str, list[float]] = {"on": [], "off": []}
    inside: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(repeats):
        for which in (("on", "off") if r % 2 == 0 else ("off", "on")):
            COST.reset()
            _, run_seconds, rows = through_flow(params, data_dir, workers, settings[which])
            times[which].append(run_seconds)
            inside[which].append(COST.seconds)
            geo = [x for x in rows if x["method"] == "geodesic"]
            print(f"run {r + 1}, live reporting {which:3s}: flow run {run_seconds:.1f} s, of it the geodesic's own "
                  f"{sum(x['wall_seconds'] for x in geo):.1f} s (the equal-time fine-tuning gets as much again); "
                  "geodesic " + ", ".join(f"{x['level']:g}%: {x['test_accuracy']:.2f}" for x in geo)
                  + f"; {COST.seconds:.2f} s inside the live-reporting calls ({COST.calls} calls, "
                  f"{COST.seconds / run_seconds:.2%} of the run)", flush=True)
    on, off = (sum(times[k]) / len(times[k]) for k in ("on", "off"))
    cost_on, cost_off = (sum(inside[k]) / len(inside[k]) for k in ("on", "off"))
    print(f"\nmean over {repeats} pair(s): on {on:.1f} s, off {off:.1f} s: {on / off - 1:+.1%} of the flow run's "
          f"wall time, within the spread of identical runs (off: {min(times['off']):.1f}-{max(times['off']):.1f} s)")
    print(f"time the tasks spend inside the live-reporting calls: on {cost_on:.2f} s, off {cost_off:.2f} s; "
          f"the difference is {(cost_on - cost_off) / off:.2%} of the flow run's wall time (target: at most 2%)")


def system_metrics_cost(samples: int) -> None:
    """CPU and wall time of one sample of MLflow's system-metrics monitor as a flow runs it (collect, the run-status
    check, log), into a fresh SQLite store; printed as a share of one core at the sampling interval."""
    from mlflow import MlflowClient
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("system-metrics-cost")).info.run_id
        monitor = SystemMetricsMonitor(run_id, tracking_uri=uri)
        interval = monitor.sampling_interval
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(samples):
            monitor.collect_metrics()
            MlflowClient(uri).get_run(run_id)  # the monitor's check that the run is still RUNNING
            monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
        wall, cpu = (time.perf_counter() - wall) / samples, (time.process_time() - cpu) / samples
        logged = len(client.get_metric_history(run_id, "system/cpu_utilization_percentage"))
    print(f"one system-metrics sample ({logged} logged): {1000 * wall:.1f} ms wall, {1000 * cpu:.1f} ms CPU; at one "
          f"sample every {interval:g} s: {cpu / interval:.3%} of one core")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--sparsity", type=float, action="append", help="levels (default: the flow's 50, 90, 98)")
    ap.add_argument("--repeats", type=int, default=1, help="pairs of runs, alternating which goes first")
    ap.add_argument("--workers", type=int, default=1, help="task-runner threads of the flow (default 1)")
    ap.add_argument("--live-cost", action="store_true", help="measure live reporting on against off instead")
    ap.add_argument("--system-metrics-cost", action="store_true",
                    help="measure one system-metrics sample instead (--repeats samples, 200 if not given)")
    args = ap.parse_args()
    if args.system_metrics_cost:
        return system_metrics_cost(args.repeats if args.repeats > 1 else 200)
    from flows.cli import QUIET_ENV
    from flows.common import in_fresh_thread
    from geodesic_core.sparsify import SparsifyConfig
    from geodesic_core.data import resolve_data_dir

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    data_dir = str(resolve_data_dir(args.data_dir))
    params = SparsifyConfig(**({"sparsity": args.sparsity} if args.sparsity else {}))
    if args.live_cost:
        return live_cost(params, data_dir, args.workers, args.repeats)
    results = []
    for r in range(args.repeats):
        order = ("direct", "flow") if r % 2 == 0 else ("flow", "direct")
        got = {}
        for which in order:
            got[which] = (in_fresh_thread(direct, params, data_dir) if which == "direct"
                          else through_flow(params, data_dir, args.workers))
        (d, d_rows), (f_total, f_run, f_rows) = got["direct"], got["flow"]
        results.append((d, f_total, f_run))
        print(f"pair {r + 1} ({' then '.join(order)}): direct {d:.1f} s; flow {f_total:.1f} s in the process, "
              f"{f_run:.1f} s as the flow run (without the ephemeral server's start and stop)")
        for row in d_rows:
            flow_row = next(x for x in f_rows if x["level"] == row["level"] and x["method"].startswith(
                row["method"].split(" ")[0]) and (("equal" in row["method"]) == (x.get("budget") == "equal_time")))
            print(f"   {row['method']:22s} {row['level']:5g}%  test accuracy: direct {row['test_accuracy']:6.2f}, "
                  f"flow {flow_row['test_accuracy']:6.2f}")
    d = sum(r[0] for r in results) / len(results)
    f_total = sum(r[1] for r in results) / len(results)
    f_run = sum(r[2] for r in results) / len(results)
    print(f"\nmean over {len(results)} pair(s): direct {d:.1f} s, flow run {f_run:.1f} s, whole process {f_total:.1f} s")
    print(f"overhead of Prefect + MLflow + checkpoints: {f_run / d - 1:+.1%} of the direct time "
          f"(flow run), {f_total / d - 1:+.1%} including the ephemeral server's start and stop")


if __name__ == "__main__":
    main()
