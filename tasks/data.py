"""Data tasks."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from geodesic_core import dataset_fingerprint


@task(cache_policy=NO_CACHE)
def fingerprint_data(dataset: str, data_dir: str | None) -> str:
    """Content hash of the dataset's files: part of every cache key, so new data recomputes what depends on it."""
    return dataset_fingerprint(dataset, data_dir)
