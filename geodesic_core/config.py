"""Typed, validated configs, one per concern. The field names are the CLI options, flow parameters and
MLflow params (``--batch-size`` <-> ``batch_size``)."""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Literal, TypeVar, get_args

from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, create_model, field_validator,
                      model_validator)


def _one_of(names: Callable[[], Iterable[str]], user: str = "") -> Callable[[dict], None]:
    """JSON-schema hint for a registry name: the Prefect UI offers the registered names as a list and the API
    rejects any other before a run is created (the validators below give the CLI's messages). With ``user`` (a
    title), a second branch takes the user's own: an import path ``module:callable`` (and ``torchvision:<name>``
    for models), checked by pattern here and by import in the validators."""
    from .plugins import IMPORT_PATH_PATTERN

    def hint(schema: dict) -> None:
        keep = {k: schema.pop(k) for k in ("default", "title", "description") if k in schema}
        branches = schema.pop("anyOf", None) or [{"type": schema.pop("type", "string")}]
        listed = [{"type": "string", "enum": sorted(names()), "title": "Registered"}]
        if user:
            listed.append({"type": "string", "pattern": IMPORT_PATH_PATTERN, "title": user})
        others = [b for b in branches if b.get("type", "string") != "string"]
        schema.clear()
        schema.update(keep)
        if len(listed) + len(others) == 1:
            schema.update(listed[0])
            schema.pop("title")
            schema.update(keep)
        else:
            schema["anyOf"] = listed + others

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


_USER_MODEL = "torchvision:<name> or module:callable"
_USER_DATA = "module:callable"


