"""Helpers shared by the flows."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Literal

from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

from geodesic_core import InputError
from geodesic_core.plugins import ALLOWED_MODULES_ENV
from tasks.tracking import fail_parent_run


def guard_imports_of_worker_runs() -> None:
    """A flow run a worker started (Prefect sets ``PREFECT__FLOW_RUN_ID`` for it) has its parameters from whoever
    reached the run form: an import path in them may name only the modules the worker's environment lists in
    ``$GEODESIC_ALLOWED_MODULES`` (none if unset there). The local user's own command is not restricted.
    Runs when a flow module is imported, before Prefect validates the run's parameters."""
    if os.environ.get("PREFECT__FLOW_RUN_ID"):
        os.environ.setdefault(ALLOWED_MODULES_ENV, "")


guard_imports_of_worker_runs()


def raise_first_failure(futures: Iterable) -> None:
    """Wait for every future; if any task failed, raise that task's own error (in submission order), not the
    "upstream did not complete" state its dependants end in."""
    futures = list(futures)
    for f in futures:
        f.wait()
    for f in futures:
        if f.state.is_failed() and "Upstream task run" not in (f.state.message or ""):
            f.result()  # raises the task's exception


@contextmanager
def closing_parent_on_failure(parent: dict) -> Iterator[dict]:
    """A crash inside closes the MLflow parent run as FAILED (with the error) instead of leaving it RUNNING."""
    try:
        yield parent
    except BaseException as exc:
        fail_parent_run(parent, f"{type(exc).__name__}: {exc}")
        raise


# --- task runner: the thread pool on one machine, or Dask across machines ------------------------------------
TASK_RUNNER_ENV, WORKERS_ENV, DASK_ADDRESS_ENV = "GEODESIC_TASK_RUNNER", "GEODESIC_WORKERS", "GEODESIC_DASK_ADDRESS"


class ComputeThreadPoolTaskRunner(ThreadPoolTaskRunner):
    """Prefect's thread pool, with the PyTorch intra-op threads of each worker thread set to cores // workers.

    Why: PyTorch's CPU kernels run on OpenMP (libgomp), which keeps one thread team per calling thread; once
    the teams hold more threads than there are cores, libgomp stops spin-waiting between parallel regions and
    every small kernel pays a sleep and wake-up. Measured on 2 cores: a geodesic stage took 4.7 s in the main
    thread and 8.7 s in a task thread once a second team existed; two tasks at one intra-op thread each ran
    side by side at the speed of one 2-thread team. So the flows run all compute in these worker threads, and
    the threads split the cores between them.
    """

    def __init__(self, max_workers: int | None = None):
        super().__init__(max_workers=max_workers)
        self.torch_threads = max(1, (os.cpu_count() or 1) // self._max_workers)

    def _register_worker_thread(self) -> None:  # the executor's initializer: runs once in every worker thread
        import torch

        super()._register_worker_thread()
        torch.set_num_threads(self.torch_threads)


def in_fresh_thread(fn, *args, **kwargs):
    """Call ``fn`` in a short-lived thread and return its result (or raise its error): PyTorch work done
    before a flow (checking a checkpoint) then leaves no OpenMP team behind in the main thread."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller
            out["error"] = exc

    thread = threading.Thread(target=run, name="geodesic-preflight")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


class RunnerConfig(BaseModel):
    """Where a flow's tasks run. ``task_runner``: ``thread`` (Prefect's thread pool in the flow's process, the
    default) or ``dask`` (`prefect-dask`: the tasks run in Dask worker processes). ``workers``: threads of the
    pool, or worker processes of the local Dask cluster started when no ``dask_address`` is given.
    ``dask_address``: scheduler of an existing Dask cluster (``tcp://host:8786``), for several machines.

    The same names are CLI options (``--task-runner``, ``--workers``, ``--dask-address``) and environment
    settings (``GEODESIC_TASK_RUNNER``, ``GEODESIC_WORKERS``, ``GEODESIC_DASK_ADDRESS``) that a deployment
    sets through its job variables; the flows read them when they are imported.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_runner: Literal["thread", "dask"] = "thread"
    workers: PositiveInt = 2
    dask_address: str | None = None

    @classmethod
    def from_env(cls, **override) -> "RunnerConfig":
        env = {"task_runner": os.environ.get(TASK_RUNNER_ENV), "workers": os.environ.get(WORKERS_ENV),
               "dask_address": os.environ.get(DASK_ADDRESS_ENV)}
        given = {k: v for k, v in override.items() if v is not None}  # an option not given keeps the env's
        return cls(**{k: v for k, v in {**env, **given}.items() if v not in (None, "")})

    def build(self):
        """The Prefect task runner these settings describe."""
        if self.task_runner == "thread":
            return ComputeThreadPoolTaskRunner(max_workers=self.workers)
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise InputError("the dask task runner needs prefect-dask: pip install 'weight-space-geodesics[dask]'") \
                from None
        if self.dask_address:
            return DaskTaskRunner(address=self.dask_address)
        # one thread per worker process (Dask sets OMP_NUM_THREADS=1 in them); the scheduler, the workers and
        # the dashboard listen on 127.0.0.1 only
        return DaskTaskRunner(cluster_kwargs={"n_workers": self.workers, "threads_per_worker": 1,
                                              "processes": True, "host": "127.0.0.1",
                                              "dashboard_address": None})


def default_task_runner():
    """The task runner of the flow decorators: the environment's settings, else a 2-thread pool."""
    try:
        return RunnerConfig.from_env().build()
    except ValidationError as exc:
        raise InputError(f"bad task-runner setting in the environment ({TASK_RUNNER_ENV}, {WORKERS_ENV}, "
                         f"{DASK_ADDRESS_ENV}): {exc.errors()[0]['msg']}") from None


# --- paths from parameters stay inside the configured roots ---------------------------------------------------
ALLOWED_ROOTS_ENV = "GEODESIC_ALLOWED_ROOTS"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def confine_paths(data_dir: str | None, checkpoints: Iterable[str | None] = ()) -> str:
    """Check the paths a flow takes from its parameters before any work; return the resolved data root.

    A flow run may be created by anyone who can reach the Prefect UI, so its parameters cannot point it at
    arbitrary files of the worker. ``data_dir`` must lie inside the configured data root
    (``$GEODESIC_DATA_DIR``, when set); a checkpoint, after symlinks and ``..`` are resolved, inside the data
    root, the output root (``$GEODESIC_OUTPUT_DIR``, default ``./outputs``) or a folder listed in
    ``$GEODESIC_ALLOWED_ROOTS`` (``os.pathsep``-separated; the CLI adds the folders of the checkpoints its
    own user names).
    """
    from geodesic_core.data import DATA_DIR_ENV, resolve_data_dir
    from tasks.common import output_dir

    configured = os.environ.get(DATA_DIR_ENV)
    root = resolve_data_dir(data_dir)
    if data_dir and configured and not _inside(root, Path(configured).expanduser().resolve()):
        raise InputError(f"data_dir {data_dir!r} is outside the configured data root {configured} "
                         f"(${DATA_DIR_ENV}); give a folder inside it, or leave data_dir empty to use it")
    roots = [root, output_dir()] + [Path(p).expanduser().resolve()
                                    for p in os.environ.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep) if p]
    for ck in checkpoints:
        if ck and not any(_inside(Path(ck).expanduser().resolve(), r) for r in roots):
            raise InputError(f"checkpoint {ck!r} is outside the folders a flow may read ({', '.join(map(str, roots))}); "
                             f"copy it under the output root or add its folder to ${ALLOWED_ROOTS_ENV}")
    return str(root)
