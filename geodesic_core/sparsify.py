"""Algorithm 1 (discovering sparse networks via geodesics) and its baselines.

Algorithm 1: while w ∉ H_p: w_a ← proj(w, H_p); w ← Geo(w, g, w_a, n_s). Here the target sparsity is
approached along a schedule of stages (p_k = p (1 − (1 − k/K)^3), k = 1..K, the cubic schedule of Zhu &
Gupta 2017), each stage one run of Algorithm 1 toward H_{p_k} that ends on H_{p_k}: when the traversal
stops by the oscillation or step criterion, the remaining (small) distance is closed by the projection.
The schedule keeps every stage's distance short, where the local metric describes the functional change
well; the final network has exactly the requested fraction of zeros among its prunable weights. The
anchor of every stage is the dense network: the correctors of `geodesic_core.geo` pull the path's outputs
back toward the dense network's, which is what keeps high sparsities accurate.

Baselines on the same dense network: one-shot magnitude projection, and magnitude pruning followed by
masked fine-tuning (SGD) under a compute budget.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Literal, NamedTuple, Sequence

import torch
from torch import nn

from .config import GeoConfig, TrainConfig
from .data import Split
from .errors import InputError
from .geo import GeoResult, StepInfo, geo
from .metric import flat_params, set_flat_params
from .targets import FilterTarget, ParamSlice, SparseTarget, check_sparsity_percent, param_slices
from .train import train


def stage_sparsities(sparsity_percent: float, stages: int) -> list[float]:
    """p_k = p (1 − (1 − k/K)^3), k = 1..K: large steps while many small weights remain, small ones near p."""
    p = check_sparsity_percent(sparsity_percent)
    return [p * (1.0 - (1.0 - k / stages) ** 3) for k in range(1, stages + 1)]


class StageResult(NamedTuple):
    stage: int
    target_sparsity: float  # percent, p_k
    steps: int
    stop_reason: str
    distance_before_projection: float
    path_length: float


def _run_stage(model: nn.Module, target: SparseTarget | FilterTarget, level: float, pool: torch.Tensor,
               cfg: GeoConfig, anchor: nn.Module | None, callbacks: Sequence[Callable[[StepInfo], None]],
               start_step: int, stage: int) -> StageResult:
    """Geo toward ``target``, then the hard projection onto it (what the traversal left is closed there)."""
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + stage)
    res: GeoResult = geo(model, target, pool, cfg, anchor=anchor, callbacks=callbacks, generator=gen,
                         start_step=start_step)
    w = flat_params(model)
    w_p = target.project(w)
    set_flat_params(model, w_p)
    return StageResult(stage, level, res.steps, res.stop_reason, float((w_p - w).norm()), res.path_length)


def geodesic_stage(model: nn.Module, slices: list[ParamSlice], stage_sparsity: float, pool: torch.Tensor,
                   cfg: GeoConfig, *, refresh_every: int = 10, scope: Literal["global", "layer"] = "global",
                   anchor: nn.Module | None = None, callbacks: Sequence[Callable[[StepInfo], None]] = (),
                   start_step: int = 0, stage: int = 0) -> StageResult:
    """One stage of Algorithm 1 toward H_{p_k}, ending with the hard projection onto H_{p_k} (model updated).

    The Geo settings (``cfg``) bound the number of steps (s = ``cfg.max_steps``); the p-sparse target is
    re-projected from the current weights every ``refresh_every`` (n_s) steps.
    """
    target = SparseTarget(slices, stage_sparsity, scope, refresh_every)
    return _run_stage(model, target, stage_sparsity, pool, cfg, anchor, callbacks, start_step, stage)


def structured_stage(model: nn.Module, layer: str, n_filters: int, pool: torch.Tensor, cfg: GeoConfig, *,
                     refresh_every: int = 10, anchor: nn.Module | None = None,
                     callbacks: Sequence[Callable[[StepInfo], None]] = (), start_step: int = 0,
                     stage: int = 0) -> StageResult:
    """One stage toward the structured target (``n_filters`` whole filters of ``layer`` zeroed), ending on it."""
    target = FilterTarget(model, layer, n_filters, refresh_every)
    return _run_stage(model, target, float(n_filters), pool, cfg, anchor, callbacks, start_step, stage)


def masks_from_zeros(model: nn.Module, slices: list[ParamSlice]) -> dict[str, torch.Tensor]:
    """{param name: 0/1 mask} marking the non-zero prunable weights (for masked fine-tuning)."""
    named = dict(model.named_parameters())
    return {s.name: (named[s.name].detach() != 0).float() for s in slices if s.prunable}


def oneshot_prune(model: nn.Module, slices: list[ParamSlice], sparsity_percent: float,
                  scope: Literal["global", "layer"] = "global") -> nn.Module:
    """Baseline: w ← proj(w, H_p) in one shot (in place)."""
    set_flat_params(model, SparseTarget(slices, sparsity_percent, scope).project(flat_params(model)))
    return model


def project_to_level(model: nn.Module, level: float, *, structured: bool = False, layer: str = "",
                     scope: Literal["global", "layer"] = "global") -> nn.Module:
    """Hard projection (in place): onto H_level (level = sparsity percent), or, if ``structured``, onto the
    set where ``int(level)`` whole filters of conv ``layer`` are zero."""
    if structured:
        set_flat_params(model, FilterTarget(model, layer, int(level)).project(flat_params(model)))
        return model
    return oneshot_prune(model, param_slices(model), level, scope)


def prune_finetune(model: nn.Module, level: float, data: Split, cfg: TrainConfig, *, structured: bool = False,
                   layer: str = "", scope: Literal["global", "layer"] = "global", budget_seconds: float | None = None,
                   max_batches: int | None = None, augment: bool = False,
                   device: torch.device | None = None, callbacks: Sequence[Callable] = (),
                   step_callbacks: Sequence[Callable] = (),
                   teacher: nn.Module | None = None) -> tuple[nn.Module, float, int]:
    """Baseline: hard projection (`project_to_level`), then masked SGD fine-tuning (pruned weights stay
    exactly zero), in place. On the labels (cross-entropy), or with ``teacher`` (the dense network) label-free:
    prune + distillation, masked SGD on ½ mean_x ‖f(x; w) − f(x; w_dense)‖² over the training inputs, the
    label-free peer of the geodesic (which reads only inputs too).

    The budget is ``cfg.epochs`` epochs, optionally capped by ``max_batches`` optimizer steps or by
    ``budget_seconds`` of wall time (the equal-compute comparison). The learning-rate schedule spans
    ``cfg.epochs``, so a budget cut ends the run before the schedule does. Structured: the removed filters'
    weights, bias and batch-norm scale and shift all stay zero. ``callbacks`` get each epoch's `EpochInfo`,
    ``step_callbacks`` each SGD step's `TrainStep`.

    Returns:
        (model, wall seconds spent, optimizer steps taken).
    """
    t0 = time.perf_counter()
    project_to_level(model, level, structured=structured, layer=layer, scope=scope)
    if structured:
        masks = FilterTarget(model, layer, int(level)).masks(flat_params(model))
    else:
        masks = masks_from_zeros(model, param_slices(model))
    steps = train(model, data, cfg, masks=masks, augment=augment, device=device, max_batches=max_batches,
                  budget_seconds=budget_seconds, callbacks=callbacks, step_callbacks=step_callbacks, teacher=teacher)
    return model, time.perf_counter() - t0, steps


class CycleInfo(NamedTuple):
    """After cycle ``cycle`` of iterative prune-train: ``filters`` removed so far, ``epochs`` of SGD so far."""

    cycle: int
    filters: int
    epochs: float
    seconds: float


def iterative_prune_train(model: nn.Module, layer: str, n_filters: int, data: Split, cfg: TrainConfig, *,
                          epochs_per_filter: float, augment: bool = False, device: torch.device | None = None,
                          callbacks: Sequence[Callable[[CycleInfo], None]] = ()) -> tuple[nn.Module, float, int]:
    """The paper's structured baseline (Figure 4C/D): remove one filter at a time and retrain after each.

    Cycle k = 1..``n_filters``: zero the k smallest-norm filters of conv ``layer`` (the ones removed before
    stay removed: their norm is zero; see `FilterTarget`), then masked SGD on the labels for
    ``epochs_per_filter`` epochs (``cfg`` with its schedule restarted every cycle; a fraction of an epoch is
    that fraction of the steps). The model is updated in place; every cycle reports a `CycleInfo`.

    Returns:
        (model, wall seconds, SGD steps taken over all cycles).
    """
    if epochs_per_filter <= 0:
        raise InputError(f"epochs_per_filter must be positive, got {epochs_per_filter}")
    FilterTarget(model, layer, n_filters)  # checks the layer and the count before any work
    steps_per_epoch = math.ceil(data.x.shape[0] / cfg.batch_size)
    per_cycle = max(1, round(epochs_per_filter * steps_per_epoch))
    cyc_cfg = cfg.model_copy(update={"epochs": math.ceil(per_cycle / steps_per_epoch)})
    t0, steps = time.perf_counter(), 0
    for k in range(1, n_filters + 1):
        target = FilterTarget(model, layer, k)
        w = target.project(flat_params(model))
        set_flat_params(model, w)
        steps += train(model, data, cyc_cfg.model_copy(update={"seed": cfg.seed + k}), masks=target.masks(w),
                       augment=augment, device=device, max_batches=per_cycle)
        info = CycleInfo(k, k, steps / steps_per_epoch, time.perf_counter() - t0)
        for cb in callbacks:
            cb(info)
    return model, time.perf_counter() - t0, steps
