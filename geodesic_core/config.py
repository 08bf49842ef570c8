"""Typed, validated configs, one per concern. The field names are the CLI options, flow parameters and
MLflow params (``--batch-size`` <-> ``batch_size``)."""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Literal, TypeVar

from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, create_model, field_validator,
                      model_validator)


def _one_of(names: Callable[[], Iterable[str]]) -> Callable[[dict], None]:
    """JSON-schema hint for a registry name: the Prefect UI offers the registered names as a list and the API
    rejects any other before a run is created (the validators below give the CLI's messages)."""

    def hint(schema: dict) -> None:
        branches = [b for b in schema.get("anyOf", [schema]) if b.get("type", "string") == "string"]
        for b in branches:
            b["enum"] = sorted(names())

    return hint


def _models():
    from .models import MODELS

    return MODELS


def _datasets():
    from .data import DATASETS

    return DATASETS


def _scenarios():
    from .scenarios import SCENARIOS

    return SCENARIOS


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


C = TypeVar("C", bound=type[_Config])


def with_defaults(base: C, name: str, **defaults) -> C:
    """A subclass of ``base`` whose fields default to ``defaults``: an application's own defaults for a nested
    setting (the sparsify flow's ``geo.eta`` is 0.2, GeoConfig's 0.05), held by a class, so that its JSON schema
    (the Prefect UI's run form), the CLI's help and a run started with no options all read the same numbers."""
    fields = {}
    for key, value in defaults.items():
        info = copy.copy(base.model_fields[key])
        info.default, info.default_factory = value, None
        fields[key] = (info.annotation, info)
    cls = create_model(name, __base__=base, __module__=__name__, **fields)
    cls.__doc__ = f"{base.__doc__}\n\n    Defaults here: {', '.join(f'{k} = {v}' for k, v in defaults.items())}."
    return cls


class _ModelOnDataset(_Config):
    """A config naming a registered ``model`` and ``dataset`` (an unknown name lists the valid ones), at
    channel multiplier ``width`` (vgg11, vgg16, resnet164: round(W c) channels per layer; 1 is the paper's
    network) and, for the pre-activation ResNet, ``depth`` (9n + 2; None: 164)."""

    width: PositiveFloat = 1.0
    depth: int | None = Field(None, ge=11)

    @model_validator(mode="after")
    def _check_arch(self) -> "_ModelOnDataset":
        from .models import arch_kwargs, build_model

        arch_kwargs(self.model, self.width, self.depth)  # a model without the option: a clear error
        if self.width != 1.0 or self.depth is not None:  # a width or depth that leaves a layer without channels
            build_model(self.model, 10, 3, 32, width=self.width, depth=self.depth)
        return self

    def arch(self) -> dict:
        """``{"width": W, "depth": d}`` where they differ from the defaults (model builder keyword arguments)."""
        from .models import arch_kwargs

        return arch_kwargs(self.model, self.width, self.depth)

    @field_validator("model", check_fields=False)
    @classmethod
    def _check_model(cls, v: str) -> str:
        from .models import check_model_name

        return check_model_name(v)

    @field_validator("dataset", check_fields=False)
    @classmethod
    def _check_dataset(cls, v: str) -> str:
        from .data import check_dataset_name

        return check_dataset_name(v)


