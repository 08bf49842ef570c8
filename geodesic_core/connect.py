"""Mode connectivity (paper Algorithm 3): a high-accuracy path between two trained networks w_1, w_2.

By default (``ConnectConfig.align``) w_2's hidden units are first permuted to match w_1's (`geodesic_core.align`:
the same function, other weights), and every path connects w_1 to that copy.

The geodesic Geo(w_1, g, w_2) is traversed under the task's metric g (the task's training inputs), in
segments of Geo steps; every point along it is evaluated on the test set (with batch-norm statistics
re-estimated for that point: the stored ones belong to an endpoint), and so is the straight line between the
same endpoints. Both paths get their length under g (on one fixed probe batch) and their Euclidean length,
and a 2-D view: the coordinate along the chord w_2 - w_1 and the distance from it.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from .config import _USER_DATA, _USER_MODEL, GeoConfig, TrainConfig, _datasets, _ModelOnDataset, _models, _one_of, with_defaults
from .data import Split
from .errors import InputError
from .geo import GeoResult, StepInfo, geo
from .metric import flat_params, param_unflattener, set_flat_params
from .targets import FixedTarget
from .train import evaluate, recompute_bn


# --- configuration: the connect flow's settings and its defaults for the nested ones -----------------------

ConnectGeoConfig = with_defaults(GeoConfig, "ConnectGeoConfig", __name__, eta=0.1, anchor=1.0, max_steps=500, patience=50,
                                 metric_batch=256, solver="cg", cg_iters=10)
ConnectTrainConfig = with_defaults(TrainConfig, "ConnectTrainConfig", __name__, epochs=5, lr=0.05)


class ConnectConfig(_ModelOnDataset):
    """Algorithm 3: connect two trained networks of one architecture by a geodesic from w_1 toward w_2, the
    anchor pulling toward the endpoints' interpolated outputs f_t, and compare it with the straight line and
    the trained Bezier curves between them."""

    model: str = Field("lenet300", json_schema_extra=_one_of(_models, _USER_MODEL))
    """A registered model, torchvision:<name> or your builder module:callable."""
    dataset: str = Field("mnist", json_schema_extra=_one_of(_datasets, _USER_DATA))
    """A registered dataset or your loader module:callable."""
    seed: int = 0
    """Seed of endpoint w_1's training and of the traversal."""
    seed_b: int = 1
    """Seed of endpoint w_2's training (different from seed)."""
    checkpoint_a: str | None = None
    """Endpoint w_1 from this checkpoint instead of training it (give both checkpoints or neither)."""
    checkpoint_b: str | None = None
    """Endpoint w_2 from this checkpoint instead of training it (give both checkpoints or neither)."""
    align: Literal["auto", "activations", "none"] = "auto"
    """Before any path is built, permute w_2's hidden units to match w_1's (activation matching, Tatro et al. 2020;
    `geodesic_core.align`): w_2's function is unchanged, and every path (the line, the curves, the geodesic) then
    connects w_1 to the aligned w_2. auto: where the architecture allows it (chain networks such as LeNet-300-100,
    the CNN and VGG, and the pre-activation ResNet), not elsewhere (other skip connections, e.g. torchvision's
    ResNets); activations: always (an architecture it cannot align is an error before any training); none: w_2 as
    trained, the paper as written."""
    max_segments: PositiveInt = 10
    """The traversal runs in cached segments of geo.max_steps steps, at most this many."""
    complete: bool = True
    """When the traversal stalls (oscillation) before w_2, continue it with the anchor off and a larger trust
    region until w_2 is reached; off: the path ends where it stalled and the run reports how far it got
    (final_distance_ratio)."""
    complete_eps_factor: float = Field(10.0, ge=1.0)
    """The completion step's trust region: ε times this."""
    eval_every: PositiveInt = 50
    """Steps between test-set evaluations along the geodesic."""
    linear_points: int = Field(21, ge=3)
    """Points evaluated on the straight line and on each Bezier curve."""
    bezier: bool = True
    """Also train the peer baseline, the quadratic Bezier curve between the same endpoints (Garipov et al.
    2018) on the labels, with bezier_train (its epochs are its training cost)."""
    bezier_train: ConnectTrainConfig = Field(default_factory=ConnectTrainConfig)
    """Training of the Bezier curves' bend."""
    bezier_distill: bool = True
    """Also train the label-free curve (child run bezier_distill): the same curve fit to the endpoints'
    interpolated outputs f_t (the geodesic's anchor) instead of the labels, reading only inputs as the geodesic
    does."""
    bezier_distill_lr: PositiveFloat = 0.1
    """Learning rate of the label-free curve. At bezier_distill_temperature 2 (the default) 0.1 holds the highest
    path on a validation split of both the Fashion-MNIST CNN and LeNet-300-100 on MNIST (0.05 lower); with the
    logits matched (temperature 0) use 0.003: matched logits are stiffer, and 0.01 diverged on the CNN."""
    bezier_distill_temperature: float = Field(2.0, ge=0.0, allow_inf_nan=False)
    """The label-free curve's loss: T > 0 matches the softmax of f_t at T by T² KL (Hinton et al. 2015), the
    shape of the labels' cross-entropy, at the cross-entropy's rates; 0 matches f_t's logits (½ mean_x
    ‖f − f_t‖², at a distillation rate). T = 2 held a path 0.3-1.2 points higher than the logits on three
    validation pairs (the README's connect section)."""
    bezier_equal_time: bool = False
    """Also train each curve for the geodesic's wall time (budget equal_time; with relax_epochs the traversal's
    and the relaxation's time), its learning-rate schedule spanning that time, with bezier_train's other
    settings."""
    relax_epochs: int = Field(10, ge=0)
    """The path's closing correction (child run geodesic_relaxed): the polygonal chain through relax_nodes of the
    geodesic's evaluated points, each at its progress t, its nodes fit without labels toward f_t for this many
    epochs (bezier_train's settings at relax_lr); 0: off. 10 lifted the aligned Fashion-MNIST CNN path by 0.3-0.6
    point on two validation pairs and left MNIST's where it was."""
    relax_lr: PositiveFloat = 0.01
    """Learning rate of the chain's fit (its nodes feel the full rate, a Bezier bend at most a quarter of it). At
    relax_temperature 2 (the default) 0.01 on the Fashion-MNIST CNN, on a validation split; with the logits
    matched (temperature 0) 0.0005: 0.001 diverged on the CNN, and VGG16 on CIFAR-10 chose 0.001."""
    relax_temperature: float = Field(2.0, ge=0.0, allow_inf_nan=False)
    """The chain's fit loss, as bezier_distill_temperature: T > 0 matches the softmax of f_t at T, 0 its
    logits."""
    relax_nodes: PositiveInt = 8
    """Interior nodes of the relaxed chain: the geodesic's evaluated points nearest t = k / (relax_nodes + 1)."""
    geo: ConnectGeoConfig = Field(default_factory=ConnectGeoConfig)
    """The traversal's Geo steps; geo.anchor weights the output correction toward f_t (0: the plain
    algorithm)."""
    train: ConnectTrainConfig = Field(default_factory=ConnectTrainConfig)
    """Training of the two endpoints."""

    @model_validator(mode="after")
    def _check_endpoints(self) -> "ConnectConfig":
        if (self.checkpoint_a is None) != (self.checkpoint_b is None):
            raise ValueError("give both --checkpoint-a and --checkpoint-b, or neither (then both are trained)")
        if self.checkpoint_a is None and self.seed == self.seed_b:
            raise ValueError(f"the two endpoints need different seeds, got seed = seed_b = {self.seed}")
        return self

    @model_validator(mode="after")
    def _check_bezier(self) -> "ConnectConfig":
        if self.bezier_equal_time and not (self.bezier or self.bezier_distill):
            raise ValueError("--bezier-equal-time trains each Bezier curve a second time: it needs --bezier or "
                             "--bezier-distill (drop --no-bezier or --no-bezier-distill)")
        return self

    def curves(self) -> list[str]:
        """The Bezier curves this run trains: ``bezier`` (on the labels), ``bezier_distill`` (label-free)."""
        return [name for name, on in (("bezier", self.bezier), ("bezier_distill", self.bezier_distill)) if on]


