"""Continual learning (paper Algorithm 2) and the baselines it is measured against.

Algorithm 2: train w_1 on task 1; for each later task i, train w_i on task i alone, then traverse the geodesic
Geo(w_i, g^i, w_{1:i-1}, s) from w_i toward the network w_{1:i-1} that performs well on all earlier tasks,
under the metric g^i of task i only (g^i = (1/N) sum_{x in X_i} J(x)^T J(x), inputs of task i alone), and
take its end point as w_{1:i}. Only task i's data is used at stage i; the other tasks' test sets are read
for evaluation only.

Baselines on the same tasks, networks and seeds:
  * ``linear``: the best point on the straight line between w_i and w_{1:i-1} (the point with the highest
    minimum test accuracy over tasks 1..i: an oracle that reads every task's test set, as in the paper);
  * ``sgd``: sequential fine-tuning, w_{1:i} = SGD on task i from w_{1:i-1};
  * ``l2``: the same with the pull (λ/2)|w - w_{1:i-1}|^2;
  * ``ewc``: elastic weight consolidation (Kirkpatrick et al. 2017): (λ/2) sum_{j<i} sum_k F_j,k (w_k - w*_j,k)^2
    with F_j the diagonal of the Fisher information of p(y|x; w*_j) on task j's inputs, computed when task j
    is finished (with task j's data).

Scenarios (``SCENARIOS``): permuted MNIST (k tasks, one fixed pixel permutation per task from one seed, task 1
plain MNIST, shared 10-way head, LeNet-300-100); MNIST -> Fashion-MNIST as the paper sets it (small CNN, one
shared 10-way head: class k is digit k for an MNIST image and garment k for a Fashion image, so nothing gives
the task's identity at test time); and ``mnist_fashion_heads``, the same two tasks with two 10-way heads
(outputs 0-9 for MNIST, 10-19 for Fashion-MNIST: each task is trained, measured (its metric g^i, its Fisher)
and evaluated on its own head, so the task identity is given at test time).
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
from .data import Split, load_split
from .errors import InputError, NonFiniteError
from .geo import GeoResult, StepInfo, geo
from .metric import FUNC_LOCK, eval_mode, flat_params
from .models import build_model
from .scenarios import (SCENARIOS, Scenario, TaskSpec, check_scenario_data, check_scenario_name,  # noqa: F401
                        check_task_count, get_scenario)
from .targets import FixedTarget, WeightedTarget, param_slices
from .train import distillation_loss, evaluate, full_float32, train


# --- configuration: the continual flow's settings and its defaults for the nested ones ---------------------

SCENARIO_SETTINGS = ("eta", "anchor", "metric_batch", "temperature")  # geo settings whose default is the scenario's


def _by_scenario(key: str) -> str:
    """Which value each registered scenario gives ``key`` (its `TraversalDefaults`), for the field's description."""
    values: dict = {}
    for name, sc in SCENARIOS.items():
        values.setdefault(getattr(sc.traversal, key), []).append(name)
    shown = {(v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else f"{v:g}"): n
             for v, n in values.items()}
    return "the scenario's: " + "; ".join(f"{v} for {', '.join(n)}" for v, n in shown.items()) + "."


ContinualGeoConfig = with_defaults(GeoConfig, "ContinualGeoConfig", __name__,
                                   none_means={k: _by_scenario(k) for k in SCENARIO_SETTINGS},
                                   eta=None, anchor=None, max_steps=4000, patience=50, metric_batch=None, solver="cg",
                                   cg_iters=10, output_space="softmax", temperature=None)
ContinualTrainConfig = with_defaults(TrainConfig, "ContinualTrainConfig", __name__, epochs=5, lr=0.05)


CONTINUAL_METHODS = ("geodesic", "linear", "sgd", "l2", "ewc")
SEQUENTIAL_METHODS = ("sgd", "l2", "ewc")  # trained on each task in turn: the ones given the geodesic's time


