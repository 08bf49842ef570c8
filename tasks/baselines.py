"""Baseline tasks on the same dense network: one-shot magnitude projection, prune + masked fine-tune, and (for
structured sparsification) the paper's iterative prune-train cycle."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from geodesic_core import evaluate, flat_params, param_slices, sparsity
from geodesic_core.config import SparsifyConfig
from geodesic_core.sparsify import iterative_prune_train, project_to_level, prune_finetune

from .common import PERSIST, checkpoint_path, finished, open_ref, save_result, spec, split


@task(cache_policy=INPUTS + TASK_SOURCE - "data_dir", **PERSIST)
def oneshot_baseline(dense: dict, level: float, cfg: SparsifyConfig, data_dir: str | None, data_fingerprint: str,
                     code_version: str) -> dict:
    """proj(w_dense, H_p) in one shot, evaluated on the test set."""
    out = checkpoint_path("oneshot", dense["sha256"], level, cfg.scope, cfg.structured, code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(dense)
    t0 = time.perf_counter()
    project_to_level(model, level, structured=cfg.structured, layer=cfg.layer, scope=cfg.scope)
    wall = time.perf_counter() - t0
    acc, loss = evaluate(model, split(cfg.dataset, False, data_dir))
    return save_result(out, model, meta, dict(method="oneshot", level=level, test_accuracy=acc, test_loss=loss,
                                              wall_seconds=wall, sparsity=sparsity(flat_params(model),
                                                                                    param_slices(model)), steps=0))


@task(cache_policy=INPUTS + TASK_SOURCE - "data_dir", **PERSIST)
def finetune_baseline(dense: dict, level: float, cfg: SparsifyConfig, budget_seconds: float | None,
                      data_dir: str | None, data_fingerprint: str, code_version: str) -> dict:
    """Magnitude pruning, then masked SGD fine-tuning for ``cfg.finetune.epochs`` epochs, or (with
    ``budget_seconds``) for that much wall time: the equal-compute comparison with the geodesic."""
    method = "finetune" if budget_seconds is None else "finetune_equal_time"
    out = checkpoint_path(method, dense["sha256"], level, cfg.model_dump(), budget_seconds, data_fingerprint,
                          code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(dense)
    epochs = cfg.finetune.epochs if budget_seconds is None else 10_000
    _, wall, steps = prune_finetune(model, level, split(cfg.dataset, True, data_dir),
                                    cfg.finetune.train_config(cfg.seed, epochs), structured=cfg.structured,
                                    layer=cfg.layer, scope=cfg.scope, budget_seconds=budget_seconds,
                                    augment=spec(cfg.dataset).augment)
    acc, loss = evaluate(model, split(cfg.dataset, False, data_dir))
    return save_result(out, model, meta, dict(method=method, level=level, test_accuracy=acc, test_loss=loss,
                                              wall_seconds=wall, sparsity=sparsity(flat_params(model),
                                                                                    param_slices(model)), steps=steps))


@task(cache_policy=INPUTS + TASK_SOURCE - "data_dir", **PERSIST)
def prune_train_baseline(dense: dict, level: float, cfg: SparsifyConfig, data_dir: str | None, data_fingerprint: str,
                         code_version: str) -> dict:
    """Structured only: remove one filter of ``cfg.layer`` at a time, each removal followed by
    ``cfg.prune_train_epochs`` epochs of masked SGD (the fine-tuning settings), until ``level`` filters are gone
    (the paper's baseline in Figure 4C/D). ``steps`` counts the SGD steps of all cycles."""
    out = checkpoint_path("prune_train", dense["sha256"], level, cfg.model_dump(), data_fingerprint, code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(dense)
    data = split(cfg.dataset, True, data_dir)
    cycles: list = []
    _, wall, steps = iterative_prune_train(model, cfg.layer, int(level), data, cfg.finetune.train_config(cfg.seed),
                                    epochs_per_filter=cfg.prune_train_epochs, augment=spec(cfg.dataset).augment,
                                    callbacks=[cycles.append])
    acc, loss = evaluate(model, split(cfg.dataset, False, data_dir))
    return save_result(out, model, meta, dict(method="prune_train", level=level, test_accuracy=acc, test_loss=loss,
                                              wall_seconds=wall, sparsity=sparsity(flat_params(model),
                                                                                    param_slices(model)), steps=steps,
                                              epochs=cycles[-1].epochs if cycles else 0.0))