def check_same_architecture(meta_a: dict, meta_b: dict, path_a: str = "a", path_b: str = "b") -> None:
    """Both endpoints must be the same registered network with the same input and output shapes."""
    keys = ("model", "num_classes", "in_channels", "image_size", "width", "depth")
    diff = [k for k in keys if meta_a.get(k) != meta_b.get(k)]
    if diff:
        got = ", ".join(f"{k}: {meta_a.get(k)!r} vs {meta_b.get(k)!r}" for k in diff)
        raise InputError(f"the endpoints {path_a} and {path_b} are not the same architecture ({got}); "
                         f"connect two networks of one model trained on one dataset")


class InterpolatedOutputs(nn.Module):
    """The straight line in output space between two networks, f_t(x) = (1 - t) f_a(x) + t f_b(x): the anchor
    of the traversal between two modes. ``t`` follows the traversal's progress (set by `connect_segment`)."""

    def __init__(self, net_a: nn.Module, net_b: nn.Module):
        super().__init__()
        self.net_a, self.net_b = net_a.requires_grad_(False), net_b.requires_grad_(False)
        self.t = 0.0

    def mixture(self) -> list[tuple[float, nn.Module]]:
        """[(1 - t, f_a), (t, f_b)]: the fixed networks and their current weights (`geo`'s `AnchorCache` keeps each
        network's outputs and mixes them at the traversal's t)."""
        return [(1.0 - self.t, self.net_a), (self.t, self.net_b)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.t) * self.net_a(x) + self.t * self.net_b(x)