class ContinualConfig(_Config):
    """Algorithm 2 on a sequence of tasks, with its baselines: one network w_i trained per task, then for each
    task i ≥ 2 the traversal Geo(w_i, g^i, w_{1:i-1}, s) under task i's metric toward the network good on tasks
    1..i-1; its end is w_{1:i}."""

    scenario: str = Field("permuted_mnist", json_schema_extra=_one_of(_scenarios, "module:callable"))
    """A registered scenario (the task sequence) or your module:callable."""
    tasks: int | None = Field(None, ge=2)
    """Tasks in the sequence (None: the scenario's, 5 for permuted MNIST, 2 for MNIST -> Fashion-MNIST)."""
    model: str | None = Field(None, json_schema_extra=_one_of(_models, _USER_MODEL))
    """The network (None: the scenario's, lenet300 for permuted MNIST, cnn for MNIST -> Fashion)."""
    methods: list[str] = Field(default_factory=lambda: list(CONTINUAL_METHODS), json_schema_extra={
        "items": {"type": "string", "enum": list(CONTINUAL_METHODS)}, "minItems": 1, "uniqueItems": True})
    """Which of geodesic, linear (the best point of the straight line), sgd, l2, ewc to run."""
    permutation_seed: int = 0
    """Seed of every permuted-MNIST permutation."""
    shared_init: bool = False
    """Every per-task network starts from the same random initialization (from seed; they stay independent
    and train concurrently); off: network i starts from seed + i."""
    align: Literal["auto", "activations", "none"] | None = Field(None, description=(
        "Before each traversal (and each straight line), permute w_i's hidden units to match w_{1:i-1}'s (activation "
        "matching on task i's inputs, `geodesic_core.align`): w_i's function, so task i's accuracy, is unchanged, "
        "and the path to w_{1:i-1} is shorter. auto: where the architecture allows it (chain networks such as "
        "LeNet-300-100 and the CNN, the pre-activation ResNet); activations: always (an architecture it cannot align "
        "is an error before any training); none: w_i as trained, the paper as written. None: " + _by_scenario("align")
        + " It pays on MNIST -> Fashion-MNIST (README); on permuted MNIST, whose tasks permute the pixels, there is "
        "little to match."))
    fisher_weight: float | None = Field(None, ge=0.0, description=(
        "ω: each traversal aims along (1 + ω F / mean F) ⊙ (w_{1:i-1} − w) instead of w_{1:i-1} − w, F the "
        "diagonal Fisher of the earlier tasks' networks, each computed on fisher_samples of its task's inputs when "
        "its stage ended (what EWC keeps; no labels), so the step closes first the part of the distance that the "
        "earlier tasks' outputs depend on (the descent direction of ½ (w − w_{1:i-1})^T diag(1 + ω F / mean F) "
        "(w − w_{1:i-1})). The traversal still ends at w_{1:i-1} and stops on the Euclidean distance. 0: the paper's "
        "Geo step. None: " + _by_scenario("fisher_weight")))
    refit_head: bool | None = Field(None, description=(
        "After each traversal, refit task i's own head (its rows of the output layer and their biases) by label-free "
        "distillation toward w_i's outputs on task i's training inputs, the rest of the network fixed: min over the "
        "head of the mean KL(softmax(f(x; w_i)) ‖ softmax(f(x; w))), a convex problem solved by L-BFGS "
        "(`geodesic_core.continual.distill_head`). No earlier task reads these weights, so their accuracy is "
        "unchanged; task i gets back part of what the traversal cost it. Its time counts in the stage's. Only with a "
        "head per task: a shared head is read by every task. None: " + _by_scenario("refit_head")))
    polish_epochs: int | None = Field(None, ge=0, description=(
        "The closing correction of each stage, after its traversal (and before refit_head): epochs of SGD from the "
        "traversal's end on T² KL(softmax(f(x; w_i) / T) ‖ softmax(f(x; w) / T)) over task i's training inputs (no "
        "labels) plus (polish_strength / 2) Σ_j F_j (w − w_{1:j})², the earlier tasks' diagonal Fisher at the "
        "chain's stage ends (each on fisher_samples inputs of its task, no labels): the traversal's anchor and its "
        "target settled as one local problem (`geodesic_core.continual.polish_stage`). Its time counts in the "
        "stage's. 0: the traversal's end is the stage's end, the paper as written. None: "
        + _by_scenario("polish_epochs")))
    start_mix: float = Field(0.0, ge=0.0, le=1.0, description=(
        "α: each per-task network of the geodesic's chain, w_i for i >= 2, starts from α w_{1:i-1} + (1 − α) w_0 "
        "(w_{1:i-1} the chain's end so far, w_0 the fresh initialization it starts from at α = 0; "
        "`geodesic_core.continual.mixed_start`) and then trains on task i alone exactly as at α = 0, so the traversal "
        "back to w_{1:i-1} starts nearer it. α > 0 trains the geodesic's w_i after stage i − 1 ends (one at a time; its "
        "time counts in the geodesic's); the other methods keep the fresh networks. α = 1: from w_{1:i-1} alone (on "
        "permuted MNIST its w_i trained to up to 0.7 point below a fresh one, README). 0: every w_i from a fresh "
        "initialization, trained concurrently, the paper's."))
    polish_strength: float = Field(10.0, ge=0.0)
    """λ of the closing correction's pull toward the earlier stage ends (polish_epochs): larger holds the earlier
    tasks and gives up task i (README, the trade-off on five permuted tasks)."""
    polish_lr: PositiveFloat = 0.01
    """The closing correction's learning rate (SGD, momentum 0.9, cosine decay to 0, batches of 128)."""
    polish_temperature: float = Field(1.0, ge=0.0)
    """The closing correction's loss on task i: T > 0 matches w_i's softmax at temperature T (T² KL); 0 its
    logits (½‖·‖²)."""
    l2_strength: float = Field(0.01, ge=0.0)
    """λ of the L2 pull (λ/2) ‖w − w_{1:i-1}‖²."""
    ewc_strength: float = Field(100.0, ge=0.0)
    """λ of EWC's penalty (λ/2) Σ F (w − w_{1:i-1})², one per earlier task."""
    fisher_samples: PositiveInt = 1000
    """Task inputs over which each diagonal Fisher (EWC's, and the geodesic's with fisher_weight > 0) is averaged."""
    linear_points: int = Field(21, ge=3)
    """Points scanned on each straight line."""
    eval_every: PositiveInt = 100
    """Steps between evaluations along each geodesic."""
    equal_time: bool = False
    """Also run each sequential baseline among methods (sgd, l2, ewc) at the geodesic's wall time (methods
    sgd_equal_time, l2_equal_time, ewc_equal_time): stage i trains for the geodesic's stage time (w_i's training
    plus the traversal, and the Fisher it read; less EWC's own Fisher) of wall time, its learning-rate schedule
    spanning that time, one stage at a time (each in one worker thread, as the geodesic's stage ran)."""
    seed: int = 0
    """Seed of the per-task networks, the traversals and the baselines."""
    geo: ContinualGeoConfig = Field(default_factory=ContinualGeoConfig)
    """Each traversal Geo(w_i, g^i, w_{1:i-1}, s), geo.max_steps = s (g^i and the anchor on softmax(f / T), which
    tolerates logit changes that do not change task i's predictions; eta, anchor, metric_batch and temperature left
    None take the scenario's values)."""
    train: ContinualTrainConfig = Field(default_factory=ContinualTrainConfig)
    """Training of every per-task network w_i, and of each later task for the sequential baselines."""

    @field_validator("tasks", mode="before")
    @classmethod
    def _check_tasks(cls, v):
        if isinstance(v, int) and v < 2:
            raise ValueError(f"continual learning needs at least 2 tasks, got {v}; pass --tasks 2 or more")
        return v

    @field_validator("scenario")
    @classmethod
    def _check_scenario(cls, v: str) -> str:
        from .scenarios import check_scenario_name

        return check_scenario_name(v)

    @field_validator("model")
    @classmethod
    def _check_model(cls, v: str | None) -> str | None:
        from .models import check_model_name

        return None if v is None else check_model_name(v)

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in CONTINUAL_METHODS]
        if bad or not v:
            raise ValueError(f"unknown method(s) {bad}; valid methods: {', '.join(CONTINUAL_METHODS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"methods must not repeat, got {v}")
        return [m for m in CONTINUAL_METHODS if m in v]

    @model_validator(mode="after")
    def _check_task_count(self) -> "ContinualConfig":
        from .models import MODELS, check_model_output

        sc = get_scenario(self.scenario)
        if sc.max_tasks is not None and self.tasks is not None and self.tasks > sc.max_tasks:
            raise ValueError(f"scenario {self.scenario!r} has {sc.max_tasks} tasks, got tasks={self.tasks}")
        model = self.model or sc.model
        if model not in MODELS:  # torchvision's or the user's network: built and run once on the data's shape first
            from .data import get_spec

            check_model_output(model, sc.num_classes, get_spec(sc.datasets[0]).input_shape)
        return self

    @model_validator(mode="after")
    def _check_refit_head(self) -> "ContinualConfig":
        if self.refit_head and not get_scenario(self.scenario).heads:
            raise ValueError(f"refit_head needs a head per task; scenario {self.scenario!r} has one shared head, "
                             f"which every task reads (refitting it to task i would change the earlier tasks): use "
                             f"mnist_fashion_heads, or leave refit_head unset")
        return self

    @model_validator(mode="after")
    def _check_equal_time(self) -> "ContinualConfig":
        if self.equal_time and ("geodesic" not in self.methods or not set(self.methods) & set(SEQUENTIAL_METHODS)):
            raise ValueError(f"--equal-time gives the sequential baselines the geodesic's wall time: methods must "
                             f"include geodesic and one of {', '.join(SEQUENTIAL_METHODS)}, got {self.methods}")
        return self

    def resolved(self) -> "ContinualConfig":
        """This config with the settings left None filled in from the scenario's `TraversalDefaults`: ``align``,
        ``fisher_weight``, ``refit_head``, ``polish_epochs`` and ``geo``'s eta, anchor, metric_batch and temperature
        (T = 1 where g^i is on the logits). What the flow runs, caches on and logs to MLflow; a resolved config resolves
        to itself."""
        defaults = get_scenario(self.scenario).traversal
        fill = {k: getattr(defaults, k) for k in SCENARIO_SETTINGS if getattr(self.geo, k) is None}
        if "temperature" in fill and self.geo.output_space != "softmax":
            fill["temperature"] = 1.0
        top = {k: getattr(defaults, k) for k in ("align", "fisher_weight", "refit_head", "polish_epochs")
               if getattr(self, k) is None}
        if not fill and not top:
            return self
        return type(self).model_validate({**self.model_dump(), "geo": {**self.geo.model_dump(), **fill}, **top})

    def geodesic_reads_fisher(self) -> bool:
        """Whether the geodesic reads the earlier tasks' Fisher: its step aimed by it (``fisher_weight`` > 0) or its
        stages closed against it (``polish_epochs`` > 0). Settings left None count as off: ask a resolved config."""
        return bool(self.fisher_weight) or bool(self.polish_epochs)

    def sequential_methods(self) -> list[str]:
        """The sequential baselines (sgd, l2, ewc) among ``methods``."""
        return [m for m in self.methods if m in SEQUENTIAL_METHODS]

    def n_tasks(self) -> int:
        """k: ``tasks``, or the scenario's default (5 permuted-MNIST tasks; 2 for MNIST -> Fashion-MNIST)."""
        return self.tasks or get_scenario(self.scenario).default_tasks

    def model_name(self) -> str:
        return self.model or get_scenario(self.scenario).model


def load_task(task: TaskSpec, train: bool, data_dir=None, permutation_seed: int = 0) -> Split:
    """One task's split with its labels moved to the task's classes of the shared head."""
    s = load_split(task.dataset, train, data_dir, task.permutation, permutation_seed)
    return Split(s.x, s.y + task.label_offset) if task.label_offset else s


def build_scenario_model(scenario: Scenario, model: str | None = None, seed: int = 0) -> nn.Module:
    """A freshly initialized network (from ``seed``) with the scenario's input shape and shared head."""
    return build_model(model or scenario.model, scenario.num_classes, scenario.in_channels, scenario.image_size,
                       seed=seed)


class HeadView(nn.Module):
    """The network seen through one task's head: ``model(x)[:, start:stop]``. Same parameters, same order."""

    def __init__(self, model: nn.Module, head: tuple[int, int]):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.head[0]:self.head[1]]


