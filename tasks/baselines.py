"""Baseline tasks on the same dense network: one-shot magnitude projection, prune + masked fine-tune, and (for
structured sparsification) the paper's iterative prune-train cycle."""

from __future__ import annotations

import copy
import time

from prefect import task

from geodesic_core import evaluate, flat_params, param_slices
from geodesic_core.sparsify import SparsifyConfig
from geodesic_core.sparsify import iterative_prune_train, project_to_level, prune_finetune

from .common import CACHED, checkpoint_path, finished, open_ref, percent_sparse, save_result, spec, split
from .live import Live


def _result(model, method: str, level: float, test, **extra) -> dict:
    acc, loss = evaluate(model, test)
    return dict(method=method, level=level, test_accuracy=acc, test_loss=loss,
                sparsity=percent_sparse(flat_params(model), param_slices(model)), **extra)


@task(**CACHED)
def oneshot_baseline(dense: dict, level: float, cfg: SparsifyConfig, data_dir: str | None, data_fingerprint: str,
                     code_version: str, track: dict | None = None) -> dict:
    """proj(w_dense, H_p) in one shot, evaluated on the test set."""
    out = checkpoint_path("oneshot", dense["sha256"], level, cfg.scope, cfg.structured, code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(dense)
    with Live(f"oneshot {level:g}", track=track):
        t0 = time.perf_counter()
        project_to_level(model, level, structured=cfg.structured, layer=cfg.layer, scope=cfg.scope)
        wall = time.perf_counter() - t0
        result = _result(model, "oneshot", level, split(cfg.dataset, False, data_dir), wall_seconds=wall, steps=0)
    return save_result(out, model, meta, result)


@task(**CACHED)
def finetune_baseline(dense: dict, level: float, cfg: SparsifyConfig, budget_seconds: float | None,
                      data_dir: str | None, data_fingerprint: str, code_version: str, track: dict | None = None,
                      distill: bool = False) -> dict:
    """Magnitude pruning, then masked SGD fine-tuning for ``cfg.finetune.epochs`` epochs, or (with
    ``budget_seconds``) for that much wall time: the equal-compute comparison with the geodesic. On the labels,
    or (``distill``) label-free toward the dense network's outputs (method ``distill``). The training curve
    (``train_loss``, ``train_accuracy`` at the SGD step) goes to the child run ``track``."""
    method = ("distill" if distill else "finetune") + ("" if budget_seconds is None else "_equal_time")
    out = checkpoint_path(method, dense["sha256"], level, cfg.model_dump(), budget_seconds, data_fingerprint,
                          code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(dense)
    teacher = copy.deepcopy(model).requires_grad_(False) if distill else None  # the dense network, unpruned
    title = f"{method.split('_')[0]} {level:g}" + (f" ({budget_seconds:.0f} s)" if budget_seconds is not None else "")
    with Live(title, track=track) as live:
        _, wall, steps = prune_finetune(model, level, split(cfg.dataset, True, data_dir),
                                        cfg.finetune.train_config(cfg.seed, distill=distill),
                                        structured=cfg.structured, layer=cfg.layer, scope=cfg.scope,
                                        wall_seconds=budget_seconds, augment=spec(cfg.dataset).augment,
                                        step_callbacks=[live.train_step], teacher=teacher,
                                        teacher_temperature=cfg.finetune.distill_temperature)
        result = _result(model, method, level, split(cfg.dataset, False, data_dir), wall_seconds=wall, steps=steps)
    return save_result(out, model, meta, result)


@task(**CACHED)
def prune_train_baseline(dense: dict, level: float, cfg: SparsifyConfig, data_dir: str | None, data_fingerprint: str,
                         code_version: str, track: dict | None = None) -> dict:
    """Structured only: remove one filter of ``cfg.layer`` at a time, each removal followed by
    ``cfg.prune_train_epochs`` epochs of masked SGD (the fine-tuning settings), until ``level`` filters are gone
    (the paper's baseline in Figure 4C/D). ``steps`` counts the SGD steps of all cycles."""
    out = checkpoint_path("prune_train", dense["sha256"], level, cfg.model_dump(), data_fingerprint, code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(dense)
    data = split(cfg.dataset, True, data_dir)
    cycles: list = []
    with Live(f"prune-train {level:g} filters", int(level), track) as live:
        def cycle(info):
            cycles.append(info)
            live.advance(info.filters, epochs=f"{info.epochs:.2f} epochs")
            live.log(info.cycle, {"filters_removed": info.filters, "epochs": info.epochs})

        _, wall, steps = iterative_prune_train(model, cfg.layer, int(level), data, cfg.finetune.train_config(cfg.seed),
                                               epochs_per_filter=cfg.prune_train_epochs,
                                               augment=spec(cfg.dataset).augment, callbacks=[cycle])
        result = _result(model, "prune_train", level, split(cfg.dataset, False, data_dir), wall_seconds=wall,
                         steps=steps, epochs=cycles[-1].epochs if cycles else 0.0)
    return save_result(out, model, meta, result)
