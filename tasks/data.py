"""Data tasks: the dataset fingerprint (part of every cache key) and the data-updated event."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from geodesic_core import InputError, dataset_fingerprint
from geodesic_core.checkpoint import atomic_write
from geodesic_core.data import check_data_files, check_dataset_name, resolve_data_dir
from tasks.common import output_dir

DATA_UPDATED = "geodesic.dataset.updated"
STATE_FILE = "data-fingerprints.json"


@task(cache_policy=NO_CACHE)
def fingerprint_data(dataset: str, data_dir: str | None) -> str:
    """Content hash of the dataset's files: part of every cache key, so new data recomputes what depends on it."""
    return dataset_fingerprint(dataset, data_dir)


def dataset_resource_id(dataset: str) -> str:
    """The Prefect resource an update event is about: what the deployments' triggers match."""
    return f"geodesic.dataset.{dataset}"


def _recorded(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:  # a damaged state file only costs one extra event
        return {}


def _record(path: Path, state: dict) -> None:
    atomic_write(path, lambda fh: fh.write(json.dumps(state, indent=1, sort_keys=True).encode()))


async def _send(event) -> None:
    from prefect.events.clients import get_events_client

    async with get_events_client(reconnection_attempts=3) as client:
        await client.emit(event)


@task(cache_policy=NO_CACHE)
def announce_data_update(dataset: str, data_dir: str | None = None, force: bool = False) -> dict:
    """Fingerprint ``dataset``'s files; if they differ from the fingerprint recorded at the last check (or
    ``force``), emit a ``geodesic.dataset.updated`` event (resource ``geodesic.dataset.<name>``, with the
    old and new fingerprints) to the Prefect API, then record the new fingerprint. The first check of a data
    root only records the fingerprint (nothing to compare with; ``force`` sends an event anyway). The record
    is written only after the event was sent, so a failed send is retried by the next check.
    """
    from prefect.events import Event
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.asyncutils import run_coro_as_sync

    dataset = check_dataset_name(dataset)
    root = resolve_data_dir(data_dir)
    check_data_files(dataset, root)
    if not PREFECT_API_URL.value():
        raise InputError("no Prefect server is configured: set PREFECT_API_URL (an event sent to a temporary "
                           "local server reaches no deployment trigger)")
    fp = dataset_fingerprint(dataset, root)
    state_path = output_dir() / STATE_FILE
    state = _recorded(state_path)
    key = f"{dataset}@{root}"
    previous = state.get(key)
    if not force and previous in (fp, None):
        if previous is None:
            state[key] = fp
            _record(state_path, state)
        return {"dataset": dataset, "fingerprint": fp, "previous": previous, "emitted": False}
    run_coro_as_sync(_send(Event(
        event=DATA_UPDATED,
        resource={"prefect.resource.id": dataset_resource_id(dataset), "prefect.resource.name": dataset,
                  "geodesic.fingerprint": fp},
        payload={"dataset": dataset, "data_dir": str(root), "fingerprint": fp, "previous_fingerprint": previous})))
    state[key] = fp
    _record(state_path, state)
    return {"dataset": dataset, "fingerprint": fp, "previous": previous, "emitted": True}