def task_view(model: nn.Module, task: TaskSpec) -> nn.Module:
    """What task ``task`` trains, measures and evaluates: its head of a multi-head network, else the network."""
    return HeadView(model, task.head) if task.head is not None else model


def task_accuracies(model: nn.Module, tests: Sequence[Split], tasks: Sequence[TaskSpec] | None = None) -> list[float]:
    """Test accuracy (percent) on each task (argmax over the task's head, or the shared head)."""
    tasks = tasks or [TaskSpec("") for _ in tests]
    return [evaluate(task_view(model, s), t)[0] for t, s in zip(tests, tasks)]


# --- Algorithm 2, line 7 ---------------------------------------------------------------------------------------

def continual_geodesic(model: nn.Module, previous: nn.Module, pool: torch.Tensor, cfg: GeoConfig, *,
                       task: TaskSpec | None = None, callbacks: Sequence[Callable[[StepInfo], None]] = (),
                       generator: torch.Generator | None = None, fisher: torch.Tensor | None = None,
                       fisher_weight: float = 0.0) -> GeoResult:
    """Geo(w_i, g^i, w_{1:i-1}, s): from the task-i network (``model``, updated in place) toward ``previous``.

    Each step solves eq. 6-7 under g^i estimated on a batch of ``pool`` (task i's training inputs
    ``(P, C, H, W)``, nothing else), with the output anchor toward w_i's own outputs on those inputs
    (``cfg.anchor``), which keeps task i's function while the weights move to w_{1:i-1}. The traversal ends by
    the criteria of section 3; its end point is w_{1:i}. For a multi-head network (``task.head``) g^i and the
    anchor see task i's head only, and the target leaves task i's head where it is (`head_weights`: its rows in
    w_{1:i-1} were never trained), so only the anchor moves it. With ``fisher_weight`` ω > 0 and ``fisher`` F
    ``(n,)`` (the earlier tasks' diagonal Fisher summed, `fisher_diagonal`, in `flat_params` order) eq. 6 is
    solved for the descent direction of ½ (w − w_{1:i-1})^T diag(a) (w − w_{1:i-1}), a = 1 + ω F / mean(F)
    (`WeightedTarget`).
    """
    unset = [k for k in SCENARIO_SETTINGS if getattr(cfg, k, 0) is None]
    if unset:
        raise ValueError(f"geo.{', geo.'.join(unset)} unset (None): resolve the config first, "
                         f"ContinualConfig.resolved() fills them in from the scenario")
    w_prev = flat_params(previous).to(flat_params(model))
    view = task_view(model, task) if task is not None else model
    own = head_weights(model, task.head) if task is not None and task.head is not None else None
    return geo(view, fisher_target(w_prev, fisher, fisher_weight, own), pool, cfg, callbacks=callbacks,
               generator=generator)


