"""Tasks that produce endpoint networks: train one, or take a given checkpoint."""

from __future__ import annotations

import os

from prefect import task

from geodesic_core import InputError, load_model
from geodesic_core.config import TrainConfig
from geodesic_core.train import train_and_save

from .common import CACHED, checkpoint_path, finished, ref
from .live import Live


@task(**CACHED)
def train_network(model: str, dataset: str, train: TrainConfig, data_dir: str | None, data_fingerprint: str,
                  code_version: str, task_index: int = 0, arch: dict | None = None, track: dict | None = None) -> dict:
    """Train ``model`` (with the architecture options ``arch``: width, depth) on ``dataset`` from
    ``train.seed``; return a reference to its checkpoint. The training curve goes to the child run ``track``."""
    arch = arch or {}
    out = checkpoint_path("trained", model, dataset, train.model_dump(), data_fingerprint, code_version, task_index,
                          *([arch] if arch else []))
    if (done := finished(out, _trained_result)) is not None:
        return done
    written = out.with_name(out.name + ".unlogged")  # visible as finished only once its metrics are sent
    with Live(f"train {model} on {dataset} (seed {train.seed})", track=track) as live:
        meta = train_and_save(model, dataset, train, str(written), data_dir, task=task_index, **arch,
                              step_callbacks=[live.train_step])
        live.log(int(live.completed), {"test_accuracy": meta["test_accuracy"], "test_loss": meta["test_loss"],
                                       "wall_seconds": meta["train_seconds"]})
    os.replace(written, out)
    return ref(out, meta["sha256"], **_trained_result(meta))


def _trained_result(meta: dict) -> dict:
    return {"test_accuracy": meta["test_accuracy"], "test_loss": meta["test_loss"], "wall_seconds": meta["train_seconds"]}


@task
def given_checkpoint(path: str, model: str, num_classes: int, arch: dict | None = None) -> dict:
    """Reference to a user-given checkpoint, checked (safe load, content hash, architecture: model, classes,
    width and depth) before use."""
    _, meta = load_model(path, expect_model=model, expect_num_classes=num_classes, expect_arch=arch or {})
    if "test_accuracy" not in meta:
        raise InputError(f"checkpoint {path} has no recorded test accuracy; write it with `geodesic train`")
    return ref(path, meta["sha256"], test_accuracy=meta["test_accuracy"], test_loss=meta.get("test_loss"),
               wall_seconds=0.0)


@task
def check_endpoints(a: dict, b: dict) -> None:
    """Two given endpoints must be the same architecture (a clear error otherwise)."""
    from geodesic_core.checkpoint import load_checkpoint
    from geodesic_core.connect import check_same_architecture

    check_same_architecture(load_checkpoint(a["path"])[1], load_checkpoint(b["path"])[1], a["path"], b["path"])
