"""Helpers shared by the flows."""

from __future__ import annotations

from typing import Iterable


def raise_first_failure(futures: Iterable) -> None:
    """Wait for every future; if any task failed, raise that task's own error (in submission order), not the
    "upstream did not complete" state its dependants end in."""
    futures = list(futures)
    for f in futures:
        f.wait()
    for f in futures:
        if f.state.is_failed() and "Upstream task run" not in (f.state.message or ""):
            f.result()  # raises the task's exception
