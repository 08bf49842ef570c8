"""Helpers shared by the flows."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

from tasks.tracking import fail_parent_run


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