class TrainConfig(_Config):
    """Supervised training: SGD with momentum (``nesterov``: Nesterov's) and weight decay under a learning-rate
    schedule: ``cosine`` (from lr to 0), ``step`` (/10 at 50% and 75%), ``constant``, or ``onecycle`` (linear
    from lr/25 up to lr over the first 15% of the steps, then linearly down to 0: the fast CIFAR recipe).
    ``label_smoothing``: ε of the smoothed cross-entropy. ``precision``: ``bf16`` runs the forward and backward
    passes of training under bfloat16 autocast on a GPU (weights, optimizer state, metric products, Geo steps
    and evaluation stay float32); on the CPU training is always float32.
    """

    epochs: PositiveInt = 10
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0.0)
    batch_size: PositiveInt = 128
    schedule: Literal["cosine", "step", "constant", "onecycle"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    precision: Literal["float32", "bf16"] = "bf16"
    seed: int = 0

    @model_validator(mode="after")
    def _check_nesterov(self) -> "TrainConfig":
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs a momentum > 0; set --train.momentum or drop --train.nesterov")
        return self


def cifar_recipe(epochs: int = 30, lr: float = 0.1, seed: int = 0, batch_size: int = 256) -> TrainConfig:
    """The CIFAR training recipe of the deep-network experiments: Nesterov SGD (momentum 0.9), weight decay
    5e-4, one-cycle schedule, label smoothing 0.1, batch 256, bf16 autocast on a GPU (random crop + flip come
    with the dataset, see `geodesic_core.data.DatasetSpec.augment`)."""
    return TrainConfig(epochs=epochs, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=batch_size,
                       schedule="onecycle", label_smoothing=0.1, seed=seed)


class GeoConfig(_Config):
    """One traversal Geo(w_t, g, w_a, s) of section 3 (eq. 6-7) plus the output anchor (corrector).

    ``beta``, ``eps``: eq. 6 (trade-off and trust region theta^T theta <= eps). ``eta``: step length of eq. 7.
    ``metric_batch``: N inputs over which g = (1/N) sum_i J_i^T J_i is averaged, redrawn every step.
    ``output_space``: network outputs f in g and in the anchor (logits, or softmax probabilities of
    logits / ``temperature``: T > 1 softens the probabilities, so the metric tolerates the larger logit changes
    of confident predictions that do not change what the network predicts, while T = 1 ignores them almost
    entirely). ``anchor``: weight of the Gauss-Newton correction toward the start network's outputs after each step
    (0 turns it off: the plain algorithm). ``distill_steps``: first-order corrector steps after each Geo step
    (SGD, momentum 0.9, lr ``distill_lr``) on fresh batches of ``distill_batch`` inputs, minimizing the
    squared output distance to the anchor with the weights the target leaves free. ``patience``: steps without
    a new minimum distance to the target before the oscillation criterion stops the traversal. ``bn_every``:
    for networks with batch norm, re-estimate the running statistics at the current weights from ``bn_samples``
    pool inputs every ``bn_every`` steps, so that g, the anchor and the end network describe the network at w
    rather than at the start network's statistics (0: keep the start's statistics, the paper as written; no effect
    on networks without batch norm).
    """

    beta: PositiveFloat = 1.0
    eps: PositiveFloat = 0.01
    eta: PositiveFloat = 0.05
    max_steps: PositiveInt = 200
    metric_batch: PositiveInt = 64
    output_space: Literal["logits", "softmax"] = "logits"
    temperature: PositiveFloat = 1.0
    solver: Literal["exact", "cg"] = "exact"
    cg_iters: PositiveInt = 20
    anchor: float = Field(0.5, ge=0.0, le=1.0)
    anchor_damping: float = Field(1e-3, gt=0.0)
    distill_steps: int = Field(0, ge=0)
    distill_lr: PositiveFloat = 0.01
    distill_batch: PositiveInt = 128
    patience: PositiveInt = 50
    bn_every: int = Field(10, ge=0)
    bn_samples: PositiveInt = 1024
    seed: int = 0

    @model_validator(mode="after")
    def _check_temperature(self) -> "GeoConfig":
        if self.temperature != 1.0 and self.output_space != "softmax":
            raise ValueError(f"a temperature ({self.temperature}) only applies to the softmax output space; "
                             f"add --geo.output-space softmax or drop --geo.temperature")
        return self


class FinetuneConfig(_Config):
    """The prune + masked fine-tune baseline: SGD on the labels with the pruned weights held at zero, and
    (``distill``) its label-free counterpart, prune + distillation: masked SGD on ½ ‖f(x; w) − f(x; w_dense)‖²
    over the training inputs at learning rate ``distill_lr``, reading no labels, as the geodesic does.

    Each runs twice per level: for ``epochs`` epochs (the fixed-budget baseline of the notes), and for the
    geodesic's wall time (``equal_time``: equal compute), with the same optimizer settings.
    """

    epochs: PositiveInt = 2
    lr: PositiveFloat = 0.01
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: PositiveInt = 128
    equal_time: bool = True
    distill: bool = True
    distill_lr: PositiveFloat = 0.003

    def train_config(self, seed: int, epochs: int | None = None, distill: bool = False) -> TrainConfig:
        return TrainConfig(epochs=epochs or self.epochs, lr=self.distill_lr if distill else self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay, batch_size=self.batch_size,
                           schedule="constant", seed=seed)


# each application's defaults for its nested settings (one source: the class)
SparsifyGeoConfig = with_defaults(GeoConfig, "SparsifyGeoConfig", max_steps=150, eta=0.2, anchor=1.0, patience=40,
                                  distill_steps=20, distill_lr=0.003)
SparsifyTrainConfig = with_defaults(TrainConfig, "SparsifyTrainConfig", epochs=15, lr=0.05)
ContinualGeoConfig = with_defaults(GeoConfig, "ContinualGeoConfig", eta=0.1, anchor=1.0, max_steps=4000, patience=50,
                                   metric_batch=256, solver="cg", cg_iters=10, output_space="softmax",
                                   temperature=10.0)
ContinualTrainConfig = with_defaults(TrainConfig, "ContinualTrainConfig", epochs=5, lr=0.05)
ConnectGeoConfig = with_defaults(GeoConfig, "ConnectGeoConfig", eta=0.1, anchor=1.0, max_steps=500, patience=50,
                                 metric_batch=256, solver="cg", cg_iters=10)
ConnectTrainConfig = with_defaults(TrainConfig, "ConnectTrainConfig", epochs=5, lr=0.05)


class SparsifyConfig(_ModelOnDataset):
    """Algorithm 1 on one dense network at several sparsity levels, with its baselines.

    ``sparsity``: target levels in percent, each in (0, 100), no duplicates. ``stages``: K stages of the
    sparsity schedule (one cached task each); ``refresh_every``: n_s, steps between re-projections;
    ``geo.max_steps``: s, the step limit of each stage. ``structured``: zero ``n_filters`` whole filters of
    conv ``layer`` instead (one level; ``sparsity`` is then ignored; the paper's 50 of VGG11's 64 first-layer
    filters is ``n_filters`` = round(50 W) at width W); the paper's baseline, iterative prune-train, then also
    runs: one filter removed at a time, each removal followed by ``prune_train_epochs`` epochs of masked SGD with
    the ``finetune`` settings (0: skip it). ``checkpoint``: start from this dense
    network instead of training one. ``eval_every``: test-set evaluation period along the path (steps).
    """

    model: str = Field("lenet300", json_schema_extra=_one_of(_models))
    dataset: str = Field("mnist", json_schema_extra=_one_of(_datasets))
    sparsity: list[float] = Field(default_factory=lambda: [50.0, 90.0, 98.0], json_schema_extra={
        "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100}, "minItems": 1,
        "uniqueItems": True})
    scope: Literal["global", "layer"] = "global"
    structured: bool = False
    layer: str = "features.0"
    n_filters: PositiveInt = 50
    prune_train_epochs: float = Field(0.5, ge=0.0)
    stages: PositiveInt = 5
    refresh_every: PositiveInt = 10
    eval_every: PositiveInt = 10
    checkpoint: str | None = None
    seed: int = 0
    geo: SparsifyGeoConfig = Field(default_factory=SparsifyGeoConfig)
    train: SparsifyTrainConfig = Field(default_factory=SparsifyTrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)

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

    def levels(self) -> list[float]:
        return [float(self.n_filters)] if self.structured else list(self.sparsity)


CONTINUAL_METHODS = ("geodesic", "linear", "sgd", "l2", "ewc")


class ContinualConfig(_Config):
    """Algorithm 2 on a sequence of ``tasks`` tasks of ``scenario`` (default: 5 for permuted MNIST, 2 for
    MNIST -> Fashion-MNIST), with its baselines.

    ``model``: the network (default: the scenario's, lenet300 for permuted MNIST, cnn for MNIST -> Fashion).
    ``train``: training of every per-task network w_i, and of each later task for the sequential baselines.
    ``geo``: each traversal Geo(w_i, g^i, w_{1:i-1}, s) (``geo.max_steps`` = s; by default g^i and the anchor
    on softmax(f / 10), which tolerates logit changes that do not change task i's predictions). ``methods``:
    which of
    geodesic, linear, sgd, l2, ewc to run. ``l2_strength``, ``ewc_strength``: λ of the L2 pull and of EWC;
    ``fisher_samples``: task inputs over which EWC's diagonal Fisher is averaged. ``linear_points``: points on
    each straight line scanned. ``eval_every``: steps between evaluations along each geodesic.
    ``permutation_seed``: the seed of all permuted-MNIST permutations. ``shared_init``: every per-task network
    starts from the same random initialization (from ``seed``; the networks stay independent and are trained
    concurrently); off: network i starts from seed + i.
    """

    scenario: str = Field("permuted_mnist", json_schema_extra=_one_of(_scenarios))
    tasks: int | None = Field(None, ge=2)
    model: str | None = Field(None, json_schema_extra=_one_of(_models))
    methods: list[str] = Field(default_factory=lambda: list(CONTINUAL_METHODS), json_schema_extra={
        "items": {"type": "string", "enum": list(CONTINUAL_METHODS)}, "minItems": 1, "uniqueItems": True})
    permutation_seed: int = 0
    shared_init: bool = False
    l2_strength: float = Field(0.01, ge=0.0)
    ewc_strength: float = Field(100.0, ge=0.0)
    fisher_samples: PositiveInt = 1000
    linear_points: int = Field(21, ge=3)
    eval_every: PositiveInt = 100
    seed: int = 0
    geo: ContinualGeoConfig = Field(default_factory=ContinualGeoConfig)
    train: ContinualTrainConfig = Field(default_factory=ContinualTrainConfig)

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
        from .scenarios import SCENARIOS

        limit = SCENARIOS[self.scenario].max_tasks
        if limit is not None and self.tasks is not None and self.tasks > limit:
            raise ValueError(f"scenario {self.scenario!r} has {limit} tasks, got tasks={self.tasks}")
        return self

    def n_tasks(self) -> int:
        """k: ``tasks``, or the scenario's default (5 permuted-MNIST tasks; 2 for MNIST -> Fashion-MNIST)."""
        from .scenarios import SCENARIOS

        return self.tasks or SCENARIOS[self.scenario].default_tasks

    def model_name(self) -> str:
        from .scenarios import SCENARIOS

        return self.model or SCENARIOS[self.scenario].model


class ConnectConfig(_ModelOnDataset):
    """Algorithm 3: connect two trained networks of one architecture by a geodesic, and compare it with the
    straight line between them.

    Endpoints: two networks trained from seeds ``seed`` and ``seed_b`` with ``train``, or the given
    ``checkpoint_a`` and ``checkpoint_b`` (both or neither). ``geo``: the traversal's Geo steps; it runs in
    cached segments of ``geo.max_steps`` steps, at most ``max_segments`` of them. ``complete``: when the
    traversal stalls (oscillation) before reaching w_2, continue it with the anchor off and the trust region
    ``complete_eps_factor`` times larger (a looser, still geodesic step) until w_2 is reached; off, the path
    ends where it stalled and the run reports how far it got (``final_distance_ratio``). ``geo.anchor``: weight
    of the output correction toward the straight line between the endpoints' outputs (0: the plain
    algorithm). ``eval_every``: steps
    between test-set evaluations along the geodesic; ``linear_points``: points on the straight line (and on
    the Bezier curve). ``bezier``: also train the peer baseline, the quadratic Bezier curve between the same
    endpoints (Garipov et al. 2018), with ``bezier_train`` (its epochs are its training cost).
    """

    model: str = Field("lenet300", json_schema_extra=_one_of(_models))
    dataset: str = Field("mnist", json_schema_extra=_one_of(_datasets))
    seed: int = 0
    seed_b: int = 1
    checkpoint_a: str | None = None
    checkpoint_b: str | None = None
    max_segments: PositiveInt = 10
    complete: bool = True
    complete_eps_factor: float = Field(10.0, ge=1.0)
    eval_every: PositiveInt = 50
    linear_points: int = Field(21, ge=3)
    bezier: bool = True
    bezier_train: ConnectTrainConfig = Field(default_factory=ConnectTrainConfig)
    geo: ConnectGeoConfig = Field(default_factory=ConnectGeoConfig)
    train: ConnectTrainConfig = Field(default_factory=ConnectTrainConfig)

    @model_validator(mode="after")
    def _check_endpoints(self) -> "ConnectConfig":
        if (self.checkpoint_a is None) != (self.checkpoint_b is None):
            raise ValueError("give both --checkpoint-a and --checkpoint-b, or neither (then both are trained)")
        if self.checkpoint_a is None and self.seed == self.seed_b:
            raise ValueError(f"the two endpoints need different seeds, got seed = seed_b = {self.seed}")
        return self
