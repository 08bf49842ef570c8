"""Neuron alignment of two networks of one architecture (the permutation symmetry of hidden units).

Permuting the hidden units of a layer (the output channels of a Linear or Conv2d layer, the matching entries of
the batch norm that follows it, and the input channels of the next layer) leaves the network's function
unchanged. Two networks trained from different seeds differ partly by such a permutation, and the straight
line, the Bezier curve and the geodesic between them all pay for the mismatch. `align_to` permutes network B's
hidden units to match network A's by activation matching (Tatro et al. 2020, "Optimizing mode connectivity via
neuron alignment"; Li et al. 2015): for every hidden layer, the permutation π maximizing Σ_i corr(a_i, b_π(i)),
the correlation of unit i of A with unit π(i) of B over the task's inputs (a linear assignment problem, solved
exactly by `scipy.optimize.linear_sum_assignment`). B's function is unchanged, to round-off; only its weights move.

Supported: chain networks, a sequence of Linear / Conv2d layers (groups = 1), each optionally followed by
BatchNorm1d/2d, with element-wise activations, pooling, dropout and Flatten between them (LeNet-300-100, the
CNN, VGG11/16), found from the order of a forward pass; and the pre-activation ResNet, whose residual stream
shares one permutation between projection shortcuts (`_preresnet_groups`). Any other network is checked by
permuting a copy at random and comparing outputs in float64: one whose structure the rules misread (another skip
connection, a module called twice) is refused with a clear error, nothing changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .errors import InputError
from .metric import eval_mode
from .models import PreResNet

_PASS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SiLU, nn.MaxPool2d, nn.AvgPool2d,
         nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)


@dataclass
class _Group:
    """One set of hidden units permuted together: ``entries`` (module, tensor name, axis, spatial) are every weight
    and buffer indexed by the units (a layer's outputs, its batch norm, the next layers' inputs; ``spatial`` > 1 where
    a Flatten puts that many inputs per unit), ``reads`` the modules whose outputs (channel axis 1) are the units as
    the network uses them, ``pres`` the same units before their activation (they order dead units)."""

    units: int
    entries: list
    reads: list
    pres: list


def _norm_entries(bn: nn.Module) -> list:
    return [(bn, name, 0, 1) for name in ("weight", "bias", "running_mean", "running_var")]


def _out_entries(layer: nn.Module) -> list:
    return [(layer, "weight", 0, 1)] + ([(layer, "bias", 0, 1)] if getattr(layer, "bias", None) is not None else [])


def _leaves(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The leaf modules in the order the forward pass calls them (on a probe batch ``x``)."""
    order: list[nn.Module] = []
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(lambda mod, a, o: order.append(mod)) for m in leaves]
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def _unsupported(model: nn.Module, why: str) -> InputError:
    return InputError(f"neuron alignment supports the pre-activation ResNet and chain networks of Linear / Conv2d "
                      f"layers with batch norm, element-wise activations, pooling and Flatten between them "
                      f"(LeNet-300-100, the CNN, VGG11/16); {type(model).__name__} {why}. Connect it without "
                      f"alignment (--align none)")


def _preresnet_groups(model: PreResNet) -> list[_Group]:
    """The pre-activation ResNet's units: inside each bottleneck, conv1's and conv2's outputs (each with the batch
    norm after it and the next conv's inputs); and the residual stream, one permutation shared by everything that
    writes or reads it between two projection shortcuts: the stem conv (or a projection shortcut) and every conv3
    that adds to it, every block's bn1, conv1 and shortcut inputs, and at the end the final batch norm and the
    classifier's inputs. The stream is read at the output of every block that adds to it."""
    groups: list[_Group] = []
    stream, reads = _out_entries(model.conv1), [model.conv1]
    for blk in model.blocks:
        inputs = _norm_entries(blk.bn1) + [(blk.conv1, "weight", 1, 1)]
        if blk.shortcut is not None:  # the stream so far ends here: the projection starts a new one
            inputs.append((blk.shortcut, "weight", 1, 1))
            groups.append(_Group(blk.bn1.num_features, stream + inputs, reads, reads))
            stream, reads = _out_entries(blk.shortcut), []
        else:
            stream += inputs
        stream += _out_entries(blk.conv3)
        reads.append(blk)
        for conv, bn, nxt in ((blk.conv1, blk.bn2, blk.conv2), (blk.conv2, blk.bn3, blk.conv3)):
            groups.append(_Group(conv.out_channels, _out_entries(conv) + _norm_entries(bn) + [(nxt, "weight", 1, 1)],
                                 [bn], [bn]))
    stream += _norm_entries(model.bn) + [(model.fc, "weight", 1, 1)]
    groups.append(_Group(model.bn.num_features, stream, reads, reads))
    return groups


