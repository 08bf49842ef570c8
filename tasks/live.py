"""Live reporting of a long task while it runs: progress where the user is looking, metric histories in MLflow.

A task wraps its core call in a `Live` and feeds it from the core's callbacks:

* **progress**: a row of a `rich` progress display on a terminal (one row per running task, several side by
  side when tasks run concurrently; Prefect's log lines print above it), plain log lines through the task's
  Prefect logger when the output is not a terminal (CI, a worker's log: no control characters), and a Prefect
  progress artifact on the task run (``create_progress_artifact`` / ``update_progress_artifact``) that the
  Prefect UI shows;
* **metric histories**: the task's child run in MLflow is opened when the task starts (status RUNNING, with
  its params) and receives the path as metrics with ``step`` = the geodesic step or the SGD step, buffered and
  sent with ``log_batch`` at most every ``flush_seconds``. A step already in the run's history (logged before
  a kill, then computed again on resume) is not logged twice.

Settings (`ReportConfig`): ``--progress`` / ``GEODESIC_PROGRESS`` (auto, bar, log, off), ``--live-metrics`` /
``GEODESIC_LIVE_METRICS`` (on by default), ``GEODESIC_FLUSH_SECONDS`` and ``GEODESIC_LOG_SECONDS``.
Nothing here changes a result: the settings are not part of any cache key.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PositiveFloat, ValidationError

ENV = {"progress": "GEODESIC_PROGRESS", "live_metrics": "GEODESIC_LIVE_METRICS",
       "flush_seconds": "GEODESIC_FLUSH_SECONDS", "log_seconds": "GEODESIC_LOG_SECONDS"}
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


class ReportConfig(BaseModel):
    """How running tasks report. ``progress``: ``bar`` (a live display on the terminal), ``log`` (a plain line
    every ``log_seconds`` per task), ``off``, or ``auto`` (bar on a terminal, log otherwise). ``live_metrics``:
    send metric histories to the task's MLflow child run while it runs (every ``flush_seconds``: a batch to a
    SQLite store costs ~50 ms, so 20 s keeps the cost of watching under 1% of a task); off, the histories are
    written when the method's run is logged at the end. The Prefect progress artifacts are updated every
    ``log_seconds``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    progress: Literal["auto", "bar", "log", "off"] = "auto"
    live_metrics: bool = True
    flush_seconds: PositiveFloat = 20.0
    log_seconds: PositiveFloat = 30.0

    @classmethod
    def from_env(cls, **override) -> "ReportConfig":
        from geodesic_core import InputError

        values = {k: os.environ.get(v) for k, v in ENV.items()}
        try:
            given = {k: v for k, v in override.items() if v is not None}  # an option not given keeps the env's
            return cls(**{k: v for k, v in {**values, **given}.items() if v not in (None, "")})
        except ValidationError as exc:
            raise InputError(f"bad reporting setting ({', '.join(ENV.values())}): {exc.errors()[0]['msg']}") \
                from None

    def env(self) -> dict[str, str]:
        """The settings as environment variables (task threads and Dask worker processes read them)."""
        return {ENV[k]: str(v).lower() if isinstance(v, bool) else str(v) for k, v in self.model_dump().items()}

    def mode(self) -> str:
        if self.progress != "auto":
            return self.progress
        return "bar" if sys.stderr.isatty() else "log"


# --- the terminal display: one rich Progress per process, shared by the running tasks -------------------------
class _Display:
    """One `rich.progress.Progress` for every task of the process, started with the first row and stopped with
    the last: a row per running task; a finished task's row gives way to a line printed above the display.
    While it runs, Prefect's console log handlers print through its console (above the rows)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.progress = None
        self.rows = 0
        self.swapped: list = []

    def add(self, title: str, total: float | None) -> Any:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        with self.lock:
            if self.progress is None:
                self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24),
                                         MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                         TimeElapsedColumn(), TimeRemainingColumn(),
                                         console=Console(stderr=True), refresh_per_second=4, transient=True)
                self.progress.start()
                self._route_prefect_logs(self.progress.console)
            self.rows += 1
            return self.progress.add_task(title, total=total, status="")

    def update(self, row, **kwargs) -> None:
        if self.progress is not None:
            self.progress.update(row, **kwargs)

    def remove(self, row, line: str) -> None:
        """Take a finished task's row out of the display and print ``line`` above it."""
        with self.lock:
            if self.progress is None:
                return
            self.progress.remove_task(row)
            self.progress.console.print(line, highlight=False, markup=False)
            self.rows -= 1
            if self.rows == 0:
                self.progress.stop()
                self._route_prefect_logs(None)
                self.progress = None

    def _route_prefect_logs(self, console) -> None:
        from prefect.logging.handlers import PrefectConsoleHandler

        if console is None:
            for handler, old in self.swapped:
                handler.console = old
            self.swapped = []
            return
        loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
        for lg in loggers:
            for h in getattr(lg, "handlers", []):
                if isinstance(h, PrefectConsoleHandler) and all(h is not s for s, _ in self.swapped):
                    self.swapped.append((h, h.console))
                    h.console = console


