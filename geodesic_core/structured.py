"""Physically smaller networks from structured sparsification (paper section 4.1, Figure 4C/D).

A network whose conv layer ``layer`` has whole filters removed (`geodesic_core.targets.FilterTarget`: the
filter's weights and bias and, in a conv-BN chain, that channel's batch-norm scale and shift are zero)
computes exactly zero in those channels. `compact_filters` removes them: the filters of the conv layer, the
channels of its batch norm, and the matching input channels of the next conv layer, so the result has fewer
weights and computes the same outputs (up to float rounding; `tests/test_structured.py` checks 1e-5).
`shrink_to` rebuilds the smaller shapes on a fresh network so a saved compact network loads back
(checkpoint metadata ``compact_layer`` / ``compact_kept``).

Supported: a conv layer inside an ``nn.Sequential`` followed, in the same sequence, by an optional batch norm,
element-wise or pooling layers (ReLU, max/avg pooling, dropout, identity) and then another conv layer: the
VGG networks' ``features.k``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import InputError

_PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Identity)
_BN = nn.modules.batchnorm._BatchNorm


def _chain(model: nn.Module, layer: str) -> tuple[nn.Sequential, int, int | None, int]:
    """(the Sequential holding ``layer``, the conv's index, its batch norm's index or None, the next conv's)."""
    parent_name, _, idx = layer.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        parent = None
    if not isinstance(parent, nn.Sequential) or not idx.isdigit() or int(idx) >= len(parent) \
            or not isinstance(parent[int(idx)], nn.Conv2d):
        raise InputError(f"structured export needs a conv layer inside an nn.Sequential (such as VGG's "
                         f"features.0), got {layer!r}")
    i = int(idx)
    bn = i + 1 if i + 1 < len(parent) and isinstance(parent[i + 1], _BN) else None
    j = i + 1 + (bn is not None)
    while j < len(parent) and isinstance(parent[j], _PASS_THROUGH):
        j += 1
    if j >= len(parent) or not isinstance(parent[j], nn.Conv2d) or parent[j].groups != 1:
        raise InputError(f"structured export needs {layer!r} to feed another (ungrouped) conv layer in the same "
                         f"sequence through batch norm, ReLU or pooling only")
    return parent, i, bn, j


def removed_filters(model: nn.Module, layer: str) -> torch.Tensor:
    """Indices of the filters of ``layer`` that compute exactly zero: weights and bias zero, and, where a batch
    norm follows, its scale and shift for that channel zero."""
    parent, i, bn, _ = _chain(model, layer)
    conv = parent[i]
    dead = (conv.weight.detach().flatten(1) == 0).all(1)
    if conv.bias is not None:
        dead &= conv.bias.detach() == 0
    if bn is not None and parent[bn].affine:
        dead &= (parent[bn].weight.detach() == 0) & (parent[bn].bias.detach() == 0)
    return torch.nonzero(dead).flatten()


def _resized(parent: nn.Sequential, i: int, bn: int | None, j: int, kept: int) -> None:
    """Replace the conv at ``i``, its batch norm and the next conv's input by fresh modules for ``kept`` channels."""
    conv, nxt = parent[i], parent[j]
    parent[i] = nn.Conv2d(conv.in_channels, kept, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                          bias=conv.bias is not None, padding_mode=conv.padding_mode)
    if bn is not None:
        old = parent[bn]
        parent[bn] = type(old)(kept, eps=old.eps, momentum=old.momentum, affine=old.affine,
                               track_running_stats=old.track_running_stats)
    parent[j] = nn.Conv2d(kept, nxt.out_channels, nxt.kernel_size, nxt.stride, nxt.padding, nxt.dilation,
                          bias=nxt.bias is not None, padding_mode=nxt.padding_mode)
    for k in (i, j) + ((bn,) if bn is not None else ()):  # new modules start in training mode: take the network's
        parent[k].train(conv.training)


def shrink_to(model: nn.Module, layer: str, kept: int) -> nn.Module:
    """Give ``layer`` (and its batch norm and the next conv's input) ``kept`` channels, in place, with fresh
    weights: the shapes of a compact network, to load its saved weights into."""
    parent, i, bn, j = _chain(model, layer)
    if not (0 < kept <= parent[i].out_channels):
        raise InputError(f"a compact {layer!r} keeps between 1 and {parent[i].out_channels} filters, got {kept}")
    _resized(parent, i, bn, j, kept)
    return model


@torch.no_grad()
def compact_filters(model: nn.Module, layer: str) -> tuple[nn.Module, int]:
    """A copy of ``model`` without the removed filters of ``layer`` (see `removed_filters`): the conv's output
    filters, its batch norm's channels and the next conv's input channels are gone.

    Returns:
        (the smaller network, the number of filters removed). Its outputs equal ``model``'s.

    Raises:
        InputError: the layer is not a supported conv, or none of its filters is removed.
    """
    dead = removed_filters(model, layer)
    if dead.numel() == 0:
        raise InputError(f"no filter of {layer!r} is removed (all-zero weights, bias and batch-norm scale and "
                         f"shift); export a network from structured sparsification (--structured)")
    out = copy.deepcopy(model)
    parent, i, bn, j = _chain(out, layer)
    conv, nxt, norm = parent[i], parent[j], parent[bn] if bn is not None else None
    keep = torch.ones(conv.out_channels, dtype=torch.bool, device=conv.weight.device)
    keep[dead.to(keep.device)] = False
    _resized(parent, i, bn, j, int(keep.sum()))
    parent.to(conv.weight.device)
    parent[i].weight.copy_(conv.weight[keep])
    if conv.bias is not None:
        parent[i].bias.copy_(conv.bias[keep])
    if norm is not None:
        new = parent[bn]
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(norm, name, None) is not None:
                getattr(new, name).copy_(getattr(norm, name)[keep])
        if norm.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    parent[j].weight.copy_(nxt.weight[:, keep])
    if nxt.bias is not None:
        parent[j].bias.copy_(nxt.bias)
    return out, int(dead.numel())