class _Config(BaseModel):
    """Frozen; an unknown field is an error. Each field's docstring is its description: the CLI's help, the
    Prefect run form's and the API schema's text for that option."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


C = TypeVar("C", bound=type[_Config])


def with_defaults(base: C, name: str, module: str, none_means: dict[str, str] | None = None, **defaults) -> C:
    """A subclass of ``base`` whose fields default to ``defaults``: an application's own defaults for a nested
    setting (the sparsify flow's ``geo.eta`` is 0.2, GeoConfig's 0.05), held by a class, so that its JSON schema
    (the Prefect UI's run form), the CLI's help and a run started with no options all read the same numbers.

    A field defaulting to None here that ``base`` does not allow None becomes optional, None standing for a value
    the application fills in later (the continual flow's scenario-dependent settings); ``none_means[key]`` says
    which, appended to the field's description."""
    fields = {}
    for key, value in defaults.items():
        info = copy.copy(base.model_fields[key])
        info.default, info.default_factory = value, None
        if value is None and not _allows_none(info.annotation):
            info.annotation = info.annotation | None
            if none_means and key in none_means:
                info.description = f"{info.description} None: {none_means[key]}"
        fields[key] = (info.annotation, info)
    cls = create_model(name, __base__=base, __module__=module, **fields)
    cls.__doc__ = f"{base.__doc__}\n\n    Defaults here: {', '.join(f'{k} = {v}' for k, v in defaults.items())}."
    return cls


def _allows_none(annotation) -> bool:
    return annotation is None or type(None) in get_args(annotation)


class _ModelOnDataset(_Config):
    """A config naming a ``model`` and a ``dataset``: registered names (an unknown name lists the valid ones),
    ``torchvision:<name>`` or import paths to the user's own (built and run once on the data's shape here)."""

    width: PositiveFloat = 1.0
    """Channel multiplier of vgg11, vgg16 and resnet164: round(W c) channels per layer, at least 1; 1 is the
    paper's network."""
    depth: int | None = Field(None, ge=11)
    """Depth of the pre-activation bottleneck ResNet (resnet164's family), 9n + 2: 11, 20, ..., 164 (None: 164)."""

    @model_validator(mode="after")
    def _check_arch(self) -> "_ModelOnDataset":
        from .models import MODELS, arch_kwargs, build_model
        from .plugins import is_import_path

        arch_kwargs(self.model, self.width, self.depth)  # a model without the option: a clear error
        if self.width != 1.0 or self.depth is not None:  # a width or depth that leaves a layer without channels
            build_model(self.model, 10, 3, 32, width=self.width, depth=self.depth)
        if self.model not in MODELS or is_import_path(self.dataset):  # the user's (or torchvision's) network, or
            from .data import get_spec  # the user's data: built and run once on the data's shape before any work
            from .models import check_model_output

            spec = get_spec(self.dataset)
            check_model_output(self.model, spec.num_classes, spec.input_shape, **self.arch())
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
    """Supervised training: minibatch SGD with momentum and weight decay on the (smoothed) cross-entropy under a
    learning-rate schedule."""

    epochs: PositiveInt = 10
    """Passes over the training split."""
    lr: PositiveFloat = 0.05
    """Peak learning rate of the schedule."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """SGD momentum."""
    nesterov: bool = False
    """Nesterov's momentum instead of the heavy ball (needs momentum > 0)."""
    weight_decay: float = Field(1e-4, ge=0.0)
    """L2 weight decay."""
    batch_size: PositiveInt = 128
    """Training examples per SGD step."""
    schedule: Literal["cosine", "step", "constant", "onecycle"] = "cosine"
    """Learning-rate schedule: cosine (from lr to 0), step (/10 at 50% and 75% of the steps), constant, or
    onecycle (linear from lr/25 up to lr over the first 15% of the steps, then linearly to 0: the fast CIFAR
    recipe)."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """ε of the label-smoothed cross-entropy (0: plain cross-entropy)."""
    precision: Literal["float32", "bf16"] = "bf16"
    """bf16: forward and backward passes of training under bfloat16 autocast on a GPU (weights, optimizer
    state, metric products, Geo steps and evaluation stay float32); on the CPU training is always float32."""
    seed: int = 0
    """Seed of the initialization and of the data order."""

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
    """One traversal Geo(w_t, g, w_a, s) of section 3: Geo steps (eq. 6-7) toward a target, each followed by the
    output anchor (corrector) toward the start network's outputs, until the target is reached, ``max_steps``
    are taken, or the oscillation criterion stops it."""

    beta: PositiveFloat = 1.0
    """β of eq. 6, min θᵀ g θ − β θᵀ (w_a − w): the weight of progress toward the target against the change of
    the outputs."""
    eps: PositiveFloat = 0.01
    """ε of eq. 6: the trust region θᵀθ ≤ ε of each step's direction."""
    eta: PositiveFloat = 0.05
    """η of eq. 7: the step length in weight space, w ← w + η θ/‖θ‖."""
    max_steps: PositiveInt = 200
    """s: the step limit of the traversal (of each stage or segment)."""
    metric_batch: PositiveInt = 64
    """N: inputs over which the metric g = (1/N) Σ_i J_iᵀ J_i is averaged, redrawn every step."""
    output_space: Literal["logits", "softmax"] = "logits"
    """The network outputs f in g and in the anchor: the logits, or softmax(logits / temperature)."""
    temperature: PositiveFloat = 1.0
    """T of the softmax output space: T > 1 softens the probabilities, so the metric tolerates the larger
    logit changes of confident predictions that change nothing predicted; T = 1 ignores them almost entirely."""
    solver: Literal["exact", "cg"] = "exact"
    """How the step's sub-problem (eq. 6) is solved: exact (eigendecomposition of the N m × N m Gram matrix
    of the Jacobian) or cg (Lanczos-CG on matrix-free metric products)."""
    cg_iters: PositiveInt = 20
    """Lanczos-CG iterations (metric products) per step, with solver cg."""
    anchor: float = Field(0.5, ge=0.0, le=1.0)
    """Weight of the Gauss-Newton correction after each step toward the anchor outputs: the start network's
    (sparsify, continual), the endpoints' interpolated outputs f_t (connect); 0: off, the algorithm as written."""
    anchor_damping: float = Field(1e-3, gt=0.0)
    """Levenberg-Marquardt damping of the anchor's Gauss-Newton system."""
    anchor_radius: float = Field(0.0, ge=0.0)
    """The anchor's trust region: a correction at most anchor_radius × η long (0: unbounded; where the anchor
    cannot be matched, as when most filters of a conv layer are removed, the unbounded correction takes steps
    of 10-100 η and the path diverges)."""
    keep_progress: bool = False
    """The correctors move the weights sideways, never back: a corrected step that ends farther from the
    target than its predictor is pulled radially onto the predictor's distance (off: a corrector that cannot
    match the anchor can stall the traversal where its pull balances the step)."""
    distill_steps: int = Field(0, ge=0)
    """First-order corrector steps after each Geo step: SGD (momentum 0.9) on the squared output distance to
    the anchor over fresh input batches, moving only the weights the target leaves free (0: off)."""
    distill_lr: PositiveFloat = 0.01
    """Learning rate of the first-order corrector."""
    distill_batch: PositiveInt = 128
    """Inputs per first-order corrector step."""
    distill_temperature: float = Field(0.0, ge=0.0)
    """The first-order corrector's loss: 0 the squared output distance; T > 0 T² KL(softmax(y*/T) ‖ softmax(f/T))
    between the anchor's and the network's logits at temperature T (Hinton et al. 2015)."""
    distill_radius: float = Field(0.0, ge=0.0)
    """The first-order corrector's trust region: its whole move after one Geo step at most distill_radius × η
    long (0: each of its SGD steps at most η, the whole up to distill_steps × η; at a learning rate high enough
    to correct the last stages of extreme sparsity, the unbounded corrector's noise dips the path between
    stage ends)."""
    patience: PositiveInt = 50
    """Oscillation criterion: stop after this many steps without a new minimum distance to the target."""
    bn_every: int = Field(10, ge=0)
    """Networks with batch norm: re-estimate the running statistics at the current weights every bn_every
    steps, so g, the anchor and the end network describe the network at w (0: keep the start's statistics, the
    paper as written)."""
    bn_samples: PositiveInt = 1024
    """Inputs over which the batch-norm statistics are re-estimated."""
    bn_anchor: bool = True
    """With bn_every > 0: the anchor network's statistics are re-estimated too, on the first step's inputs, for the
    traversal's duration, so that the correction compares two functions read alike (False: the anchor keeps the
    running averages stored during training, as before this option; on CIFAR-10 at CPU scale True raised two VGG16
    paths' minimum by 3.6 and 1.9 points and lowered a ResNet's by 2.0, README)."""
    nonfinite_retries: int = Field(2, ge=0)
    """A step whose Gram matrix, metric products, direction or new weights come out NaN/Inf (a deep network's
    correctors overflowing on stale batch-norm statistics, say) is taken again from the last good weights with half
    its length, on batch-norm statistics re-estimated there and a fresh batch, at most this many times (η/2, η/4,
    ...); then the traversal stops with an error naming the part of the step that failed (0: stop at the first)."""
    seed: int = 0
    """Seed of the metric and corrector batches."""

    @model_validator(mode="after")
    def _check_temperature(self) -> "GeoConfig":
        if self.temperature not in (None, 1.0) and self.output_space != "softmax":  # None: filled in later
            raise ValueError(f"a temperature ({self.temperature}) only applies to the softmax output space; "
                             f"add --geo.output-space softmax or drop --geo.temperature")
        return self

    def completion(self, eps_factor: float, **update) -> "GeoConfig":
        """The completion step of Algorithm 3 (a stalled traversal finished plainly): both correctors off (the
        anchor and the distillation steps) and an ``eps_factor`` times larger trust region ε, with ``update``
        applied on top."""
        return self.model_copy(update={"anchor": 0.0, "distill_steps": 0, "eps": self.eps * eps_factor, **update})
