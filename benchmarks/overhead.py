"""Orchestration overhead of the sparsify flow: wall time through Prefect + MLflow against the compute tasks.

Runs the flow once (one worker thread, fresh output folder, so nothing is cached) and reads the task runs
back from the Prefect API. Overhead = flow-run wall time minus the time spent in the compute tasks
(training, geodesic segments, projection, baselines, data fingerprint), as a fraction of the flow-run wall
time; the Prefect server's start (ephemeral mode) is reported separately since it is paid once per process.

    python benchmarks/overhead.py --data-dir ../shared/data [--sparsity 90 --sparsity 98]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")
COMPUTE = ("train_network", "geodesic_segment", "final_projection", "oneshot_baseline", "finetune_baseline",
           "fingerprint_data", "given_checkpoint")


async def _task_times(flow_run_id) -> dict[str, float]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                           task_run_filter=TaskRunFilter(), limit=200)
        flow = await client.read_flow_run(flow_run_id)
    out: dict[str, float] = {"__flow__": flow.total_run_time.total_seconds()}
    for r in runs:
        name = r.name.rsplit("-", 1)[0]
        out[name] = out.get(name, 0.0) + r.total_run_time.total_seconds()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--sparsity", type=float, action="append")
    args = ap.parse_args()
    from geodesic_core.data import resolve_data_dir

    data_dir = str(resolve_data_dir(args.data_dir))  # before leaving the current directory
    work = tempfile.mkdtemp(prefix="geodesic-overhead-")
    os.chdir(work)
    os.environ["GEODESIC_OUTPUT_DIR"] = os.path.join(work, "outputs")
    from flows.cli import run_local  # sets the quiet, local defaults
    from flows.sparsify import sparsify_flow
    from geodesic_core.config import SparsifyConfig

    params = SparsifyConfig(sparsity=args.sparsity or [90.0, 98.0])
    t0 = time.perf_counter()
    state = run_local(sparsify_flow.with_options(), params, data_dir=data_dir, experiment="overhead",
                      workers=1, return_state=True)
    total = time.perf_counter() - t0
    if not state.is_completed():
        raise SystemExit(f"the flow run did not complete: {state}")
    times = asyncio.run(_task_times(state.state_details.flow_run_id))
    flow_wall = times.pop("__flow__")
    compute = sum(v for k, v in times.items() if k in COMPUTE)
    tracking = sum(v for k, v in times.items() if k not in COMPUTE)
    print(f"process wall {total:.1f} s; flow run {flow_wall:.1f} s (server start and teardown "
          f"{total - flow_wall:.1f} s, once per process)")
    for k, v in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"  {k:22s} {v:8.2f} s")
    print(f"compute tasks {compute:.1f} s, tracking tasks {tracking:.1f} s, "
          f"orchestration between tasks {flow_wall - compute - tracking:.1f} s")
    print(f"overhead inside the flow run: {(flow_wall - compute) / flow_wall:.1%} "
          f"(of which MLflow tracking {tracking / flow_wall:.1%}); including server start: "
          f"{(total - compute) / total:.1%}")


if __name__ == "__main__":
    main()
