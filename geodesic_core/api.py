"""The Python API for notebooks: one call per application on the user's own network and tensors.

    import torch
    from geodesic_core.api import sparsify

    result = sparsify(my_net, x_train, 95, test=(x_test, y_test))    # Algorithm 1 on tensors, no labels read
    df = result.frame()                                               # the path as a pandas DataFrame
    df.plot(x="step", y="test_accuracy")

No Prefect, no MLflow and no files: the same core functions the flows call, with the sparsify flow's defaults
(`geodesic_core.sparsify.SparsifyGeoConfig`). The flows add caching, resumption, tracking and the baselines.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from .config import GeoConfig
from .data import Split
from .errors import InputError
from .geo import StepInfo
from .metric import flat_params
from .sparsify import (AdaptiveSchedule, FixedSchedule, SparsifyGeoConfig, StageResult, fidelity_probe,
                       geodesic_stage, polish, run_schedule, stage_sparsities)
from .targets import check_sparsity_percent, param_slices, sparsity
from .train import evaluate


@dataclass
class SparsifyResult:
    """What `sparsify` returns.

    ``model``: the sparse network (exactly ``target`` percent zeros among its prunable weights: the weight
    matrices and conv kernels). ``path``: one row per recorded step (``stage``, ``step``, ``distance`` to the
    stage's target, ``path_length`` S(γ) so far, ``sparsity`` in percent, and with test data ``test_accuracy``,
    ``test_loss``). ``stages``: each stage's `StageResult`. ``seconds``: wall time of the traversal and the
    closing correction without the evaluations along it. ``test_accuracy``: the result's (after the closing
    correction); ``projected_test_accuracy``: the path's end on H_target before it (with test data).
    """

    model: nn.Module
    target: float
    sparsity: float
    path: list[dict] = field(default_factory=list)
    stages: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0
    test_accuracy: float | None = None
    projected_test_accuracy: float | None = None

    def frame(self):
        """The path as a ``pandas.DataFrame`` (one row per recorded step)."""
        import pandas as pd

        return pd.DataFrame(self.path)


def _as_split(test) -> Split | None:
    if test is None:
        return None
    if not (isinstance(test, (tuple, list)) and len(test) == 2 and all(isinstance(t, torch.Tensor) for t in test)):
        raise InputError("test must be a pair of tensors (x_test, y_test)")
    x, y = test
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.is_floating_point:
        raise InputError(f"test labels must be integer class indices of shape ({x.shape[0]},), got {tuple(y.shape)} "
                         f"{y.dtype}")
    return Split(x, y.long())


def sparsify(model: nn.Module, x: torch.Tensor, target: float, *, test: tuple[torch.Tensor, torch.Tensor] | None = None,
             stages: int = 5, schedule: Literal["cubic", "adaptive"] = "adaptive", stage_tolerance: float = 0.3,
             max_stages: int = 40, refresh_every: int = 10, scope: Literal["global", "layer"] = "global",
             geo: GeoConfig | None = None, eval_every: int = 10, polish_epochs: int = 2, polish_lr: float = 0.1,
             polish_temperature: float = 2.0, callbacks: Sequence[Callable[[StepInfo], None]] = ()) -> SparsifyResult:
    """Sparsify a copy of ``model`` to ``target`` percent zeros by traversing geodesics (paper Algorithm 1).

    Stage k traverses Geo(w, g, proj(w, H_{p_k}), s) toward the p_k-sparse projection of the current weights,
    re-projected every ``refresh_every`` steps, each step the trust-region problem of eq. 6-7 under the metric
    g = E_x[J^T J] on batches of ``x``, with the corrector toward the dense network's outputs; each stage ends
    on H_{p_k}. The levels p_k: ``schedule="adaptive"`` (the flow's default, `AdaptiveSchedule`) sizes each
    stage by how much agreement with the dense network's predictions on 2,000 inputs of ``x`` the last one
    lost (``stage_tolerance`` points; a stage that lost more than twice that is undone and retried shorter; at
    most ``max_stages``), starting from steps of 1/``stages`` of the log density; ``"cubic"``: the fixed
    ``stages`` of `stage_sparsities`. Undone stages leave no rows in ``path`` or ``stages``; their time counts.
    After the path's end: ``polish_epochs`` epochs of the closing correction (`geodesic_core.sparsify.polish`,
    masked distillation toward the dense outputs on ``x`` at ``polish_lr``, on their softmax at
    ``polish_temperature`` (0: on the logits); 0 epochs: none).

    Args:
        model: any ``nn.Module`` mapping ``(N, *input shape)`` to outputs ``(N, K)``; it is not modified.
        x: training inputs ``(P, *input shape)``: the metric and the corrector read these, never labels.
        target: percent of prunable weights to zero, in (0, 100).
        test: optional ``(x_test, y_test)``: accuracy and loss recorded every ``eval_every`` steps and at the end.
        geo: the Geo step's settings (default: the sparsify flow's, `SparsifyGeoConfig`).
        callbacks: called with every step's `StepInfo`.
    """
    target = check_sparsity_percent(target)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point() or not torch.isfinite(x).all():
        raise InputError("x must be a finite floating-point tensor of training inputs, shape (P, *input shape)")
    if stages < 1 or eval_every < 1 or refresh_every < 1:
        raise InputError(f"stages, eval_every and refresh_every must be >= 1, got {stages}, {eval_every}, "
                         f"{refresh_every}")
    if polish_epochs < 0:
        raise InputError(f"polish_epochs must be >= 0 (0: no closing correction), got {polish_epochs}")
    if not polish_lr > 0 or not polish_temperature >= 0:
        raise InputError(f"polish_lr must be > 0 and polish_temperature >= 0 (0: match the logits), got {polish_lr}, "
                         f"{polish_temperature}")
    if schedule not in ("cubic", "adaptive"):
        raise InputError(f"schedule must be 'cubic' or 'adaptive', got {schedule!r}")
    plan = (AdaptiveSchedule(target, stages=stages, tolerance=stage_tolerance, max_stages=max_stages)
            if schedule == "adaptive" else FixedSchedule(stage_sparsities(target, stages)))
    test_split = _as_split(test)
    cfg = geo or SparsifyGeoConfig()
    dense = copy.deepcopy(model).requires_grad_(False)
    net = copy.deepcopy(model)
    slices = param_slices(net)
    out = SparsifyResult(net, target, 0.0)
    spent = [0.0]

    def record(stage: int, offset: float):
        def cb(info: StepInfo) -> None:
            if info.step % eval_every:
                return
            t = time.perf_counter()
            row = {"stage": stage, "step": info.step, "distance": info.distance, "path_length": offset + info.path_length,
                   "sparsity": 100.0 * sparsity(info.weights, slices)}
            if test_split is not None:
                row["test_accuracy"], row["test_loss"] = evaluate(net, test_split)
            out.path.append(row)
            spent[0] += time.perf_counter() - t
        return cb

    length, rows_before = [0.0], [0]

    def run_stage(p_k: float, start: int, attempt: int):
        rows_before[0] = len(out.path)
        return geodesic_stage(net, slices, p_k, x, cfg, refresh_every=refresh_every, scope=scope, anchor=dense,
                              callbacks=[*callbacks, record(len(out.stages) + 1, length[0])], start_step=start,
                              stage=attempt)

    def accept(res) -> None:
        length[0] += res.path_length
        out.stages.append(res)
        row = {"stage": len(out.stages), "step": sum(r.steps for r in out.stages), "distance": 0.0,
               "path_length": length[0], "sparsity": 100.0 * sparsity(flat_params(net), slices)}
        if test_split is not None:
            t = time.perf_counter()
            row["test_accuracy"], row["test_loss"] = evaluate(net, test_split)
            spent[0] += time.perf_counter() - t
        out.path.append(row)

    def undo(res) -> None:  # an undone stage leaves no rows
        del out.path[rows_before[0]:]

    t0 = time.perf_counter()
    run_schedule(net, plan, run_stage, dense, fidelity_probe(x, seed=cfg.seed), on_accept=accept, on_reject=undo)
    polish(net, dense, x, target, cfg, polish_epochs, lr=polish_lr, temperature=polish_temperature)
    out.seconds = time.perf_counter() - t0 - spent[0]
    out.sparsity = 100.0 * sparsity(flat_params(net), slices)
    out.projected_test_accuracy = out.path[-1].get("test_accuracy")
    out.test_accuracy = evaluate(net, test_split)[0] if test_split is not None else None
    return out
