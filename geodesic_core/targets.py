"""Targets w_a of a traversal: a fixed network, the p-sparse projection proj(w, H_p), or a structured
projection that zeroes whole conv filters. A target maps the current flat weights ``w (n,)`` to ``w_a (n,)``.

H_p = {w : a fraction p of the prunable weights is exactly zero} (paper section 4.1). proj(w, H_p) keeps the
largest-magnitude prunable weights, globally or per layer; biases and normalization parameters are not
prunable unless asked. Sparse targets are re-computed every ``refresh_every`` (n_s) steps (Algorithm 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import nn

from .errors import InputError


class Target(Protocol):
    """Maps the current weights ``w (n,)`` and step to w_a ``(n,)``. A target may also define ``aim(d) -> (n,)``,
    the vector eq. 6 is solved for in place of d = w_a − w (`WeightedTarget`); without it, d itself."""

    refresh_every: int | None

    def __call__(self, w: torch.Tensor, step: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class ParamSlice:
    name: str
    start: int
    stop: int
    shape: tuple[int, ...]
    prunable: bool


def param_slices(model: nn.Module, prune_bias: bool = False, prune_norm: bool = False) -> list[ParamSlice]:
    """Where each parameter sits in the flat vector and whether it is prunable.

    Prunable: weights of Linear and Conv layers; biases if ``prune_bias``; normalization parameters if
    ``prune_norm``.
    """
    owner = {}
    for mod in model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            owner[id(p)] = (mod, pname)
    out, start = [], 0
    for name, p in model.named_parameters():
        mod, pname = owner[id(p)]
        is_norm = isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
        if is_norm:
            prunable = prune_norm
        elif pname == "bias":
            prunable = prune_bias
        else:
            prunable = p.dim() > 1
        out.append(ParamSlice(name, start, start + p.numel(), tuple(p.shape), prunable))
        start += p.numel()
    return out


def prunable_mask(slices: list[ParamSlice], device=None) -> torch.Tensor:
    """Boolean ``(n,)``: True where the flat weight is prunable."""
    mask = torch.zeros(slices[-1].stop, dtype=torch.bool, device=device)
    for s in slices:
        if s.prunable:
            mask[s.start:s.stop] = True
    return mask


def sparsity(w: torch.Tensor, slices: list[ParamSlice]) -> float:
    """Fraction of prunable weights that are exactly zero (in [0, 1])."""
    m = prunable_mask(slices, w.device)
    return float((w[m] == 0).sum()) / max(int(m.sum()), 1)


def check_sparsity_percent(p: float) -> float:
    if not (0.0 < float(p) < 100.0):
        raise InputError(f"sparsity must be a percentage strictly between 0 and 100, got {p}")
    return float(p)


def project_sparse(w: torch.Tensor, slices: list[ParamSlice], sparsity_percent: float,
                   scope: Literal["global", "layer"] = "global") -> torch.Tensor:
    """proj(w, H_p): zero the smallest-magnitude prunable weights so that exactly round(p n_prunable / 100)
    of them (per layer: of each layer) are zero; other entries unchanged. Ties are broken by index order.

    Args:
        w: ``(n,)`` flat weights. slices: from `param_slices`. sparsity_percent: p in (0, 100).
    Returns:
        ``(n,)`` projected weights.
    """
    p = check_sparsity_percent(sparsity_percent) / 100.0
    out = w.clone()
    groups = [[s for s in slices if s.prunable]] if scope == "global" else [[s] for s in slices if s.prunable]
    if scope not in ("global", "layer"):
        raise InputError(f"unknown pruning scope {scope!r}; valid: global, layer")
    for group in groups:
        idx = torch.cat([torch.arange(s.start, s.stop, device=w.device) for s in group])
        n_zero = int(round(p * idx.numel()))
        if n_zero == 0:
            continue
        mags = w[idx].abs()
        order = torch.argsort(mags, stable=True)
        out[idx[order[:n_zero]]] = 0.0
    return out


@dataclass
class FixedTarget:
    """A fixed network w_a (continual learning: w_{1:i-1}; mode connectivity: w_2).

    ``own`` ``(n,)`` bool, optional: the weights that belong to the traversing network alone (in a multi-head
    network, the current task's head: w_a holds nothing for it). There the target is the current weight, w_a = w,
    so d = w_a − w is zero on them, they add nothing to the distance, and only the output anchor moves them."""

    w_a: torch.Tensor
    refresh_every: int | None = None
    own: torch.Tensor | None = None

    def __call__(self, w: torch.Tensor, step: int) -> torch.Tensor:
        if w.shape != self.w_a.shape:
            raise InputError(f"target network has {self.w_a.numel()} weights, the network {w.numel()}; "
                             f"both must be of the same architecture")
        if self.own is None:
            return self.w_a
        if self.own.shape != w.shape:
            raise InputError(f"the target's own weights mark {self.own.numel()} weights, the network has {w.numel()}")
        return torch.where(self.own.to(w.device), w, self.w_a.to(w))


@dataclass
class WeightedTarget(FixedTarget):
    """A fixed network w_a approached along the descent direction of a weighted distance to it,

        D(w) = ½ (w − w_a)^T diag(a) (w − w_a),   −∇D = a ⊙ d,   d = w_a − w,

    with per-weight ``weights`` a ``(n,)`` > 0 (continual learning: a = 1 + ω F / mean(F), F the earlier tasks'
    diagonal Fisher, so the traversal closes first the part of the distance to w_{1:i-1} that their outputs depend
    on; a = 1 is `FixedTarget`). The traversal still ends at w_a and its stopping criteria still read the Euclidean
    distance ‖d‖: only the vector eq. 6 is solved for changes, `aim`."""

    weights: torch.Tensor | None = None

    def __post_init__(self):
        a = self.weights
        if a is None or a.shape != self.w_a.shape:
            raise InputError(f"the target's weights must be one positive number per network weight "
                             f"({self.w_a.numel()}), got {None if a is None else tuple(a.shape)}")
        if not (torch.isfinite(a).all() and (a > 0).all()):
            raise InputError("the target's weights must be finite and positive (a = 1 + ω F / mean(F), ω ≥ 0)")

    def aim(self, d: torch.Tensor) -> torch.Tensor:
        """The vector eq. 6 is solved for, in place of ``d = w_a − w`` ``(n,)``: a ⊙ d scaled to ‖d‖ (the
        sub-problem then weighs it against its regularizer as it would d)."""
        ad = self.weights.to(d) * d
        return ad * (d.norm() / ad.norm().clamp_min(torch.finfo(d.dtype).tiny))


@dataclass
class SparseTarget:
    """w_a = proj(w, H_p), re-computed from the current weights every ``refresh_every`` steps (n_s)."""

    slices: list[ParamSlice]
    sparsity_percent: float
    scope: Literal["global", "layer"] = "global"
    refresh_every: int | None = 10
    _cached: torch.Tensor | None = field(default=None, repr=False)
    _at: int = field(default=-1, repr=False)

    def __post_init__(self):
        check_sparsity_percent(self.sparsity_percent)

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """proj(w, H_p) with this target's level and scope."""
        return project_sparse(w, self.slices, self.sparsity_percent, self.scope)

    def __call__(self, w: torch.Tensor, step: int) -> torch.Tensor:
        if self._cached is None or (self.refresh_every and step - self._at >= self.refresh_every):
            self._cached, self._at = self.project(w), step
        return self._cached

    def free_mask(self, w_a: torch.Tensor) -> torch.Tensor:
        """True where the target leaves the weight free (not pruned): the output anchor may act there."""
        return ~prunable_mask(self.slices, w_a.device) | (w_a != 0)


def following_batchnorm(model: nn.Module, layer: str) -> str | None:
    """The batch-norm layer that normalizes conv ``layer``'s outputs: the module right after it in the network's
    module order, if that is a batch norm over its output channels (conv-BN-ReLU: ``features.1`` after
    ``features.0`` in VGG), else None."""
    names = [k for k, _ in model.named_modules()]
    mods = dict(model.named_modules())
    i = names.index(layer)
    after = [k for k in names[i + 1:] if not any(True for _ in mods[k].children())]  # leaves after the conv
    if after and isinstance(mods[after[0]], nn.modules.batchnorm._BatchNorm) \
            and mods[after[0]].num_features == mods[layer].out_channels:
        return after[0]
    return None


@dataclass
class FilterTarget:
    """Structured projection: remove whole output filters of one conv layer.

    ``n_filters`` filters of ``layer`` (a module name such as ``features.0``) with the smallest L2 norm at
    each refresh are set to zero: their weights and bias, and, where a batch norm normalizes the layer's
    outputs (conv-BN, see `following_batchnorm`), that channel's scale and shift, so that the channel is
    exactly zero whatever the batch statistics are and the filter can be removed physically (see
    `geodesic_core.structured.compact_filters`). Every other weight is left unchanged.
    """

    model: nn.Module
    layer: str
    n_filters: int
    refresh_every: int | None = 10
    _cached: torch.Tensor | None = field(default=None, repr=False)
    _at: int = field(default=-1, repr=False)

    def __post_init__(self):
        mods = dict(self.model.named_modules())
        conv_names = [k for k, m in mods.items() if isinstance(m, nn.Conv2d)]
        if self.layer not in mods or not isinstance(mods[self.layer], nn.Conv2d):
            raise InputError(f"layer {self.layer!r} is not a conv layer of the model; conv layers: "
                             f"{', '.join(conv_names)}")
        out_ch = mods[self.layer].out_channels
        if not (0 < self.n_filters < out_ch):
            raise InputError(f"n_filters must be between 1 and {out_ch - 1} for layer {self.layer!r} "
                             f"({out_ch} filters), got {self.n_filters}")
        sl = {s.name: s for s in param_slices(self.model)}
        self._w = sl[f"{self.layer}.weight"]
        self._per_channel = [sl[f"{self.layer}.bias"]] if f"{self.layer}.bias" in sl else []
        self.batchnorm = following_batchnorm(self.model, self.layer)
        if self.batchnorm is not None:
            self._per_channel += [sl[f"{self.batchnorm}.{p}"] for p in ("weight", "bias")
                                  if f"{self.batchnorm}.{p}" in sl]

    def filters_to_zero(self, w: torch.Tensor) -> torch.Tensor:
        weight = w[self._w.start:self._w.stop].view(self._w.shape)
        norms = weight.flatten(1).norm(dim=1)
        return torch.argsort(norms, stable=True)[: self.n_filters]

    def _zero(self, out: torch.Tensor, idx: torch.Tensor, value=0.0) -> torch.Tensor:
        out[self._w.start:self._w.stop].view(self._w.shape)[idx] = value
        for s in self._per_channel:
            out[s.start:s.stop][idx] = value
        return out

    def project(self, w: torch.Tensor) -> torch.Tensor:
        return self._zero(w.clone(), self.filters_to_zero(w))

    def __call__(self, w: torch.Tensor, step: int) -> torch.Tensor:
        if self._cached is None or (self.refresh_every and step - self._at >= self.refresh_every):
            self._cached, self._at = self.project(w), step
        return self._cached

    def free_mask(self, w_a: torch.Tensor) -> torch.Tensor:
        """False on everything the target zeroes (the filters' weights and bias, their batch-norm scale and
        shift): the output anchor and the correctors may not revive them."""
        return self._zero(torch.ones_like(w_a, dtype=torch.bool), self.filters_to_zero(w_a), False)

    def masks(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{param name: 0/1 mask}`` that keeps the removed filters (as zeroed in ``w``) at zero during masked
        training (prune + fine-tune, prune-train cycles)."""
        free = self.free_mask(w).float()
        return {s.name: free[s.start:s.stop].view(s.shape) for s in param_slices(self.model)
                if not bool(free[s.start:s.stop].all())}
