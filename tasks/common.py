"""Shared plumbing of the tasks: output locations, checkpoint references, code version, data loading.

Tasks pass *checkpoint references* between each other: ``{"path": str, "sha256": str}`` dicts (JSON, so
Prefect persists them as results and hashes them into cache keys), never models or tensors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from geodesic_core import load_model, load_split
from geodesic_core.data import Split, get_spec

OUTPUT_DIR_ENV = "GEODESIC_OUTPUT_DIR"
CORE_DIR = Path(__file__).resolve().parents[1] / "geodesic_core"

# every cached task uses INPUTS + TASK_SOURCE and gets the code version and data fingerprint as inputs
PERSIST = {"persist_result": True, "result_serializer": "json"}


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Content hash of the core's source: a change to the math invalidates every cached result."""
    h = hashlib.sha256()
    for path in sorted(CORE_DIR.rglob("*.py")):
        h.update(path.relative_to(CORE_DIR).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def output_dir() -> Path:
    """Where checkpoints and artifacts are written: ``$GEODESIC_OUTPUT_DIR`` or ``./outputs``."""
    root = Path(os.environ.get(OUTPUT_DIR_ENV) or "outputs").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def content_key(*parts: Any) -> str:
    """A stable name for an output derived from everything that determines it."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def checkpoint_path(kind: str, *parts: Any) -> Path:
    path = output_dir() / "checkpoints" / f"{kind}-{content_key(kind, *parts)}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def ref(path: Path | str, sha256: str, **extra: Any) -> dict:
    return {"path": str(path), "sha256": sha256, **extra}


def open_ref(checkpoint: dict, device: torch.device | None = None):
    """Load the network a reference points at; the stored content hash must match the reference's."""
    model, meta = load_model(checkpoint["path"])
    if meta.get("sha256") and meta["sha256"] != checkpoint["sha256"]:
        raise RuntimeError(f"checkpoint {checkpoint['path']} changed since it was referenced; rerun the flow")
    return model.to(device or default_device()), meta


ARCH_KEYS = ("model", "num_classes", "in_channels", "image_size", "dataset")


def save_derived(out: Path, model, parent_meta: dict, **extra: Any) -> str:
    """Save a network derived from another (same architecture metadata) atomically; returns its hash."""
    from geodesic_core import save_checkpoint

    meta = {k: parent_meta[k] for k in ARCH_KEYS if k in parent_meta}
    return save_checkpoint(out, model.cpu(), {**meta, **extra})


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=4)
def split(dataset: str, train: bool, data_dir: str | None, task: int = 0) -> Split:
    """Dataset split, loaded once per process (tasks of one flow run share it)."""
    return load_split(dataset, train, data_dir, task)


def spec(dataset: str):
    return get_spec(dataset)