def connect_segment(model: nn.Module, w_b: torch.Tensor, pool: torch.Tensor, cfg: GeoConfig, *,
                    anchor: InterpolatedOutputs | None = None, total_distance: float | None = None,
                    callbacks: Sequence[Callable[[StepInfo], None]] = (), generator: torch.Generator | None = None,
                    start_step: int = 0) -> GeoResult:
    """One segment of Geo(w_1, g, w_2): up to ``cfg.max_steps`` exact Geo steps (eq. 6-7) from the model's
    weights toward ``w_b (n,)`` under g on batches of ``pool (P, C, H, W)`` (the task's inputs). The model
    ends at the segment's end; ``start_step`` continues the step count of earlier segments.

    With ``anchor`` (and ``cfg.anchor > 0``) each step's output correction pulls toward f_t, the output-space
    interpolation of the two endpoints at the traversal's progress t = 1 - |w - w_b| / ``total_distance``:
    the functions along the path follow the straight line between the endpoints' functions (an ensemble of
    the two at every t, which classifies as well as either) instead of drifting off it.
    """
    callbacks = list(callbacks)
    if anchor is not None:
        if not total_distance:
            raise InputError("the interpolating anchor needs the distance between the endpoints")

        def track(info: StepInfo) -> None:
            anchor.t = min(1.0, max(0.0, 1.0 - float((info.weights - w_b.to(info.weights)).norm()) / total_distance))

        anchor.t = min(1.0, max(0.0, 1.0 - float((flat_params(model) - w_b.to(flat_params(model))).norm())
                                / total_distance))
        callbacks.insert(0, track)
    return geo(model, FixedTarget(w_b.to(flat_params(model))), pool, cfg, anchor=anchor, callbacks=callbacks,
               generator=generator, start_step=start_step)


