"""Algorithm 1 (discovering sparse networks via geodesics) and its baselines.

Algorithm 1: while w ∉ H_p: w_a ← proj(w, H_p); w ← Geo(w, g, w_a, n_s). Here the target sparsity is
approached along a schedule of stages, each stage one run of Algorithm 1 toward H_{p_k} that ends on
H_{p_k}: when the traversal stops by the oscillation or step criterion, the remaining (small) distance is
closed by the projection. The default schedule (`AdaptiveSchedule`) sizes each stage by how much of the
dense network's predictions the last one lost, undoing a stage that lost too much; the alternative is the
fixed cubic schedule p_k = p (1 − (1 − k/K)^3), k = 1..K, of Zhu & Gupta 2017 (`stage_sparsities`).
The schedule keeps every stage's distance short, where the local metric describes the functional change
well; the final network has exactly the requested fraction of zeros among its prunable weights. The
anchor of every stage is the dense network: the correctors of `geodesic_core.geo` pull the path's outputs
back toward the dense network's, which is what keeps high sparsities accurate (`SparsifyGeoConfig`: 20 first-order
corrector steps per Geo step on the tempered loss T² KL at T = 2, lr 0.1, their whole move at most 3 η,
chosen on a validation split).

Baselines on the same dense network: one-shot magnitude projection, and magnitude pruning followed by
masked fine-tuning (SGD) under a compute budget.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Literal, NamedTuple, Sequence

import torch
from torch import nn

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from .config import (_USER_DATA, _USER_MODEL, GeoConfig, TrainConfig, _Config, _datasets, _ModelOnDataset, _models,
                     _one_of, _scenarios, with_defaults)
from .data import Split
from .errors import InputError
from .geo import GeoResult, StepInfo, geo
from .metric import eval_mode, flat_params, set_flat_params
from .targets import FilterTarget, ParamSlice, SparseTarget, check_sparsity_percent, param_slices
from .train import recompute_bn, train


# --- configuration: the sparsify flow's settings and its defaults for the nested ones ----------------------

class FinetuneConfig(_Config):
    """The prune + masked fine-tune baseline: SGD on the labels with the pruned weights held at zero, and
    (``distill``) its label-free counterpart, prune + distillation: masked SGD toward the dense network's outputs
    over the training inputs (T² KL between the softmaxes at ``distill_temperature``, or at 0 ½ ‖f(x; w) −
    f(x; w_dense)‖²) at learning rate ``distill_lr``, reading no labels, as the geodesic does.

    Each runs twice per level: for ``epochs`` epochs (the fixed-budget baseline of the notes), and for the
    geodesic's wall time (``equal_time``: equal compute), with the same optimizer settings.
    """

    epochs: PositiveInt = 2
    """Epochs of the fixed-budget run of each baseline."""
    lr: PositiveFloat = 0.01
    """Learning rate of masked fine-tuning (its peak under a cosine ``schedule``)."""
    schedule: Literal["constant", "cosine"] = "cosine"
    """Both baselines' learning-rate schedule: cosine from the rate to 0 over each run (the equal-time run: over
    the geodesic's wall time; the prune-train cycle: over each cycle), as the geodesic's closing correction
    anneals, so each peer is read at the end of an annealed run; or constant (the default before; its last epoch
    is read unannealed)."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """SGD momentum of both baselines."""
    weight_decay: float = Field(0.0, ge=0.0)
    """L2 weight decay of both baselines."""
    batch_size: PositiveInt = 128
    """Training examples per SGD step."""
    equal_time: bool = True
    """Also run each baseline for the geodesic's wall time at that level (budget equal_time)."""
    distill: bool = True
    """Also run the label-free baseline, prune + distillation toward the dense network's outputs."""
    distill_lr: PositiveFloat = 0.1
    """Learning rate of prune + distillation (its peak under a cosine ``schedule``): the closing correction's
    polish_lr, with its loss (0.003 matched the logits before)."""
    distill_temperature: float = Field(2.0, ge=0.0)
    """Prune + distillation's loss: T > 0 matches the dense network's softmax at temperature T (T² KL, Hinton et
    al. 2015), the closing correction's loss at polish_temperature (2), so the label-free peer gets the loss the
    geodesic ends with; 0 matches the dense logits (½‖·‖², the default before)."""

    def train_config(self, seed: int, epochs: int | None = None, distill: bool = False) -> TrainConfig:
        return TrainConfig(epochs=epochs or self.epochs, lr=self.distill_lr if distill else self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay, batch_size=self.batch_size,
                           schedule=self.schedule, seed=seed)




