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
from prefect.cache_policies import INPUTS, TASK_SOURCE

from geodesic_core import load_model, load_split
from geodesic_core.data import Split, get_spec

OUTPUT_DIR_ENV = "GEODESIC_OUTPUT_DIR"
CORE_DIR = Path(__file__).resolve().parents[1] / "geodesic_core"

# every cached task uses INPUTS + TASK_SOURCE and gets the code version and data fingerprint as inputs
PERSIST = {"persist_result": True, "result_serializer": "json"}
# the cache key of a compute task: its inputs but the data folder (the fingerprint stands for the data) and
# ``track`` (which MLflow run its live metrics go to: another flow run reuses the result)
CACHED = {"cache_policy": INPUTS + TASK_SOURCE - "data_dir" - "track", **PERSIST}


def percent_sparse(weights: torch.Tensor, slices) -> float:
    """Sparsity in percent (the unit of ``--sparsity`` and the ``target_sparsity`` param)."""
    from geodesic_core import sparsity

    return 100.0 * sparsity(weights, slices)


@functools.lru_cache(maxsize=1)
def _core_version() -> str:
    h = hashlib.sha256()
    for path in sorted(CORE_DIR.rglob("*.py")):
        h.update(path.relative_to(CORE_DIR).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def code_version(*names: str | None) -> str:
    """Content hash of the core's source, and of the user's own code among ``names`` (models or datasets given
    as import paths ``module:callable``): a change to the math, or an edit of the user's model file, invalidates
    every cached result that depends on it. Registry names and ``torchvision:<name>`` add nothing."""
    from geodesic_core.plugins import is_import_path, source_hash

    user = sorted({source_hash(n) for n in names if is_import_path(n) and not n.startswith("torchvision:")})
    return _core_version() if not user else content_key(_core_version(), *user)[:16]


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


ARCH_KEYS = ("model", "num_classes", "in_channels", "image_size", "width", "depth", "dataset")


def save_result(out: Path, model, parent_meta: dict, result: dict, **extra: Any) -> dict:
    """Save a task's network atomically, with the architecture metadata of the network it derives from and
    the task's result in its metadata (see `finished`); return the reference."""
    from geodesic_core import save_checkpoint

    arch = {k: parent_meta[k] for k in ARCH_KEYS if k in parent_meta}
    top = {k: result[k] for k in ("test_accuracy", "test_loss") if k in result}  # as every checkpoint records
    digest = save_checkpoint(out, model.cpu(), {**arch, **top, **extra, "result": result})
    return ref(out, digest, **result)


def finished(out: Path, result_from_meta=None) -> dict | None:
    """The reference an earlier attempt of the same task left in ``out``, or None.

    A run killed after a task wrote its checkpoint but before Prefect recorded the task's result would
    otherwise compute the same checkpoint again on resume: the checkpoint's path is a hash of everything the
    task depends on, so a file there that loads (content hash verified) is that task's finished output, and
    its metadata holds the task's result. A damaged file is ignored and overwritten.
    """
    done = finished_with_content(out, result_from_meta)
    return None if done is None else done[0]


def finished_with_content(out: Path, result_from_meta=None) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """`finished`, with the file's tensors (a checkpoint's state dict, a tensor file's tensors) as read and
    verified once, for a task that reuses them (``(reference, tensors)``, or None)."""
    from geodesic_core import InputError
    from geodesic_core.checkpoint import load_checkpoint, load_tensors

    if not out.is_file():
        return None
    try:
        tensors, meta = (load_tensors if out.name.endswith(".tensors.pt") else load_checkpoint)(out)
    except InputError:
        return None
    result = result_from_meta(meta) if result_from_meta else meta.get("result")
    return None if result is None else (ref(out, meta["sha256"], **result), tensors)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=4)
def split(dataset: str, train: bool, data_dir: str | None, task: int = 0) -> Split:
    """Dataset split, loaded once per process (tasks of one flow run share it)."""
    return load_split(dataset, train, data_dir, task)


def spec(dataset: str, data_dir: str | None = None):
    return get_spec(dataset, data_dir)