DISPLAY = _Display()


# --- MLflow child runs ---------------------------------------------------------------------------------------
_children_lock = threading.Lock()
_opened: dict[tuple[str, str], str] = {}  # (parent run, key) -> child run opened by this process
_logged: dict[str, dict[str, set[int]]] = {}  # run created by this process -> {metric: steps sent}


def open_child_run(track: dict) -> str:
    """Find or create the child run ``track["key"]`` of the parent run ``track["parent"]`` and mark it RUNNING
    (params logged once: a run reopened on resume keeps its params). Returns its run id."""
    from .tracking import _client, find_or_create_child, log_params_once

    parent = track["parent"]
    opened = (parent["run_id"], track["key"])
    if opened in _opened:  # a later task of the same method in this process: the run is open already
        return _opened[opened]
    client = _client()
    with _children_lock:  # two tasks of one method starting together create one run
        run, created = find_or_create_child(client, parent, track["key"])
        run_id = run.info.run_id
        if created:
            _logged[run_id] = {}  # a new run: its history is what this process sends it
        elif run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
    log_params_once(client, run_id, track.get("params", {}))
    if not track.get("finish"):  # a run its one task closes may be reopened by a rerun of that task
        _opened[opened] = run_id
    return run_id


def forget_parent(run_id: str) -> None:
    """The parent run ended: a later flow run in this process (one that continues it) opens its children anew."""
    for opened in [k for k in _opened if k[0] == run_id]:
        _logged.pop(_opened.pop(opened, ""), None)


class History:
    """Metric points bound for one MLflow run, sent in batches; a (key, step) already in the run's history is
    skipped, so a step computed again after a kill is logged once (among pending points, the later replaces
    the earlier)."""

    def __init__(self, run_id: str, client=None):
        from .tracking import _client

        self.run_id, self.client = run_id, client or _client()
        self.pending: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        # a run this process created holds only what it sent (no query); another is asked once per metric
        self.fresh = run_id in _logged
        self.seen: dict[str, set[int]] = _logged.get(run_id, {})

    def add(self, step: int, values: dict[str, float | None]) -> None:
        now = int(time.time() * 1000)
        for k, v in values.items():
            if v is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.pending.append((k, float(v), now, int(step)))

    def flush(self) -> int:
        """Send what is pending (raises on a tracking error; the points stay pending). Returns points sent."""
        from mlflow.entities import Metric

        if not self.pending:
            return 0
        for key in {p[0] for p in self.pending} - set(self.seen):
            self.seen[key] = set() if self.fresh else {m.step for m in self.client.get_metric_history(self.run_id, key)}
        latest = {(key, step): (value, ts) for key, value, ts, step in self.pending}  # a later point replaces
        batch, kept = [], set()
        for (key, step), (value, ts) in latest.items():
            if step in self.seen[key] or not math.isfinite(value):
                continue
            kept.add((key, step))
            batch.append(Metric(key, value, ts, step))
        for i in range(0, len(batch), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i:i + MAX_BATCH])
        for key, step in kept:
            self.seen[key].add(step)
        self.pending = []
        return len(batch)