SparsifyGeoConfig = with_defaults(GeoConfig, "SparsifyGeoConfig", __name__, max_steps=150, eta=0.2, anchor=1.0, patience=40,
                                  distill_steps=20, distill_lr=0.1, distill_temperature=2.0, distill_radius=3.0)
SparsifyTrainConfig = with_defaults(TrainConfig, "SparsifyTrainConfig", __name__, epochs=15, lr=0.05)


class SparsifyConfig(_ModelOnDataset):
    """Algorithm 1 on one dense network at several sparsity levels, with its baselines: for each level, stages
    of Geo steps (``geo``) toward the p-sparse projection of the current weights, re-projected every
    ``refresh_every`` steps, the stage's end projected onto its sparsity; then the closing correction."""

    model: str = Field("lenet300", json_schema_extra=_one_of(_models, _USER_MODEL))
    """A registered model, torchvision:<name> or your builder module:callable."""
    dataset: str = Field("mnist", json_schema_extra=_one_of(_datasets, _USER_DATA))
    """A registered dataset or your loader module:callable."""
    sparsity: list[float] = Field(default_factory=lambda: [50.0, 90.0, 98.0], json_schema_extra={
        "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100}, "minItems": 1,
        "uniqueItems": True})
    """Target sparsity levels in percent, each strictly between 0 and 100, no repeats."""
    scope: Literal["global", "layer"] = "global"
    """Magnitude projection over all weights together (global) or per layer (layer)."""
    structured: bool = False
    """Zero n_filters whole filters of conv layer instead of single weights (one level; sparsity is then
    ignored); the paper's baseline, iterative prune-train, also runs."""
    layer: str = "features.0"
    """Structured: the conv layer whose filters are removed."""
    n_filters: PositiveInt = 50
    """Structured: filters to remove (the paper's 50 of VGG11's 64 first-layer filters is round(50 W) at
    width W)."""
    prune_train_epochs: float = Field(0.5, ge=0.0)
    """Structured: epochs of masked SGD after each single-filter removal of iterative prune-train, with the
    finetune settings (0: skip that baseline)."""
    polish_epochs: int = Field(2, ge=0)
    """The closing correction after the final projection: epochs of masked distillation toward the dense
    network's outputs at polish_lr decayed to 0, no labels, its time counted as the geodesic's (0: off, the
    projected end is the result)."""
    polish_lr: PositiveFloat = 0.1
    """The closing correction's learning rate (SGD, momentum 0.9, cosine decay to 0)."""
    polish_temperature: float = Field(2.0, ge=0.0)
    """The closing correction's loss: T > 0 matches the dense network's softmax at temperature T (T² KL,
    Hinton et al. 2015); 0 its logits (½‖·‖², the geodesic's own corrector's loss)."""
    stages: PositiveInt = 5
    """K: the stages of the cubic schedule, or the adaptive schedule's first and largest step, 1/K of the log
    density (one cached task per stage; structured: K equal steps of filters)."""
    schedule: Literal["adaptive", "cubic"] = "adaptive"
    """adaptive: stages spaced in log density, each halved or grown by how far the network's agreement with the
    dense network's predictions on 2,000 training inputs fell in the last stage (no labels); cubic: the fixed
    p_k = p (1 − (1 − k/K)³)."""
    stage_tolerance: PositiveFloat = 0.3
    """Adaptive: the agreement (points) a stage may lose; a stage that lost more than twice that is rejected
    and retried shorter."""
    max_stages: PositiveInt = 40
    """Adaptive: the most stages toward one level."""
    refresh_every: PositiveInt = 10
    """n_s: Geo steps between re-projections of the target onto the current weights."""
    eval_every: PositiveInt = 10
    """Steps between test-set evaluations along the path."""
    checkpoint: str | None = None
    """Start from this dense network's checkpoint instead of training one."""
    seed: int = 0
    """Seed of the dense network's training, the traversal and the baselines."""
    geo: SparsifyGeoConfig = Field(default_factory=SparsifyGeoConfig)
    """Each stage's traversal; geo.max_steps is s, the step limit of a stage."""
    train: SparsifyTrainConfig = Field(default_factory=SparsifyTrainConfig)
    """Training of the dense network."""
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    """The prune + fine-tune and prune + distill baselines."""

    @field_validator("sparsity")
    @classmethod
    def _check_levels(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one sparsity level, e.g. --sparsity 90")
        bad = [p for p in v if not (0.0 < p < 100.0)]
        if bad:
            raise ValueError(f"sparsity levels must be percentages strictly between 0 and 100, got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"sparsity levels must not repeat, got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _check_structured(self) -> "SparsifyConfig":
        if self.structured and self.checkpoint is None:  # the layer and the filter count, at this width
            from .data import get_spec
            from .models import build_model
            from .targets import FilterTarget

            spec = get_spec(self.dataset)
            FilterTarget(build_model(self.model, spec.num_classes, spec.in_channels, spec.image_size, **self.arch()),
                         self.layer, self.n_filters)
        return self

    @model_validator(mode="after")
    def _check_schedule(self) -> "SparsifyConfig":
        if self.max_stages < self.stages:
            raise ValueError(f"max_stages ({self.max_stages}) must be at least stages ({self.stages})")
        return self

    def levels(self) -> list[float]:
        return [float(self.n_filters)] if self.structured else list(self.sparsity)

    def stage_schedule(self, level: float) -> "FixedSchedule | AdaptiveSchedule":
        """The stages toward ``level``: a fresh `AdaptiveSchedule` or `FixedSchedule` (structured: ``stages``
        equal steps of whole filters)."""
        if self.structured:
            n = int(level)
            return FixedSchedule([max(1, round(n * k / self.stages)) for k in range(1, self.stages + 1)])
        if self.schedule == "adaptive":
            return AdaptiveSchedule(level, stages=self.stages, tolerance=self.stage_tolerance,
                                    max_stages=self.max_stages)
        return FixedSchedule(stage_sparsities(level, self.stages))


def stage_sparsities(sparsity_percent: float, stages: int) -> list[float]:
    """p_k = p (1 − (1 − k/K)^3), k = 1..K: large steps while many small weights remain, small ones near p."""
    p = check_sparsity_percent(sparsity_percent)
    return [p * (1.0 - (1.0 - k / stages) ** 3) for k in range(1, stages + 1)]


class AdaptiveSchedule:
    """A stage schedule that follows how fast the network's function falls (label-free), instead of a
    fixed count of stages.

    Stages are spaced in u = log(density) = log(1 − p/100), from u = 0 (dense) to u_T = log(1 − level/100):
    equal steps of u cut the same fraction of the remaining weights, and it is near u_T, where few weights
    remain, that each cut costs most. The first stage is a step of a_0 = |u_T| / ``stages`` (the largest step
    ever taken). After each stage the caller reports its *fidelity* F (percent agreement of the network's
    predictions with the dense network's on a fixed probe of training inputs; no labels) and the drop
    δ = F_prev − F:

    - δ > ``reject`` · ``tolerance``: the stage is rejected (the path continues from the previous stage's
      end) and retried with half the step, unless no shorter stage exists: the step is already the smallest,
      a_min = |u_T| / ``max_stages``, or half of it would propose the same level (the level itself, when the
      rest is short);
    - otherwise it is accepted; the next step is halved when δ > ``tolerance``, grown by 1.5 (at most a_0)
      when δ < ``tolerance`` / 3.

    The proposals are a deterministic function of the reported fidelities, so a resumed run proposes the
    same stages and finds them cached. At most ``max_stages`` stages are accepted (every step ≥ a_min); the
    last one lands on u_T exactly.
    """

    def __init__(self, level: float, *, stages: int = 5, tolerance: float = 0.3, max_stages: int = 40,
                 reject: float = 2.0):
        check_sparsity_percent(level)
        if not (tolerance > 0 and reject >= 1 and max_stages >= stages >= 1):
            raise InputError(f"adaptive schedule: need tolerance > 0, reject ≥ 1 and max_stages ≥ stages ≥ 1, got "
                             f"tolerance={tolerance}, reject={reject}, stages={stages}, max_stages={max_stages}")
        self.level, self.tolerance, self.reject = float(level), float(tolerance), float(reject)
        self.u_target = math.log1p(-self.level / 100.0)
        self.a0, self.a_min = abs(self.u_target) / stages, abs(self.u_target) / max_stages
        self.a, self.u, self.fidelity = self.a0, 0.0, 100.0
        self.history: list[tuple[float, float, bool]] = []  # (stage sparsity %, fidelity, accepted)
        self._proposed: float | None = None

    @property
    def done(self) -> bool:
        return self.u <= self.u_target + 1e-12

    def propose(self) -> float | None:
        """The next stage's sparsity (percent), or None when the level is reached."""
        if self.done:
            return None
        self._proposed = self._next(self.a)
        return self._percent(self._proposed)

    def _next(self, a: float) -> float:
        """The log density a step of ``a`` from the current end reaches (the level itself when the rest would be
        shorter than half the smallest step)."""
        u_next = self.u - a
        return self.u_target if u_next - self.u_target < 0.5 * self.a_min else u_next

    def _percent(self, u: float) -> float:
        """The sparsity (percent) at log density ``u``; the level itself, exactly, at u_T."""
        return self.level if u == self.u_target else -100.0 * math.expm1(u)

    def max_drop(self) -> float:
        """The largest fall of fidelity (points) at which the proposed stage is accepted: unbounded when no
        shorter stage exists (the step is the smallest, or half of it would propose the same level again)."""
        if self.a <= self.a_min * (1 + 1e-9) or self._next(max(self.a / 2, self.a_min)) == self._next(self.a):
            return math.inf
        return self.reject * self.tolerance

    def report(self, fidelity: float) -> bool:
        """The proposed stage ended with ``fidelity`` (percent agreement with the dense network); returns
        whether it is accepted (the path continues from its end) or rejected (from the previous end)."""
        if self._proposed is None:
            raise RuntimeError("report() without a proposed stage")
        stage_p = self._percent(self._proposed)
        drop = self.fidelity - float(fidelity)
        accepted = drop <= self.max_drop()
        self.history.append((stage_p, float(fidelity), accepted))
        if not accepted:
            self.a = max(self.a / 2, self.a_min)
        else:
            self.u, self.fidelity = self._proposed, float(fidelity)
            if drop > self.tolerance:
                self.a = max(self.a / 2, self.a_min)
            elif drop < self.tolerance / 3:
                self.a = min(self.a * 1.5, self.a0)
        self._proposed = None
        return accepted


class FixedSchedule:
    """The given stage levels in order, every stage accepted (the `AdaptiveSchedule` interface)."""

    def __init__(self, stage_levels: Sequence[float]):
        self.stage_levels, self.history = list(stage_levels), []

    def propose(self) -> float | None:
        return self.stage_levels[len(self.history)] if len(self.history) < len(self.stage_levels) else None

    def max_drop(self) -> float:
        return math.inf

    def report(self, fidelity: float) -> bool:
        self.history.append((self.stage_levels[len(self.history)], float(fidelity), True))
        return True


def prediction_agreement(model: nn.Module, reference: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Percent of the inputs ``x`` (N, ...) on which ``model`` and ``reference`` predict the same class
    (argmax of the outputs): a label-free measure of how much of the reference's function is kept."""
    same = 0
    with torch.no_grad(), eval_mode(model), eval_mode(reference):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            same += int((model(xb).argmax(1) == reference(xb).argmax(1)).sum())
    return 100.0 * same / max(1, x.shape[0])


def fidelity_probe(pool: torch.Tensor, n: int = 2000, seed: int = 0) -> torch.Tensor:
    """A fixed draw of ``n`` training inputs (the same for every stage of a run) for `prediction_agreement`."""
    idx = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return pool[idx]


class StageResult(NamedTuple):
    stage: int
    target_sparsity: float  # percent, p_k
    steps: int
    stop_reason: str
    distance_before_projection: float
    path_length: float
    retries: int = 0  # steps taken again shorter after NaN/Inf weights (GeoConfig.nonfinite_retries)


def _run_stage(model: nn.Module, target: SparseTarget | FilterTarget, level: float, pool: torch.Tensor,
               cfg: GeoConfig, anchor: nn.Module | None, callbacks: Sequence[Callable[[StepInfo], None]],
               start_step: int, stage: int) -> StageResult:
    """Geo toward ``target``, then the hard projection onto it (what the traversal left is closed there); with
    ``cfg.bn_every`` > 0 the end network's batch-norm statistics are re-estimated at its weights."""
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + stage)
    res: GeoResult = geo(model, target, pool, cfg, anchor=anchor, callbacks=callbacks, generator=gen,
                         start_step=start_step)
    w = flat_params(model)
    w_p = target.project(w)
    set_flat_params(model, w_p)
    if cfg.bn_every > 0:  # the statistics of the stage's end network (the projection moved it), as during the stage
        recompute_bn(model, pool[torch.randperm(pool.shape[0], generator=gen)[:cfg.bn_samples]])
    return StageResult(stage, level, res.steps, res.stop_reason, float((w_p - w).norm()), res.path_length,
                       res.retries)


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


def run_schedule(model: nn.Module, plan: AdaptiveSchedule | FixedSchedule,
                 run_stage: Callable[[float, int, int], StageResult], dense: nn.Module, probe: torch.Tensor, *,
                 on_accept: Callable[[StageResult], None] = lambda r: None,
                 on_reject: Callable[[StageResult], None] = lambda r: None) -> list[StageResult]:
    """Algorithm 1's outer loop in memory: the stages ``plan`` proposes, each judged by its fidelity.

    For every proposed level p_k, ``run_stage(p_k, start_step, attempt)`` traverses one stage in place (e.g.
    `geodesic_stage`; ``start_step`` is the step count of the accepted stages so far, ``attempt`` counts every
    stage run, seeding its batches). The fidelity `prediction_agreement` (``model`` against ``dense`` on the
    fixed ``probe``) is reported to ``plan``; a rejected stage is undone (``model`` back to the previous
    stage's end, ``on_reject`` told) and the plan retries shorter; an accepted one continues the path
    (``on_accept``). Returns the accepted stages in order. (The flow runs the same loop as cached tasks.)
    """
    accepted: list[StageResult] = []
    start, attempt = 0, 0
    while (p_k := plan.propose()) is not None:
        saved = {n: t.detach().clone() for n, t in model.state_dict().items()}
        res = run_stage(p_k, start, attempt)
        attempt += 1
        if plan.report(prediction_agreement(model, dense, probe)):
            start += res.steps
            accepted.append(res)
            on_accept(res)
        else:
            model.load_state_dict(saved)
            on_reject(res)
    return accepted


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


def level_masks(model: nn.Module, level: float, *, structured: bool = False, layer: str = "") -> dict[str, torch.Tensor]:
    """``{param name: 0/1 mask}`` that holds a network projected onto ``level`` there during masked SGD: the
    zeroed prunable weights, or (``structured``) the removed filters of conv ``layer`` with their bias and
    batch-norm scale and shift."""
    if structured:
        return FilterTarget(model, layer, int(level)).masks(flat_params(model))
    return masks_from_zeros(model, param_slices(model))


def polish(model: nn.Module, dense: nn.Module, x: torch.Tensor, level: float, cfg: GeoConfig, epochs: int, *,
           lr: float | None = None, temperature: float = 0.0, structured: bool = False, layer: str = "",
           augment: bool = False, device: torch.device | None = None, step_callbacks: Sequence[Callable] = ()) -> float:
    """The geodesic's closing correction, after its final projection onto ``level`` (in place): masked
    distillation toward the dense network over the training inputs for ``epochs`` epochs with the mask fixed,
    by SGD (momentum 0.9, ``lr`` (default ``cfg.distill_lr``) decayed to 0 by a cosine, batches of
    ``cfg.distill_batch``; seed ``cfg.seed``) on `geodesic_core.train.distillation_loss`:
    ½ mean_x ‖f(x; w) − f(x; w_dense)‖², the first-order corrector of every Geo step (`GeoConfig.distill_steps`),
    at ``temperature`` 0; T² mean_x KL(softmax(f(x; w_dense) / T) ‖ softmax(f(x; w) / T)) at T > 0 (the
    sparsify flow's default, T = 2 at lr 0.1, chosen on a validation split). The projection's last jump moved
    the outputs off the dense network's; this brings them back as far as the mask allows. Reads ``x``
    ``(N, *input shape)`` only, no labels (``augment``: random crop + flip, as the baselines train on CIFAR).

    Returns:
        wall seconds spent.
    """
    if epochs <= 0:
        return 0.0
    t0 = time.perf_counter()
    masks = level_masks(model, level, structured=structured, layer=layer)
    tc = TrainConfig(epochs=epochs, lr=cfg.distill_lr if lr is None else lr, momentum=0.9, weight_decay=0.0,
                     batch_size=cfg.distill_batch, schedule="cosine", seed=cfg.seed)
    no_labels = torch.zeros(x.shape[0], dtype=torch.long)  # `train` reports accuracy on them; the loss never reads them
    train(model, Split(x, no_labels), tc, masks=masks, augment=augment, device=device, teacher=dense,
          teacher_temperature=temperature, step_callbacks=step_callbacks)
    return time.perf_counter() - t0


def prune_finetune(model: nn.Module, level: float, data: Split, cfg: TrainConfig, *, structured: bool = False,
                   layer: str = "", scope: Literal["global", "layer"] = "global", wall_seconds: float | None = None,
                   max_batches: int | None = None, augment: bool = False,
                   device: torch.device | None = None, callbacks: Sequence[Callable] = (),
                   step_callbacks: Sequence[Callable] = (),
                   teacher: nn.Module | None = None, teacher_temperature: float = 0.0) -> tuple[nn.Module, float, int]:
    """Baseline: hard projection (`project_to_level`), then masked SGD fine-tuning (pruned weights stay
    exactly zero), in place. On the labels (cross-entropy), or with ``teacher`` (the dense network) label-free:
    prune + distillation, masked SGD on ½ mean_x ‖f(x; w) − f(x; w_dense)‖² over the training inputs (or, at
    ``teacher_temperature`` T > 0, on T² KL between the softmaxes at T: `geodesic_core.train.distillation_loss`),
    the label-free peer of the geodesic (which reads only inputs too).

    The budget is ``cfg.epochs`` epochs, optionally capped by ``max_batches`` optimizer steps, or
    ``wall_seconds`` of wall time (the equal-compute comparison: `train`'s wall-time run, its learning-rate schedule
    spanning that time, so a cosine anneals to 0 inside it at a speed not known in advance). Structured: the removed
    filters' weights, bias and batch-norm scale and shift all stay zero. ``callbacks`` get each epoch's `EpochInfo`,
    ``step_callbacks`` each SGD step's `TrainStep`.

    Returns:
        (model, wall seconds spent, optimizer steps taken).
    """
    t0 = time.perf_counter()
    project_to_level(model, level, structured=structured, layer=layer, scope=scope)
    masks = level_masks(model, level, structured=structured, layer=layer)
    steps = train(model, data, cfg, masks=masks, augment=augment, device=device, max_batches=max_batches,
                  wall_seconds=wall_seconds, callbacks=callbacks,
                  step_callbacks=step_callbacks, teacher=teacher,
                  teacher_temperature=teacher_temperature)
    return model, time.perf_counter() - t0, steps


class CycleInfo(NamedTuple):
    """After cycle ``cycle`` of iterative prune-train: ``filters`` removed so far, ``epochs`` of SGD so far,
    ``seconds`` of training so far (the cycle callbacks' time excluded)."""

    cycle: int
    filters: int
    epochs: float
    seconds: float


def iterative_prune_train(model: nn.Module, layer: str, n_filters: int, data: Split, cfg: TrainConfig, *,
                          epochs_per_filter: float = 1.0, wall_seconds: float | None = None,
                          augment: bool = False, device: torch.device | None = None,
                          callbacks: Sequence[Callable[[CycleInfo], None]] = (),
                          step_callbacks: Sequence[Callable] = ()) -> tuple[nn.Module, float, int]:
    """The paper's structured baseline (Figure 4C/D): remove one filter at a time and retrain after each.

    Cycle k = 1..``n_filters``: zero the k smallest-norm filters of conv ``layer`` (the ones removed before
    stay removed: their norm is zero; see `FilterTarget`), then masked SGD on the labels for
    ``epochs_per_filter`` epochs (``cfg`` with its schedule restarted every cycle and spanning the cycle's steps, so
    a cosine anneals to 0 by each cycle's end; a fraction of an epoch is that fraction of the steps), or, with
    ``wall_seconds`` (the equal-time peer), for ``wall_seconds / n_filters`` of wall time each (`train`'s wall-time
    run: the schedule restarted every cycle and spanning its time; the time between cycles, the callbacks', not
    counted). The model is updated in place; every cycle reports a `CycleInfo`, every SGD step a `TrainStep`
    (``step_callbacks``).

    Returns:
        (model, training seconds (the callbacks' time excluded), SGD steps taken over all cycles).
    """
    if epochs_per_filter <= 0:
        raise InputError(f"epochs_per_filter must be positive, got {epochs_per_filter}")
    if wall_seconds is not None and not wall_seconds > 0:
        raise InputError(f"wall_seconds must be positive, got {wall_seconds}")
    FilterTarget(model, layer, n_filters)  # checks the layer and the count before any work
    steps_per_epoch = math.ceil(data.x.shape[0] / cfg.batch_size)
    per_cycle = max(1, round(epochs_per_filter * steps_per_epoch))
    cyc_cfg = cfg.model_copy(update={"epochs": math.ceil(per_cycle / steps_per_epoch)})
    budget = (dict(max_batches=per_cycle, schedule_steps=per_cycle) if wall_seconds is None
              else dict(wall_seconds=wall_seconds / n_filters))
    t0, steps, between = time.perf_counter(), 0, 0.0
    for k in range(1, n_filters + 1):
        target = FilterTarget(model, layer, k)
        w = target.project(flat_params(model))
        set_flat_params(model, w)
        steps += train(model, data, cyc_cfg.model_copy(update={"seed": cfg.seed + k}), masks=target.masks(w),
                       augment=augment, device=device, step_callbacks=step_callbacks, **budget)
        info = CycleInfo(k, k, steps / steps_per_epoch, time.perf_counter() - t0 - between)
        t = time.perf_counter()
        for cb in callbacks:
            cb(info)
        between += time.perf_counter() - t
    return model, time.perf_counter() - t0 - between, steps