def _output_layer(model: nn.Module, head: tuple[int, int]) -> tuple[str, nn.Linear]:
    """The output layer of a multi-head network (its last ``nn.Linear``), checked to have ``head``'s units."""
    linears = [(k, m) for k, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears or not (0 <= head[0] < head[1] <= linears[-1][1].out_features):
        raise InputError(f"a multi-head network needs an nn.Linear output layer with the head's units "
                         f"{head[0]}..{head[1] - 1}; this network's last Linear: "
                         f"{linears[-1][1].out_features if linears else 'none'} outputs")
    return linears[-1]


def head_weights(model: nn.Module, head: tuple[int, int]) -> torch.Tensor:
    """``(n,)`` bool in `flat_params` order: the weights of a multi-head network that only outputs
    ``head`` = [start, stop) read, the rows start..stop-1 of its output layer (the last ``nn.Linear``, one output
    per unit of every head) and their biases. In the network w_{1:i-1} these rows of task i's head were never
    trained, so the traversal's target leaves them to the anchor (`FixedTarget.own`)."""
    name, _ = _output_layer(model, head)
    slices = param_slices(model)
    mask = torch.zeros(slices[-1].stop, dtype=torch.bool, device=next(model.parameters()).device)
    for s in slices:
        if s.name in (f"{name}.weight", f"{name}.bias"):
            mask[s.start:s.stop].view(s.shape)[head[0]:head[1]] = True
    return mask


def completed_heads(model: nn.Module, w_i: torch.Tensor, w_prev: torch.Tensor, tasks: Sequence[TaskSpec],
                    index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The endpoints of the straight line between w_i and w_{1:i-1} ``(n,)`` with each one's untrained heads taken
    from the other: w_{1:i-1} gets task i's head from w_i (it never trained it) and w_i the heads of tasks 1..i-1 from
    w_{1:i-1}, so along the line every head stays at its trained value and only the shared layers are interpolated.
    ``tasks[:index + 1]`` are the tasks so far, ``model`` the network whose `flat_params` layout the vectors follow.
    With one shared head (no ``task.head``) the endpoints are returned unchanged."""
    if tasks[index].head is None:
        return w_i, w_prev
    own = head_weights(model, tasks[index].head).to(w_i.device)
    earlier = torch.zeros_like(own)
    for t in tasks[:index]:
        earlier |= head_weights(model, t.head).to(w_i.device)
    return torch.where(earlier, w_prev, w_i), torch.where(own, w_i, w_prev)


class HeadFit(NamedTuple):
    kl_before: float  # mean KL(softmax(f(x; w_i)) ‖ softmax(f(x; w))) over the inputs, before the refit
    kl_after: float
    iterations: int  # L-BFGS iterations


@full_float32()
def distill_head(model: nn.Module, teacher: nn.Module, x: torch.Tensor, head: tuple[int, int],
                 batch_size: int = 1000, max_iter: int = 300) -> HeadFit:
    """Refit one head of a multi-head network (in place) to a teacher's outputs on inputs alone, no labels.

    With φ(x; w) ``(P, d)`` the input of the output layer (everything before it fixed, eval mode) and the head's
    rows W_h ``(K, d)``, b_h ``(K,)`` of that layer (``head`` = [start, stop), K = stop − start), solves

        min_{W_h, b_h} (1/P) Σ_x KL(softmax(z(x)) ‖ softmax(W_h φ(x; w) + b_h)),   z(x) = teacher(x)[start:stop],

    over the inputs ``x`` ``(P, ...)``: a convex problem in (W_h, b_h) (a multinomial logistic regression on soft
    targets), solved by full-batch L-BFGS with a strong-Wolfe line search from the current head, at most
    ``max_iter`` iterations. No other weight changes: in continual learning (``teacher`` = w_i, ``model`` the end of
    the traversal Geo(w_i, g^i, w_{1:i-1})) no earlier task's output moves, and task i gets back what its head can
    recover on the traversal's features. Features ``(P, d)`` and targets ``(P, K)`` are held in memory.
    """
    _, layer = _output_layer(model, head)
    device, on = next(model.parameters()).device, next(teacher.parameters()).device
    feats: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inputs, _out: feats.append(inputs[0].detach().float()))
    try:
        with torch.no_grad(), eval_mode(model), eval_mode(teacher):
            wanted = []
            for i in range(0, x.shape[0], batch_size):
                xb = x[i:i + batch_size].to(device)
                model(xb)
                wanted.append(teacher(xb.to(on))[:, head[0]:head[1]].float().to(device))
    finally:
        hook.remove()
    phi, z = torch.cat(feats), torch.cat(wanted)
    weight = layer.weight[head[0]:head[1]].detach().clone().requires_grad_(True)
    bias = (layer.bias[head[0]:head[1]].detach().clone().requires_grad_(True) if layer.bias is not None
            else torch.zeros(head[1] - head[0], device=device))
    params = [weight] + ([bias] if layer.bias is not None else [])
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        return distillation_loss(phi @ weight.T + bias, z, temperature=1.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.no_grad():
        before = float(loss_fn())
    opt.step(closure)
    with torch.no_grad():
        after = float(loss_fn())
        if not math.isfinite(after):
            raise NonFiniteError(f"refitting the head {head[0]}..{head[1] - 1} gave a non-finite loss")
        if after < before:
            layer.weight[head[0]:head[1]] = weight
            if layer.bias is not None:
                layer.bias[head[0]:head[1]] = bias
    return HeadFit(before, min(before, after), int(opt.state[weight].get("n_iter", 0)))


def polish_stage(model: nn.Module, teacher: nn.Module, x: torch.Tensor, pull: QuadraticPull, epochs: int, *,
                 lr: float, temperature: float = 1.0, batch_size: int = 128, seed: int = 0,
                 task: TaskSpec | None = None, step_callbacks: Sequence[Callable] = ()) -> float:
    """The closing correction of a continual stage, after the traversal Geo(w_i, g^i, w_{1:i-1}) (in place).

    From the traversal's end, ``epochs`` epochs of SGD (momentum 0.9, ``lr`` decayed to 0 by a cosine, batches of
    ``batch_size``, no weight decay, seed ``seed``) on

        T² (1/P) Σ_x KL(softmax(f(x; w_i) / T) ‖ softmax(f(x; w) / T)) + (λ/2) Σ_{j<i} Σ_k F_j,k (w_k − w_{1:j},k)²,

    over task i's inputs ``x`` ``(P, ...)``, no labels: the traversal's anchor (task i's outputs, ``teacher`` =
    w_i, `train.distillation_loss` at ``temperature`` T) against the earlier tasks' diagonal Fisher at the chain's
    stage ends (``pull``, `QuadraticPull`, its strength λ; what the aimed step reads, no labels). The traversal
    stops where its step and its anchor balance; this settles the same two pulls as one local problem, so each
    stage gives up less of task i and of the earlier tasks. With a head per task (``task.head``) the loss reads
    task i's head. Returns the wall seconds spent."""
    if epochs <= 0:
        return 0.0
    t0 = time.perf_counter()
    view = task_view(model, task) if task is not None else model
    teach = task_view(teacher, task) if task is not None else teacher
    tc = TrainConfig(epochs=epochs, lr=lr, momentum=0.9, weight_decay=0.0, batch_size=batch_size,
                     schedule="cosine", seed=seed)
    no_labels = torch.zeros(x.shape[0], dtype=torch.long)  # `train` reports accuracy on them; the loss reads none
    train(view, Split(x, no_labels), tc, penalty=pull, teacher=teach, teacher_temperature=temperature,
          step_callbacks=step_callbacks)
    return time.perf_counter() - t0


def mixed_start(fresh: nn.Module, chain: nn.Module, mix: float) -> nn.Module:
    """Where the geodesic's per-task network w_i starts with ``start_mix`` α (in place on ``fresh``, returned):

        w ← α w_{1:i-1} + (1 − α) w_0,

    every parameter and floating-point buffer (batch-norm statistics) of ``fresh`` (w_0, a fresh initialization) mixed
    with the same one of ``chain`` (w_{1:i-1}, the chain's end so far); integer buffers (batch-norm's step count) are
    w_0's. w_i then trains on task i alone from there. The fresh share keeps w_i as trainable as a fresh network (from
    w_{1:i-1} alone, α = 1, it trained to a lower accuracy); the chain's share starts the traversal back nearer w_{1:i-1}.
    ``fresh`` and ``chain`` must be the same architecture (the same parameter and buffer names and shapes)."""
    if not 0.0 <= mix <= 1.0:
        raise InputError(f"start_mix must be in [0, 1], got {mix}: 0 starts w_i fresh, 1 at w_{{1:i-1}}")
    ours = dict(fresh.named_parameters()) | dict(fresh.named_buffers())
    theirs = dict(chain.named_parameters()) | dict(chain.named_buffers())
    shapes = {k: tuple(v.shape) for k, v in ours.items()}
    if shapes != {k: tuple(v.shape) for k, v in theirs.items()}:
        raise InputError("start_mix: the fresh network and the chain's end are different architectures (their "
                         "parameter names or shapes differ); both must be the scenario's network")
    with torch.no_grad():
        for k, v in ours.items():
            if v.is_floating_point():
                v.mul_(1.0 - mix).add_(theirs[k].to(v), alpha=mix)
    return fresh


def fisher_target(w_prev: torch.Tensor, fisher: torch.Tensor | None, fisher_weight: float,
                  own: torch.Tensor | None = None) -> FixedTarget:
    """The traversal's target w_{1:i-1} ``(n,)``: approached along w_{1:i-1} − w (ω = 0), or along
    (1 + ω F / mean F) ⊙ (w_{1:i-1} − w) with the earlier tasks' diagonal Fisher ``fisher`` F ``(n,)``. ``own``
    ``(n,)`` bool: the weights the target leaves where they are (task i's own head, `head_weights`)."""
    if not (fisher_weight >= 0 and math.isfinite(fisher_weight)):
        raise InputError(f"fisher_weight must be a finite number >= 0, got {fisher_weight}")
    if fisher_weight == 0:
        return FixedTarget(w_prev, own=own)
    if fisher is None:
        raise ValueError("fisher_weight > 0 needs the earlier tasks' diagonal Fisher (fisher_diagonal)")
    f = fisher.to(w_prev).reshape(-1)
    mean = float(f.mean()) if f.shape == w_prev.shape else 0.0
    if not (mean > 0 and math.isfinite(mean) and (f >= 0).all()):
        raise InputError(f"the earlier tasks' Fisher must be {w_prev.numel()} finite numbers >= 0, not all zero")
    return WeightedTarget(w_prev, own=own, weights=1 + fisher_weight * f / mean)


def linear_scan(points: Sequence[torch.Tensor], measure: Callable[[torch.Tensor], list[float]]
                ) -> tuple[list[list[float]], int]:
    """Evaluate ``measure(w)`` (accuracy on each task) at each point of a path (e.g. `linear_path`); returns
    the values and the index of the best point (highest minimum over tasks, then highest mean)."""
    values = [measure(w) for w in points]
    best = max(range(len(values)), key=lambda j: (min(values[j]), sum(values[j])))
    return values, best


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """Project weight vectors ``(P, n)`` on their first two principal components: ``(P, 2)`` (paper Fig. 5B)."""
    centered = points.double() - points.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    comps = vh[:2] if vh.shape[0] >= 2 else torch.cat([vh, torch.zeros_like(vh)])[:2]
    return (centered @ comps.T).float()


# --- Baselines: penalties for sequential SGD -------------------------------------------------------------------

def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in model.parameters()])


