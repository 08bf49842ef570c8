"""The machine's CPU use over an interval, and this process's share of it, for the benchmarks that call the core
in-process: an equal-time peer's budget is the geodesic's wall time, so a reader needs the load each ran under (the
flows record both as MLflow system metrics on the parent run, `tasks.tracking.recording_system_metrics`). Standard
library only (Linux's ``/proc/stat``, else psutil if installed, else not measured; the process's from `os.times`):
the GPU machine's bare Python runs it too."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

_STAT = Path("/proc/stat")


def _times() -> tuple[float, float] | None:
    """(busy, total) CPU time of all cores since boot, or None where neither /proc/stat nor psutil is there.
    Idle and iowait count as free; guest time, which Linux also counts in user time, once (as psutil does)."""
    try:
        f = [float(x) for x in _STAT.read_text().splitlines()[0].split()[1:]]
        f += [0.0] * (10 - len(f))  # user nice system idle iowait irq softirq steal guest guest_nice
        total = sum(f[:8])
        return total - f[3] - f[4], total
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0), total


class MachineLoad:
    """CPU use of the whole machine since the last `restart` (or creation), in % of all cores, and this process's
    (all its threads), in the same unit; NaN where it cannot be read. Each instance keeps its own start, so meters
    nest."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> "MachineLoad":
        self._start = _times()
        self._own = _own_times()
        return self

    def percent(self) -> float:
        now = _times()
        if now is None or self._start is None or now[1] <= self._start[1]:
            return math.nan
        return 100.0 * (now[0] - self._start[0]) / (now[1] - self._start[1])

    def process_percent(self) -> float:
        cpu, wall = _own_times()
        if wall <= self._own[1]:
            return math.nan
        return 100.0 * (cpu - self._own[0]) / ((wall - self._own[1]) * (os.cpu_count() or 1))

    def reading(self) -> dict[str, float]:
        """Both, under the names the flows' child runs carry: ``machine_cpu_percent``, ``process_cpu_percent``."""
        return {"machine_cpu_percent": self.percent(), "process_cpu_percent": self.process_percent()}


def _own_times() -> tuple[float, float]:
    """(this process's user + system CPU seconds, all threads; monotonic wall seconds)."""
    t = os.times()
    return t.user + t.system, time.monotonic()


def load_text(row: dict) -> str:
    """"machine 100% / process 50%": a row's `MachineLoad.reading`, for the benchmarks' lines and tables ('' where
    the row has none)."""
    m, p = row.get("machine_cpu_percent"), row.get("process_cpu_percent")
    if m is None:
        return ""
    return f"machine {m:.0f}%" + ("" if p is None else f" / process {p:.0f}%")
