"""Watch the data: announce changed datasets with a ``geodesic.dataset.updated`` event.

The deployments' event triggers (``prefect.yaml``) rerun the flows that read a dataset when its event
arrives; the rerun recomputes exactly the tasks whose cache key holds the old data fingerprint. Run this
flow on a schedule (deployment ``watch-data``), or the same check from cron: ``geodesic data-updated``.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.data import announce_data_update


@flow(name="watch-data")
def watch_data_flow(datasets: list[str] = ["mnist", "fashion_mnist"], data_dir: str | None = None,
                    force: bool = False) -> list[dict]:
    """Fingerprint every dataset in ``datasets`` and emit an event for each one that changed."""
    log = get_run_logger()
    results = [announce_data_update(d, data_dir, force) for d in datasets]
    for r in results:
        log.info("%s: %s (fingerprint %s)", r["dataset"], "changed, event sent" if r["emitted"] else "no event",
                 r["fingerprint"][:12])
    return results