class QuadraticPull:
    """(λ/2) sum_k F_k (w_k - w*_k)^2 summed over earlier tasks, kept in the expanded form
    (λ/2)(w^T diag(A) w - 2 w^T b + c) with A = sum_j F_j, b = sum_j F_j w*_j, so any number of tasks costs
    one vector product. F = 1 gives the plain L2 pull toward w* (the ``l2`` baseline); F = the diagonal
    Fisher gives EWC with one penalty per task (Kirkpatrick et al. 2017, eq. 3 summed over tasks).
    """

    def __init__(self, strength: float, a: torch.Tensor, b: torch.Tensor, c: float):
        if strength < 0 or not math.isfinite(strength):
            raise InputError(f"penalty strength must be a finite number >= 0, got {strength}")
        self.strength, self.a, self.b, self.c = strength, a, b, c

    @classmethod
    def empty(cls, strength: float, n: int) -> "QuadraticPull":
        return cls(strength, torch.zeros(n), torch.zeros(n), 0.0)

    def add(self, weights: torch.Tensor, fisher: torch.Tensor | None = None) -> "QuadraticPull":
        """A new pull that also holds (w - ``weights``)^T diag(``fisher``) (w - ``weights``) (F = 1 if None)."""
        f = torch.ones_like(weights) if fisher is None else fisher
        w = weights.to(self.a)
        f = f.to(self.a)
        return QuadraticPull(self.strength, self.a + f, self.b + f * w, self.c + float((f * w * w).sum()))

    def __call__(self, model: nn.Module) -> torch.Tensor:
        w = _flat(model)
        a, b = self.a.to(w.device), self.b.to(w.device)
        return 0.5 * self.strength * ((a * w * w).sum() - 2 * (b * w).sum() + self.c)

    def state(self) -> dict[str, torch.Tensor]:
        return {"a": self.a, "b": self.b, "c": torch.tensor(self.c, dtype=torch.float64)}

    @classmethod
    def from_state(cls, strength: float, state: dict[str, torch.Tensor]) -> "QuadraticPull":
        return cls(strength, state["a"], state["b"], float(state["c"]))


