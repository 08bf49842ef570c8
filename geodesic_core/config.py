"""Typed, validated configs, one per concern. The field names are the CLI options, flow parameters and
MLflow params (``--batch-size`` <-> ``batch_size``)."""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Literal, TypeVar

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
    model_config = ConfigDict(frozen=True, extra="forbid")


C = TypeVar("C", bound=type[_Config])


def with_defaults(base: C, name: str, module: str, **defaults) -> C:
    """A subclass of ``base`` whose fields default to ``defaults``: an application's own defaults for a nested
    setting (the sparsify flow's ``geo.eta`` is 0.2, GeoConfig's 0.05), held by a class, so that its JSON schema
    (the Prefect UI's run form), the CLI's help and a run started with no options all read the same numbers."""
    fields = {}
    for key, value in defaults.items():
        info = copy.copy(base.model_fields[key])
        info.default, info.default_factory = value, None
        fields[key] = (info.annotation, info)
    cls = create_model(name, __base__=base, __module__=module, **fields)
    cls.__doc__ = f"{base.__doc__}\n\n    Defaults here: {', '.join(f'{k} = {v}' for k, v in defaults.items())}."
    return cls


class _ModelOnDataset(_Config):
    """A config naming a ``model`` and a ``dataset``: registered names (an unknown name lists the valid ones),
    ``torchvision:<name>`` or import paths to the user's own (built and run once on the data's shape here), at
    channel multiplier ``width`` (vgg11, vgg16, resnet164: round(W c) channels per layer; 1 is the paper's
    network) and, for the pre-activation ResNet, ``depth`` (9n + 2; None: 164)."""

    width: PositiveFloat = 1.0
    depth: int | None = Field(None, ge=11)

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
    (0 turns it off: the plain algorithm). ``anchor_radius``: the correction's trust region, at most
    ``anchor_radius`` × η long (0: unbounded; where the anchor cannot be matched, as when most filters of a conv
    layer are removed, the unbounded damped Gauss-Newton correction fits one metric batch with steps of 10-100 η
    and the path diverges). ``distill_steps``: first-order corrector steps after each Geo step
    (SGD, momentum 0.9, lr ``distill_lr``) on fresh batches of ``distill_batch`` inputs, minimizing the
    squared output distance to the anchor with the weights the target leaves free. ``keep_progress``: the
    correctors move the weights sideways, never back: a corrected step that ends farther from the target than
    its predictor (w + η θ/‖θ‖) is pulled radially onto the predictor's distance to the target, so every step
    advances by the predictor's progress (off: a corrector that cannot match the anchor can stall the traversal
    where its pull balances the step). ``patience``: steps without
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
    anchor_radius: float = Field(0.0, ge=0.0)
    keep_progress: bool = False
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

    def completion(self, eps_factor: float, **update) -> "GeoConfig":
        """The completion step of Algorithm 3 (a stalled traversal finished plainly): both correctors off (the
        anchor and the distillation steps) and an ``eps_factor`` times larger trust region ε, with ``update``
        applied on top."""
        return self.model_copy(update={"anchor": 0.0, "distill_steps": 0, "eps": self.eps * eps_factor, **update})
