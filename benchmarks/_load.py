"""The machine's CPU use over an interval, for the benchmarks that call the core in-process: an equal-time peer's
budget is the geodesic's wall time, so a reader needs the load each ran under (the flows record it as MLflow
system metrics on the parent run, `tasks.tracking.recording_system_metrics`). Standard library only (Linux's
``/proc/stat``, else psutil if installed, else not measured): the GPU machine's bare Python runs it too."""

from __future__ import annotations

import math
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
    """CPU use of the whole machine since the last `restart` (or creation), in % of all cores; NaN where it cannot
    be read. Each instance keeps its own start, so meters nest."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> "MachineLoad":
        self._start = _times()
        return self

    def percent(self) -> float:
        now = _times()
        if now is None or self._start is None or now[1] <= self._start[1]:
            return math.nan
        return 100.0 * (now[0] - self._start[0]) / (now[1] - self._start[1])