def fisher_diagonal(model: nn.Module, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Diagonal of the Fisher information of p(y | x; w) at the model's weights, averaged over ``x (N, C, H, W)``:

        F_k = (1/N) sum_x sum_y p(y|x) (d log p(y|x) / d w_k)^2,

    the expectation over the model's own predictive distribution taken exactly (all classes), not sampled,
    and not the "empirical Fisher" of the labels. Per-example, per-class gradients come from ``torch.func``
    (vmap of jacrev of the log-softmax), ``batch_size`` inputs at a time. Returns a flat ``(n,)`` vector in
    `flat_params` order. Batch norm is used in eval mode.
    """
    from torch.func import functional_call, jacrev, vmap

    names = [k for k, _ in model.named_parameters()]
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b for k, b in model.named_buffers()}
    device = next(model.parameters()).device

    def logp(p, xi):
        return torch.log_softmax(functional_call(model, (p, buffers), (xi.unsqueeze(0),)).squeeze(0), -1)

    total = torch.zeros(sum(p.numel() for p in params.values()), dtype=torch.float64, device=device)
    with FUNC_LOCK, eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].to(device)
            with torch.no_grad():
                prob = model(xb).softmax(-1)  # (B, C)
            jac = vmap(jacrev(logp), in_dims=(None, 0))(params, xb)  # {name: (B, C, *shape)}
            parts = [(jac[k].reshape(*prob.shape, -1) ** 2 * prob.unsqueeze(-1)).sum((0, 1)) for k in names]
            total += torch.cat(parts).double()
    return (total / x.shape[0]).float()


def average_accuracy(final_row: Sequence[float]) -> float:
    """Mean test accuracy over all tasks of the final network."""
    return float(sum(final_row) / len(final_row))


def backward_transfer(matrix: Sequence[Sequence[float]]) -> float:
    """BWT = (1/(k-1)) sum_{j<k} (R[k, j] - R[j, j]) (Lopez-Paz & Ranzato 2017); R[i, j] = accuracy on task j
    after learning task i. Negative values are forgetting, in accuracy points."""
    k = len(matrix)
    return float(sum(matrix[k - 1][j] - matrix[j][j] for j in range(k - 1)) / (k - 1))