def evaluate_point(model: nn.Module, w: torch.Tensor, test: Split, bn_inputs: torch.Tensor | None) -> tuple[float, float]:
    """Test accuracy (percent) and loss of the network with flat weights ``w``; batch-norm statistics are
    re-estimated on ``bn_inputs`` first (networks without batch norm are evaluated as they are)."""
    set_flat_params(model, w.to(flat_params(model)))
    if bn_inputs is not None:
        recompute_bn(model, bn_inputs)
    return evaluate(model, test)


def chord_coordinates(w: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> tuple[float, float]:
    """2-D view of a point: (x, y) with x the coordinate of w - w_a along the unit chord u = (w_b - w_a)/|w_b - w_a|
    and y = |w - w_a - x u| its distance from the straight line (the line is y = 0, w_a at 0, w_b at |w_b - w_a|)."""
    chord = (w_b - w_a).double()
    length = float(chord.norm())
    if length == 0:
        raise InputError("the two endpoints are the same network; nothing to connect")
    u = chord / length
    rel = (w - w_a).double()
    x = float(rel @ u)
    y = float((rel - x * u).norm())
    return x, y


def distance_ratio(w: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> float:
    """|w - w_b| / |w_a - w_b|: 0 when the path has reached w_b, 1 at its start."""
    return float((w - w_b).norm() / (w_a - w_b).norm())


def bn_batch(model: nn.Module, x: torch.Tensor, n: int = 2000) -> torch.Tensor | None:
    """The inputs batch-norm statistics are re-estimated on (None for networks without batch norm)."""
    from .train import has_batchnorm

    return x[:n] if has_batchnorm(model) else None


# --- Peer baseline: a trained quadratic Bezier curve (Garipov et al. 2018) -----------------------------------

class _Curve(nn.Module):
    """A curve φ(t), t ∈ [0, 1], from w_1 to w_2 in weight space whose trainable parameters shape it. As a module it
    is the network at a point of the curve: in training mode every forward call draws t ~ U(0, 1) from its own
    generator, so training it with the ordinary loop minimizes E_t L(φ(t)), the curve-finding objective of Garipov
    et al. 2018; in eval mode it uses ``self.t``. The base network ``model`` is used only as the function (its
    parameters are replaced through `functional_call`; its batch-norm buffers are updated in training mode and
    re-estimated per point for evaluation). Subclasses define `point`."""

    def __init__(self, model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, seed: int = 0):
        super().__init__()
        if w_a.shape != w_b.shape or w_a.numel() != flat_params(model).numel():
            raise InputError(f"the curve's endpoints ({w_a.numel()} and {w_b.numel()} weights) and the network "
                             f"({flat_params(model).numel()}) must be one architecture")
        object.__setattr__(self, "base", model)  # not a submodule: its parameters are not the curve's
        self._unflatten = param_unflattener(model)
        self.register_buffer("w_a", w_a.detach().clone())
        self.register_buffer("w_b", w_b.detach().clone())
        self.gen = torch.Generator().manual_seed(seed)
        self.t = 0.5
        self.drawn_t = 0.5  # the t of the last training-mode forward call (what `CurveAnchor` matches)
        self.steps_trained = 0  # optimizer steps of the last `fit_curve` (with its batch size, its epochs)

    def point(self, t: float) -> torch.Tensor:
        """φ(t) ``(n,)``: differentiable in the curve's parameters."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "_Curve":
        super().train(mode)
        self.base.train(mode)
        return self

    def _apply(self, fn, recurse=True):
        self.base._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        t = float(torch.rand((), generator=self.gen)) if self.training else self.t
        self.drawn_t = t
        return functional_call(self.base, self._unflatten(self.point(t)), (x,))

    def points(self, count: int) -> list[torch.Tensor]:
        """``count`` points of the curve at equally spaced t (both endpoints included), detached."""
        with torch.no_grad():
            return [self.point(float(t)).detach().clone() for t in torch.linspace(0, 1, count)]

    def euclidean_length(self, resolution: int = 1000) -> float:
        """Euclidean length of the curve, as the polyline through ``resolution`` + 1 points."""
        with torch.no_grad():  # one point at a time: the curve of a 15 M-weight network would not fit stacked
            total, prev = 0.0, self.point(0.0)
            for t in torch.linspace(0, 1, resolution + 1)[1:]:
                cur = self.point(float(t))
                total += float((cur - prev).double().norm())
                prev = cur
            return total


class BezierCurve(_Curve):
    """The quadratic Bezier curve between two networks of one architecture (Garipov et al. 2018, eq. 3-4):

        φ_θ(t) = (1 − t)² w_1 + 2t(1 − t) θ + t² w_2,   t ∈ [0, 1],

    with the bend θ ``(n,)`` (flat, `flat_params` order) its only trainable parameter, initialized at the
    chord's midpoint (w_1 + w_2)/2 (the module's behaviour: `_Curve`).
    """

    def __init__(self, model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, seed: int = 0):
        super().__init__(model, w_a, w_b, seed)
        self.bend = nn.Parameter(0.5 * (self.w_a + self.w_b))

    def point(self, t: float) -> torch.Tensor:
        return (1 - t) ** 2 * self.w_a + 2 * t * (1 - t) * self.bend + t ** 2 * self.w_b


class PolyChain(_Curve):
    """A polygonal chain between two networks (Garipov et al. 2018's other curve family) through K interior nodes
    θ_1..θ_K ``(K, n)`` placed at knots 0 < t_1 < ... < t_K < 1 (with θ_0 = w_1 at t_0 = 0, θ_{K+1} = w_2 at 1):

        φ(t) = θ_j + (t − t_j) / (t_{j+1} − t_j) · (θ_{j+1} − θ_j),   t_j ≤ t ≤ t_{j+1}.

    The nodes are the trainable parameter; the knots are fixed (`relax_path` starts the nodes on points of the
    geodesic and puts each at its progress t, so that φ(t_j) is where the traversal was at t_j).
    """

    def __init__(self, model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, nodes: torch.Tensor,
                 knots: Sequence[float], seed: int = 0):
        super().__init__(model, w_a, w_b, seed)
        knots = [float(k) for k in knots]
        if nodes.dim() != 2 or nodes.shape[0] != len(knots) or nodes.shape[1] != w_a.numel():
            raise InputError(f"a chain needs one knot per node and nodes of the endpoints' {w_a.numel()} weights "
                             f"(got nodes {tuple(nodes.shape)} and {len(knots)} knots)")
        full = [0.0, *knots, 1.0]
        if any(b <= a for a, b in zip(full, full[1:])):
            raise InputError(f"a chain's knots must increase strictly inside (0, 1), got {knots}")
        self.knots = full
        self.nodes = nn.Parameter(nodes.detach().clone().to(self.w_a))

    def _node(self, j: int) -> torch.Tensor:
        return self.w_a if j == 0 else self.w_b if j == len(self.knots) - 1 else self.nodes[j - 1]

    def point(self, t: float) -> torch.Tensor:
        t = min(1.0, max(0.0, float(t)))
        j = next(j for j in range(len(self.knots) - 1) if t <= self.knots[j + 1])
        s = (t - self.knots[j]) / (self.knots[j + 1] - self.knots[j])
        return (1 - s) * self._node(j) + s * self._node(j + 1)


class CurveAnchor(InterpolatedOutputs):
    """The label-free curve's target: f_t(x) = (1 − t) f(x; w_1) + t f(x; w_2) at the t the curve drew for its
    last forward call (`BezierCurve.drawn_t`; `train` calls the model before its teacher), the same
    interpolation of the endpoints' outputs the geodesic's anchor tracks (`InterpolatedOutputs`)."""

    def __init__(self, curve: BezierCurve, net_a: nn.Module, net_b: nn.Module):
        super().__init__(net_a, net_b)
        object.__setattr__(self, "curve", curve)  # not a submodule: the curve is the student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.t = self.curve.drawn_t
        return super().forward(x)


def endpoint_teachers(endpoints: tuple[nn.Module, nn.Module], x: torch.Tensor,
                      device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Copies of the two endpoint networks on ``device`` for a label-free fit to read f_t from, each as every point
    of a path is evaluated: batch-norm statistics re-estimated on the first training inputs ``x`` (`bn_batch`),
    not the running averages stored during training. The networks passed in are not changed."""
    net_a, net_b = (copy.deepcopy(net).to(device) for net in endpoints)
    bn_x = bn_batch(net_a, x)
    if bn_x is not None:
        recompute_bn(net_a, bn_x)
        recompute_bn(net_b, bn_x)
    return net_a, net_b


def fit_curve(curve: _Curve, data: Split, cfg, *, augment: bool = False, callbacks=(), step_callbacks=(),
              wall_seconds: float | None = None,
              endpoints: tuple[nn.Module, nn.Module] | None = None, temperature: float = 0.0) -> _Curve:
    """Fit a curve's parameters by SGD on E_{t~U(0,1)} L(φ(t)) with the training settings ``cfg`` (a `TrainConfig`:
    epochs, lr, momentum, weight decay on the curve's parameters, schedule, seed for the batches; the t draws come
    from the curve's own generator). L is the cross-entropy on ``data`` (Garipov et al. 2018), or, with
    ``endpoints`` (the networks w_1 and w_2 themselves, batch-norm statistics included), label-free toward
    f_t = (1 − t) f(x; w_1) + t f(x; w_2) (`CurveAnchor`), the outputs the geodesic's anchor follows; then only the
    inputs of ``data`` are read. At ``temperature`` 0 it matches f_t's logits, L(φ(t)) = ½ mean_x ‖f(x; φ(t)) −
    f_t(x)‖²; at T > 0 its softmax, L(φ(t)) = T² mean_x KL(softmax(f_t(x) / T) ‖ softmax(f(x; φ(t)) / T)) (Hinton et
    al. 2015: the shape of the labels' cross-entropy, at the cross-entropy's learning rates;
    `geodesic_core.train.distillation_loss`). Endpoints with batch norm are read as every point of a path is
    evaluated (`endpoint_teachers`), not with their stored running averages. ``wall_seconds``: train
    for this much wall time instead of ``cfg.epochs``, the learning-rate schedule spanning it (the equal-time
    curve: `geodesic_core.train.train`'s wall-time run). Returns the curve, in eval mode, its ``steps_trained`` the
    optimizer steps the fit ran (`geodesic_core.train.epochs_run` turns them into epochs)."""
    from .train import train

    if not (temperature >= 0 and math.isfinite(temperature)):
        raise InputError(f"the label-free fit's temperature must be 0 (logits matched) or positive, got {temperature}")
    device = curve.w_a.device
    teacher = None
    if endpoints is not None:
        teacher = CurveAnchor(curve, *endpoint_teachers(endpoints, data.x, device))
    curve.steps_trained = train(curve, data, cfg, augment=augment, device=device, callbacks=callbacks,
                                step_callbacks=step_callbacks, wall_seconds=wall_seconds, teacher=teacher,
                                teacher_temperature=temperature)
    return curve.eval()


def train_bezier(model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, data: Split, cfg, *,
                 augment: bool = False, callbacks=(), step_callbacks=(), wall_seconds: float | None = None,
                 endpoints: tuple[nn.Module, nn.Module] | None = None, temperature: float = 0.0) -> BezierCurve:
    """Fit the bend θ of the Bezier curve between ``w_a`` and ``w_b`` ``(n,)`` (`fit_curve`: on the labels of
    ``data``, or label-free toward f_t with ``endpoints``, its logits matched at ``temperature`` 0, its softmax at
    T > 0). ``model`` is a network of the endpoints' architecture; its weights are not used. With logits
    ``(B, K)`` matched, ``cfg.lr`` is a distillation rate (smaller than the cross-entropy's)."""
    device = next(model.parameters()).device
    curve = BezierCurve(model, w_a.to(device), w_b.to(device), seed=cfg.seed)
    return fit_curve(curve, data, cfg, augment=augment, callbacks=callbacks, step_callbacks=step_callbacks,
                     wall_seconds=wall_seconds, endpoints=endpoints, temperature=temperature)


def chain_nodes(points: Sequence[torch.Tensor], w_a: torch.Tensor, w_b: torch.Tensor,
                count: int) -> tuple[torch.Tensor, list[float]]:
    """Up to ``count`` of a traversal's ``points`` (each ``(n,)``, in the order visited) as a chain's nodes, with
    their knots: each point's progress t = 1 − |w − w_2| / |w_1 − w_2|, the t the geodesic's anchor gave it. Only
    points whose progress exceeds every earlier one's (by 10⁻³, and inside (10⁻³, 1 − 10⁻³)) qualify; of those,
    the one nearest each of t = k / (count + 1), k = 1..count, in order, each used once. Returns the nodes
    ``(K, n)`` (K ≤ count) and their K knots."""
    if count < 1:
        raise InputError(f"a chain needs at least one interior node (got {count})")
    total = float((w_b - w_a).norm())
    if total == 0:
        raise InputError("the two endpoints are the same network; nothing to connect")
    eligible, floor = [], 1e-3
    for w in points:
        t = 1.0 - float((w.to(w_b) - w_b).norm()) / total
        if floor < t < 1 - 1e-3:
            eligible.append((t, w))
            floor = t + 1e-3
    chosen, start = [], 0
    for k in range(1, count + 1):
        if start >= len(eligible):
            break
        goal = k / (count + 1)
        i = min(range(start, len(eligible)), key=lambda i: abs(eligible[i][0] - goal))
        chosen.append(eligible[i])
        start = i + 1
    if not chosen:
        raise InputError("no point of the path lies strictly between its endpoints; the chain has no node to "
                         "start from (evaluate the geodesic more often: a smaller eval_every)")
    return torch.stack([w.detach().to(w_a) for _, w in chosen]), [t for t, _ in chosen]


def relax_path(model: nn.Module, points: Sequence[torch.Tensor], w_a: torch.Tensor, w_b: torch.Tensor, data: Split,
               cfg, *, nodes: int = 8, augment: bool = False, step_callbacks=(),
               endpoints: tuple[nn.Module, nn.Module], temperature: float = 0.0) -> PolyChain:
    """The closing correction of a path between two modes: the polygonal chain through ``nodes`` of the
    traversal's ``points`` (`chain_nodes`: each at its progress t), its nodes fit label-free toward the outputs the
    geodesic's anchor follows, f_t = (1 − t) f(x; w_1) + t f(x; w_2): E_{t~U(0,1)} ½ mean_x ‖f(x; φ(t)) − f_t(x)‖²
    at ``temperature`` 0, T² KL between their softmaxes at T > 0 (`fit_curve` with ``endpoints``, the networks w_1
    and w_2), by SGD with ``cfg`` (a `TrainConfig`). It reads only the inputs of ``data``, as the geodesic does.
    Before the fit the chain is the geodesic's polyline through those nodes. ``model``: a network of the
    endpoints' architecture (its weights are not used); ``w_a``, ``w_b`` and every point ``(n,)``."""
    device = next(model.parameters()).device
    w_a, w_b = w_a.to(device), w_b.to(device)
    node_w, knots = chain_nodes(points, w_a, w_b, nodes)
    chain = PolyChain(model, w_a, w_b, node_w, knots, seed=cfg.seed)
    return fit_curve(chain, data, cfg, augment=augment, step_callbacks=step_callbacks, endpoints=endpoints,
                     temperature=temperature)
