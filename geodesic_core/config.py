"""Typed, validated configs, one per concern. The field names are the CLI options, flow parameters and
MLflow params (``--batch-size`` <-> ``batch_size``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainConfig(_Config):
    """Supervised training: SGD with momentum and weight decay under a learning-rate schedule."""

    epochs: PositiveInt = 10
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    batch_size: PositiveInt = 128
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    seed: int = 0


class GeoConfig(_Config):
    """One traversal Geo(w_t, g, w_a, s) of section 3 (eq. 6-7) plus the output anchor (corrector).

    ``beta``, ``eps``: eq. 6 (trade-off and trust region theta^T theta <= eps). ``eta``: step length of eq. 7.
    ``metric_batch``: N inputs over which g = (1/N) sum_i J_i^T J_i is averaged, redrawn every step.
    ``output_space``: network outputs f in g (logits or softmax probabilities).
    ``anchor``: weight of the Gauss-Newton correction toward the start network's outputs after each step
    (0 turns it off: the plain algorithm). ``patience``: steps without a new minimum distance to the target
    before the oscillation criterion stops the traversal.
    """

    beta: PositiveFloat = 1.0
    eps: PositiveFloat = 0.01
    eta: PositiveFloat = 0.05
    max_steps: PositiveInt = 200
    metric_batch: PositiveInt = 64
    output_space: Literal["logits", "softmax"] = "logits"
    solver: Literal["exact", "cg"] = "exact"
    cg_iters: PositiveInt = 20
    anchor: float = Field(0.5, ge=0.0, le=1.0)
    anchor_damping: float = Field(1e-3, gt=0.0)
    patience: PositiveInt = 50
    seed: int = 0