def permutation_groups(model: nn.Module, x: torch.Tensor) -> list[_Group]:
    """The permutable hidden units of a network: the pre-activation ResNet's by its structure (`_preresnet_groups`),
    else a chain network's hidden layers in forward order, found from the order in which a forward pass on
    ``x (N, ...)`` calls its leaf modules. Raises `InputError` for a module the chain rules do not cover."""
    if isinstance(model, PreResNet):
        return _preresnet_groups(model)
    order = _leaves(model, x)
    if len(set(map(id, order))) != len(order):
        raise _unsupported(model, "calls a module twice in one forward pass")
    groups: list[_Group] = []
    cur: dict | None = None
    for mod in order:
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                raise _unsupported(model, "has a grouped convolution")
            if cur is not None:
                fan_in = mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features
                units = cur["producer"].out_channels if isinstance(cur["producer"], nn.Conv2d) \
                    else cur["producer"].out_features
                if fan_in % units or (isinstance(mod, nn.Conv2d) and fan_in != units):
                    raise _unsupported(model, f"feeds {units} units into a layer of {fan_in} inputs")
                prod, norms = cur["producer"], cur["norms"]
                entries = _out_entries(prod) + [e for bn in norms for e in _norm_entries(bn)]
                groups.append(_Group(units, entries + [(mod, "weight", 1, fan_in // units)], [cur["read"]],
                                     [norms[-1] if norms else prod]))
            cur = {"producer": mod, "norms": [], "read": mod}
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if cur is None:
                raise _unsupported(model, "normalizes its inputs before the first layer")
            cur["norms"].append(mod)
            cur["read"] = mod
        elif isinstance(mod, _PASS) or isinstance(mod, nn.Flatten):
            if cur is not None and not isinstance(mod, nn.Flatten):
                cur["read"] = mod
        elif any(True for _ in mod.parameters(recurse=False)):
            raise _unsupported(model, f"has a {type(mod).__name__} layer")
        # parameter-free modules outside the list (e.g. a custom activation) are checked by the function test
    if not groups:
        raise _unsupported(model, "has no hidden layer to align")
    return groups


def _permute(group: _Group, perm: torch.Tensor) -> None:
    """Reorder the group's units in place: unit i becomes the old unit perm[i]."""
    for mod, name, axis, spatial in group.entries:
        t = getattr(mod, name)
        if t is None:
            continue
        p = perm.to(t.device)
        if axis == 0:
            t.data = t.data[p]
        else:  # a layer's inputs: (out, in, ...) with ``spatial`` consecutive inputs per unit after a Flatten
            w = t.data
            t.data = w.reshape(w.shape[0], -1, spatial, *w.shape[2:])[:, p].reshape(w.shape)


def check_alignable(model: nn.Module, x: torch.Tensor) -> list[_Group]:
    """Check, before any training, that `align_to` can align networks of ``model``'s architecture: its permutable
    layers are found (`permutation_groups`) and a random permutation of every one leaves the function of a copy
    unchanged on ``x (N, ...)`` (a few inputs of the task's shape). Raises `InputError` naming the reason;
    returns the groups."""
    groups = permutation_groups(model, x)
    # in float64 on the CPU, so that only a wrong permutation, never round-off (TF32 convolutions), shows
    ref_net, x64 = copy.deepcopy(model).cpu().double(), x.detach().cpu().double()
    probe = copy.deepcopy(ref_net)
    gen = torch.Generator().manual_seed(0)
    for g in permutation_groups(probe, x64):
        _permute(g, torch.randperm(g.units, generator=gen))
    with eval_mode(ref_net), eval_mode(probe), torch.no_grad():
        ref, out = ref_net(x64), probe(x64)
    err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-300))
    if not err <= 1e-9:
        raise _unsupported(model, f"changes its function when its units are permuted as a chain's (relative output "
                                  f"change {err:.2e}): its layers are not a chain")
    return groups


ALIGN_INPUTS = 5000  # inputs over which the flows correlate two networks' unit activations


def alignment_plan(model: nn.Module, align: str, x: torch.Tensor) -> str | None:
    """Whether the flows align networks of ``model``'s architecture under the setting ``align`` (auto, activations,
    none), decided before any training: None when they do, else the reason they do not (``align`` none, or auto on
    an architecture `check_alignable` refuses, ``x (N, ...)`` a few inputs of the task's shape). With activations an
    architecture it cannot align is the `InputError` itself."""
    if align == "none":
        return "align none"
    try:
        check_alignable(model, x)
    except InputError as e:
        if align == "activations":
            raise
        return str(e)
    return None