# --- what watching costs ---------------------------------------------------------------------------------------
class ReportingCost:
    """Wall seconds spent inside `Live`'s calls (progress, artifacts, metric flushes, child-run opening) by all
    threads of this process, counted once where calls nest: what the task threads lose to live reporting.
    ``benchmarks/overhead.py --live-cost`` reads it; `reset` before a run, `seconds` after."""

    def __init__(self) -> None:
        self._lock, self._local = threading.Lock(), threading.local()
        self.seconds, self.calls = 0.0, 0

    def reset(self) -> None:
        with self._lock:
            self.seconds, self.calls = 0.0, 0

    def timed(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            local = self._local
            if getattr(local, "depth", 0):
                return fn(*args, **kwargs)
            local.depth = 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                local.depth = 0
                dt = time.perf_counter() - t
                with self._lock:
                    self.seconds += dt
                    self.calls += 1
        return wrapper


COST = ReportingCost()


# --- one long task ---------------------------------------------------------------------------------------------
class Live:
    """Progress and live metrics of one long task (a context manager).

    ``title``: what runs ("geodesic 90%, stage 2/5"); ``total``: the units of work when known (an upper bound
    for a traversal: ``max_steps``, with ``upper_bound``); ``track``: ``{"parent": ..., "key": ..., "params": ...}``
    naming the MLflow child run the task's metrics belong to (None: progress only; see `tasks.tracking.child_track`).
    ``hold``: send the metric points only when the task ends, unless `discard` dropped them (a stage that may be
    rejected: its steps are taken again by the next attempt); the progress stays live.
    """

    def __init__(self, title: str, total: float | None = None, track: dict | None = None, *,
                 cfg: ReportConfig | None = None, upper_bound: bool = False, hold: bool = False):
        self.title, self.total, self.track, self.upper_bound = title, total, track, upper_bound
        self.hold = hold  # keep the metric points until the task ends (`discard` drops them: a rejected stage)
        self.cfg = cfg or ReportConfig.from_env()
        self.mode = self.cfg.mode()
        self.completed = 0.0
        self.undone = ""  # set by `discard`: said in the last line and the artifact
        self.status: dict[str, str] = {}
        self.history: History | None = None
        self.row = self.artifact = None
        self.logger = None
        self.warned = False

    # -- lifecycle
    @COST.timed
    def __enter__(self) -> "Live":
        now = time.monotonic()
        self.t0 = self.last_flush = self.last_log = self.last_artifact = now
        if self.track and self.cfg.live_metrics:
            try:
                self.history = History(open_child_run(self.track))
            except Exception as exc:  # tracking down: the compute goes on, the final logging task reports it
                self._warn(exc)
        if self.mode == "bar":
            self.row = DISPLAY.add(self.title, self.total)
        elif self.mode == "log":
            self.logger = _logger()
            self.logger.info("%s: started%s", self.title,
                             f" ({'at most ' if self.upper_bound else ''}{self.total:g} steps)" if self.total else "")
        if self.mode != "off" and _in_task_run():
            try:
                from prefect.artifacts import create_progress_artifact

                self.artifact = create_progress_artifact(0.0, description=self.title)
            except Exception as exc:
                self._warn(exc)
        return self

    @COST.timed
    def __exit__(self, exc_type, exc, tb) -> None:
        self._flush(final=True)
        if self.history is not None and self.track.get("finish"):
            self._close_run(failed=exc_type is not None)
        if exc_type is None and self.total:  # done: the bar is full (a traversal may stop before its limit)
            if self.upper_bound:
                self.total = max(self.completed, 1)
            else:
                self.completed = self.total
        if self.artifact is not None and exc_type is None:
            self._set_artifact(100.0, f"{self.title} ({self.undone})" if self.undone else None)
        state = "failed" if exc_type else self.undone or "done"
        line = (f"{self.title}: {state}, {self.completed:g} steps in {time.monotonic() - self.t0:.1f} s"
                + (f" ({self._status_text()})" if self.status else ""))
        if self.row is not None:
            DISPLAY.remove(self.row, line)
        elif self.logger is not None:
            self.logger.info("%s", line)

    # -- feeding it
    @COST.timed
    def advance(self, completed: float | None = None, **status: Any) -> None:
        """Progress: ``completed`` units so far (default: one more) and status fields (formatted as given)."""
        self.completed = self.completed + 1 if completed is None else completed
        for k, v in status.items():
            self.status[k] = _fmt(v)
        self._tick()

    @COST.timed
    def log(self, step: int, values: dict[str, Any]) -> None:
        """Metric points at ``step`` for the child run (buffered)."""
        if self.history is not None:
            self.history.add(step, values)

    @COST.timed
    def geo_step(self, info, path_offset: float = 0.0, start_distance: float | None = None) -> None:
        """One Geo step (a `geodesic_core.geo.StepInfo`): progress, distance and its fraction of the start
        distance, steps per second; metrics ``step_length`` and ``path_length`` (S(γ) so far, plus
        ``path_offset``, the length of the earlier segments) at the step, and ``distance`` to the target at the
        step before (the one the step started from); ``nonfinite_retries`` at a step that overflowed and was taken
        again shorter."""
        if not hasattr(self, "d0"):
            self.d0 = start_distance if start_distance is not None else info.distance
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        frac = info.distance / self.d0 if self.d0 else 0.0
        self.advance(distance=f"distance {info.distance:.3g} ({100 * frac:.0f}% of start)",
                     rate=f"{(self.completed + 1) / elapsed:.1f} steps/s")
        self.log(info.step - 1, {"distance": info.distance})  # the distance before step s is the one after s - 1
        self.log(info.step, {"step_length": info.step_length, "path_length": path_offset + info.path_length})
        if info.retries:  # the step overflowed and was taken again shorter (GeoConfig.nonfinite_retries)
            self.log(info.step, {"nonfinite_retries": info.retries})

    @COST.timed
    def train_step(self, info, step_offset: int = 0, every: int = 20) -> None:
        """One SGD step (a `geodesic_core.train.TrainStep`); every ``every`` steps (and at the last) that
        batch's loss and accuracy become metrics ``train_loss``, ``train_accuracy`` and ``lr`` at the SGD step
        (plus ``step_offset``: the steps of earlier stages). Other steps cost an integer test. The schedule's
        length becomes the total (none for a wall-time run: ``info.total`` is None)."""
        self.completed = info.step
        if info.step % every and not info.last:
            return
        if info.total is not None and self.total is None:
            self.total = info.total
            if self.row is not None:
                DISPLAY.update(self.row, total=self.total)
        loss = float(info.loss)
        accuracy = 100.0 * float((info.logits.argmax(1) == info.labels).float().mean())
        self.advance(info.step, epoch=f"epoch {info.epoch + 1}", loss=f"loss {loss:.3f}", acc=f"acc {accuracy:.1f}%")
        self.log(step_offset + info.step, {"train_loss": loss, "train_accuracy": accuracy, "lr": info.lr})

    # -- internals
    def _tick(self) -> None:
        now = time.monotonic()
        if self.row is not None:
            DISPLAY.update(self.row, completed=self.completed, status=self._status_text())
        elif self.logger is not None and now - self.last_log >= self.cfg.log_seconds:
            self.last_log = now
            self.logger.info("%s: %s  %s", self.title, self._of_total(), self._status_text())
        if now - self.last_flush >= self.cfg.flush_seconds:
            self._flush()
        if self.artifact is not None and self.total and now - self.last_artifact >= self.cfg.log_seconds:
            self.last_artifact = now
            self._set_artifact(100.0 * min(self.completed / self.total, 1.0))

    def discard(self, reason: str = "") -> None:
        """Drop the metric points not yet sent (with ``hold``: all of this task's); the progress line and the
        Prefect artifact then say the task's work was undone, and why."""
        self.undone = f"undone{': ' + reason if reason else ''}"
        if self.history is not None:
            self.history.pending = []

    def _flush(self, final: bool = False) -> None:
        self.last_flush = time.monotonic()
        if self.history is None or (self.hold and not final):
            return
        try:
            self.history.flush()
        except Exception as exc:  # kept pending; tried again at the next flush
            self._warn(exc)
            if final:
                self.history.pending = []

    def _close_run(self, failed: bool) -> None:
        try:
            from mlflow.entities import RunStatus

            status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
            self.history.client.set_terminated(self.history.run_id, status)
        except Exception as exc:
            self._warn(exc)

    def _set_artifact(self, pct: float, description: str | None = None) -> None:
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact, pct, description=description)
        except Exception as exc:
            self._warn(exc)

    def _of_total(self) -> str:
        if not self.total:
            return f"step {self.completed:g}"
        elapsed = time.monotonic() - self.t0
        left = ""
        if self.completed > 0 and self.completed < self.total:
            secs = elapsed / self.completed * (self.total - self.completed)
            left = f", {'≤ ' if self.upper_bound else ''}{secs:.0f} s left"
        return f"step {self.completed:g}/{'≤' if self.upper_bound else ''}{self.total:g}{left}"

    def _status_text(self) -> str:
        return "  ".join(self.status.values())

    def _warn(self, exc: Exception) -> None:
        if not self.warned:
            self.warned = True
            _logger().warning("%s: live reporting failed (%s: %s); the task goes on", self.title,
                              type(exc).__name__, str(exc)[:200])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _in_task_run() -> bool:
    from prefect.context import TaskRunContext

    return TaskRunContext.get() is not None


def _logger():
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a flow or task run
        return logging.getLogger("geodesic")
