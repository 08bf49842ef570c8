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
    """A fixed network w_a (continual learning: w_{1:i-1}; mode connectivity: w_2)."""

    w_a: torch.Tensor
    refresh_every: int | None = None

    def __call__(self, w: torch.Tensor, step: int) -> torch.Tensor:
        if w.shape != self.w_a.shape:
            raise InputError(f"target network has {self.w_a.numel()} weights, the network {w.numel()}; "
                             f"both must be of the same architecture")
        return self.w_a


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


@dataclass
class FilterTarget:
    """Structured projection: zero whole output filters (weights and bias) of one conv layer.

    ``n_filters`` filters of ``layer`` (a module name such as ``features.0``) with the smallest L2 norm at
    each refresh are set to zero; every other weight is left unchanged.
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
            raise InputError(f"n_filters must be between 1 and {out_ch - 1} for layer {self.layer!r}, "
                             f"got {self.n_filters}")
        sl = {s.name: s for s in param_slices(self.model)}
        self._w = sl[f"{self.layer}.weight"]
        self._b = sl.get(f"{self.layer}.bias")

    def filters_to_zero(self, w: torch.Tensor) -> torch.Tensor:
        weight = w[self._w.start:self._w.stop].view(self._w.shape)
        norms = weight.flatten(1).norm(dim=1)
        return torch.argsort(norms, stable=True)[: self.n_filters]

    def project(self, w: torch.Tensor) -> torch.Tensor:
        out = w.clone()
        idx = self.filters_to_zero(w)
        out[self._w.start:self._w.stop].view(self._w.shape)[idx] = 0.0
        if self._b is not None:
            out[self._b.start:self._b.stop][idx] = 0.0
        return out

    def __call__(self, w: torch.Tensor, step: int) -> torch.Tensor:
        if self._cached is None or (self.refresh_every and step - self._at >= self.refresh_every):
            self._cached, self._at = self.project(w), step
        return self._cached

    def free_mask(self, w_a: torch.Tensor) -> torch.Tensor:
        """False on the weights and bias of the filters the target zeroes: the output anchor may not revive them."""
        free = torch.ones_like(w_a, dtype=torch.bool)
        idx = self.filters_to_zero(w_a)
        free[self._w.start:self._w.stop].view(self._w.shape)[idx] = False
        if self._b is not None:
            free[self._b.start:self._b.stop][idx] = False
        return free