def _unit_correlations(model_a: nn.Module, model_b: nn.Module, mods_a: list[nn.Module], mods_b: list[nn.Module],
                       x: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """corr(a_i, b_j) ``(units, units)`` between the outputs of ``mods_a[k]`` in A and ``mods_b[k]`` in B over the
    inputs ``x`` (a conv layer's positions count as samples), from moments accumulated batch by batch in float64
    (memory O(batch x positions x units), whatever N); a unit that never varies correlates 0 with everything."""
    k = len(mods_a)
    n = [0] * k
    sums: list[list] = [[0.0] * 5 for _ in range(k)]  # Σa, Σb, Σa², Σb², Σ a bᵀ
    got: dict[tuple[int, int], torch.Tensor] = {}

    def hook(net: int, i: int):
        def f(mod, args, out):
            o = out.detach()
            o = o.transpose(0, 1).reshape(o.shape[1], -1).T if o.dim() == 4 else o.reshape(o.shape[0], -1)
            got[(net, i)] = o.double()
        return f

    hooks = [m.register_forward_hook(hook(0, i)) for i, m in enumerate(mods_a)]
    hooks += [m.register_forward_hook(hook(1, i)) for i, m in enumerate(mods_b)]
    try:
        with eval_mode(model_a), eval_mode(model_b), torch.no_grad():
            for s in range(0, x.shape[0], batch):
                got.clear()
                model_a(x[s:s + batch])
                model_b(x[s:s + batch])
                for i in range(k):
                    a, b = got[(0, i)], got[(1, i)]
                    n[i] += a.shape[0]
                    for j, v in enumerate((a.sum(0), b.sum(0), a.pow(2).sum(0), b.pow(2).sum(0), a.T @ b)):
                        sums[i][j] = sums[i][j] + v
    finally:
        for h in hooks:
            h.remove()
    out = []
    for i in range(k):
        sa, sb, saa, sbb, sab = (v / n[i] for v in sums[i])
        cov = sab - sa[:, None] * sb[None, :]
        std_a, std_b = (saa - sa ** 2).clamp_min(0).sqrt(), (sbb - sb ** 2).clamp_min(0).sqrt()
        out.append(cov / (std_a[:, None] * std_b[None, :]).clamp_min(1e-12))
    return out


TIE_BREAK = 1e-3  # weight of the pre-activation correlation in the assignment: it orders units whose outputs
# never vary (dead ReLUs, whose output correlations are all 0), and moves nothing else


def align_to(model_a: nn.Module, model_b: nn.Module, x: torch.Tensor, batch: int = 250) -> dict:
    """Permute the hidden units of ``model_b`` (in place) to match ``model_a``'s by activation matching: for each
    hidden layer, π = argmax_π Σ_i corr(a_i, b_π(i)) over the inputs ``x (N, ...)``, unit i of A read from the
    output of the last per-unit module of its layer (after its batch norm and activation; ties, as between dead
    units, broken by the correlation before the activation). B computes the same
    function as before (checked on ``x``: a network whose structure the chain rules misread is refused, nothing
    changed). Returns ``{"layers", "units", "moved", "mean_correlation_before", "mean_correlation_after"}``
    (the mean over layers and units of corr(a_i, b_i) before and after)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:  # a dependency of the project; a bare environment may still lack it
        raise InputError("neuron alignment needs scipy (pip install scipy), or connect without it "
                         "(--align none)") from e

    if type(model_a) is not type(model_b) or [p.shape for p in model_a.parameters()] != \
            [p.shape for p in model_b.parameters()]:
        raise InputError("the two networks to align are not the same architecture; align two networks of one model")
    ga, gb = permutation_groups(model_a, x[:2]), check_alignable(model_b, x[:8])
    state = {k: v.clone() for k, v in model_b.state_dict().items()}
    with eval_mode(model_b), torch.no_grad():
        ref = model_b(x[:batch])
    # every module read once, however many roles it has (the ResNet reads its units where it uses them; a layer
    # followed by the next layer is both)
    pairs = {id(ma): (ma, mb) for g_a, g_b in zip(ga, gb)
             for ma, mb in zip((*g_a.reads, *g_a.pres), (*g_b.reads, *g_b.pres))}
    corr_of = dict(zip(pairs, _unit_correlations(model_a, model_b, [p[0] for p in pairs.values()],
                                                 [p[1] for p in pairs.values()], x, batch)))
    before, after, moved = [], [], 0
    perms = []
    for g in ga:  # a group read at several places (a residual stream): its correlations averaged over them
        corr = sum(corr_of[id(m)] for m in g.reads) / len(g.reads)
        pre = sum(corr_of[id(m)] for m in g.pres) / len(g.pres)
        _, cols = linear_sum_assignment((corr + TIE_BREAK * pre).cpu().numpy(), maximize=True)
        perm = torch.as_tensor(cols, dtype=torch.long)
        before.append(corr.diagonal().mean().item())
        after.append(corr[torch.arange(len(perm)), perm].mean().item())
        moved += int((perm != torch.arange(len(perm))).sum())
        perms.append(perm)
    for g, perm in zip(gb, perms):
        _permute(g, perm)
    with eval_mode(model_b), torch.no_grad():
        out = model_b(x[:batch])
    err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    if not err <= 1e-2:  # the structure was checked exactly above; this catches gross errors at the network's precision
        model_b.load_state_dict(state)
        raise _unsupported(model_b, f"changed its function when its units were permuted (relative output change "
                                    f"{err:.2e}): its layers are not a chain")
    return {"layers": len(perms), "units": sum(len(p) for p in perms), "moved": moved,
            "mean_correlation_before": sum(before) / len(before), "mean_correlation_after": sum(after) / len(after)}
