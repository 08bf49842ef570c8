"""The functional metric g_w = (1/N) sum_i J_i(w)^T J_i(w) (paper eq. 2-3), matrix-free.

J_i = d f(x_i; w) / d w is the (m x n) Jacobian of the network outputs (logits or softmax probabilities) for
input x_i. Nothing here forms an n x n matrix: g is used through products g v = J^T (J v) / N (a `torch.func`
jvp, then a vjp), and, for the exact Geo solver, through the (N m x N m) Gram matrix K = J J^T, which has
the same non-zero spectrum as N g.

Flat vectors are in ``torch.nn.utils.parameters_to_vector(model.parameters())`` order. Networks are
evaluated in eval mode (batch norm with its running statistics), so f(x_i) depends on x_i alone.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from typing import Callable, Iterator, Literal, Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from .errors import InputError, NonFiniteError
from .train import full_float32, has_batchnorm, recompute_bn

OutputSpace = Literal["logits", "softmax"]

# The interpreter stack of `torch.func` transforms (and forward-mode AD levels) is process-global in
# PyTorch: two threads inside transforms at once (e.g. two sparsity levels of a flow on the thread-pool task
# runner) corrupt each other. Every transform in the core runs under this lock; plain autograd, training and
# evaluation do not need it. For levels that compute truly in parallel, use a process-based task runner.
FUNC_LOCK = threading.RLock()


def pushforward(f: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J_f(w) v with `torch.func.jvp` (thread-safe)."""
    with FUNC_LOCK:
        return jvp(f, (w,), (v,))[1]


def flat_params(model: nn.Module) -> torch.Tensor:
    """Current weights as one flat vector ``(n,)`` (detached copy)."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def set_flat_params(model: nn.Module, w: torch.Tensor) -> None:
    """Write the flat vector ``w (n,)`` into the model's parameters (in place)."""
    n = sum(p.numel() for p in model.parameters())
    if w.shape != (n,):
        raise InputError(f"weight vector has shape {tuple(w.shape)} but the network has {n} parameters; "
                         f"use a vector of the same architecture")
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(w.to(next(model.parameters()).device), model.parameters())


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


class Tempered(nn.Module):
    """The network with its logits divided by a temperature T: softmax(f / T) are its softened probabilities.
    Same parameters in the same order as the network (`flat_params` of both agree)."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def tempered(model: nn.Module, temperature: float = 1.0) -> nn.Module:
    """``model`` itself at T = 1, else the network whose outputs are its logits / T (see `Tempered`)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise InputError(f"the temperature must be a positive number, got {temperature}")
    return model if temperature == 1.0 else Tempered(model, temperature)


def param_unflattener(model: nn.Module) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``w_flat (n,) -> {name: view of w shaped like the parameter}`` in `flat_params` order (for
    `functional_call`; the views keep w's autograd graph)."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    return lambda w: {k: t.view(s) for k, t, s in zip(names, torch.split(w, sizes), shapes)}


def _check_output_space(output_space: str) -> None:
    if output_space not in ("logits", "softmax"):
        raise InputError(f"unknown output space {output_space!r}; valid: logits, softmax")


def output_fn(model: nn.Module, inputs: torch.Tensor, output_space: OutputSpace = "logits"
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``F(w_flat (n,)) -> f(inputs; w) (N, m)`` as a pure function of the flat weight vector."""
    _check_output_space(output_space)
    unflatten = param_unflattener(model)
    buffers = dict(model.named_buffers())

    def f(w: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**unflatten(w), **buffers}, (inputs,))
        return out.softmax(-1) if output_space == "softmax" else out

    return f


def _check_vector(model: nn.Module, v: torch.Tensor, what: str) -> None:
    n = sum(p.numel() for p in model.parameters())
    if v.dim() != 1 or v.numel() != n:
        raise InputError(f"{what} has shape {tuple(v.shape)}, expected ({n},) for this network "
                         f"(flat, in parameters_to_vector order)")


@full_float32()
def metric_vector_product(model: nn.Module, inputs: torch.Tensor, v: torch.Tensor,
                          output_space: OutputSpace = "logits") -> torch.Tensor:
    """g v = (1/N) J^T (J v) at the model's current weights (eq. 2-3), without forming g.

    Args:
        model: the network, evaluated in eval mode.
        inputs: ``(N, ...)`` batch over which g is averaged.
        v: ``(n,)`` flat tangent vector.
        output_space: ``"logits"`` or ``"softmax"`` (f in J = df/dw).

    Returns:
        ``(n,)`` the product g v.
    """
    _check_vector(model, v, "v")
    with FUNC_LOCK, eval_mode(model):
        w = flat_params(model)
        f = output_fn(model, inputs, output_space)
        jv = pushforward(f, w, v.to(w))  # (N, m)
        _, pullback = vjp(f, w)
        (gv,) = pullback(jv / inputs.shape[0])
    return gv


class TracedPushforward:
    """v ``(n,)`` -> J(w) v ``(N, m)`` as one traced linear graph, reused at every point w and batch of one shape.

    The forward-mode jvp of ``f(x; w)`` is traced once (`make_fx`, like `torch.func.linearize`) with the weights,
    the inputs and the buffers as slots, and split (`torch.fx` constant folding) into the part that depends on
    (w, x) only (the forward pass and the derivative factors it fixes: activation masks, pooling indices,
    softmax Jacobians) and the part linear in v. `at` writes a model's current weights and buffers and a batch
    into the slots and re-runs the first part once; every J v after it runs only the second, about half the cost
    of J v as the double vjp (`MetricOperator`'s default) and no re-trace, which `torch.func.linearize` pays at
    every point. Pays where one point takes many products (the Lanczos-CG solver and its correction,
    2 ``cg_iters`` of them per Geo step). A network whose operations lack forward-mode rules cannot be traced:
    `at` then returns False (with one warning) and the operator keeps the double vjp.
    """

    def __init__(self, model: nn.Module, output_space: OutputSpace = "logits"):
        _check_output_space(output_space)
        self.model, self.output_space = model, output_space
        self._gm = None  # the folded graph module
        self._key: tuple | None = None  # inputs' shape, dtype, device the graph was traced for
        self.failed: str | None = None
        self.point = 0  # counts `at` calls: a product is only valid at the point the graph was last set to

    def _trace(self, inputs: torch.Tensor, w: torch.Tensor) -> None:
        import torch.autograd.forward_ad as fwAD
        from torch.fx.experimental import const_fold
        from torch.fx.experimental.proxy_tensor import make_fx

        model = self.model
        self._w = w.detach().clone()
        self._x = inputs.detach().clone()
        self._buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
        unflatten, softmax = param_unflattener(model), self.output_space == "softmax"

        def tangent(v: torch.Tensor) -> torch.Tensor:
            with fwAD.dual_level():
                out = functional_call(model, {**unflatten(fwAD.make_dual(self._w, v)), **self._buffers}, (self._x,))
                return fwAD.unpack_dual(out.softmax(-1) if softmax else out).tangent

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # const_fold's notes on attributes it creates
            self._gm = const_fold.split_const_subgraphs(make_fx(tangent)(torch.zeros_like(self._w)))
        self._key = (tuple(inputs.shape), inputs.dtype, inputs.device)

    def at(self, inputs: torch.Tensor, w: torch.Tensor | None = None) -> bool:
        """Point the graph at the model's current weights ``w (n,)`` (default: read from the model) and buffers and at
        ``inputs (N, ...)`` (the model in eval mode); False when the network cannot be traced (then use the double
        vjp)."""
        if self.failed is not None:
            return False
        with FUNC_LOCK, eval_mode(self.model), torch.no_grad():
            w = flat_params(self.model) if w is None else w
            try:
                if self._key != (tuple(inputs.shape), inputs.dtype, inputs.device):
                    self._trace(inputs, w)
                else:
                    self._w.copy_(w)
                    self._x.copy_(inputs)
                    for k, b in self.model.named_buffers():
                        self._buffers[k].copy_(b)
                self._gm.has_folding_been_run = False
                self._gm.run_folding()  # the (w, x) part, once per point
                self.point += 1
            except Exception as e:  # noqa: BLE001 - an operation without a forward-mode rule, or one make_fx rejects
                self.failed = f"{type(e).__name__}: {e}"
                warnings.warn(f"J v cannot be traced for this network ({self.failed}); using the double vjp")
                return False
        return True

    def __call__(self, v: torch.Tensor, point: int | None = None) -> torch.Tensor:
        if point is not None and point != self.point:
            raise RuntimeError("this traced pushforward has since been pointed at another w; build a new operator")
        out = self._gm(v.detach())
        return out[0] if isinstance(out, (tuple, list)) else out


class MetricOperator:
    """g at a fixed point w, with the forward pass done once and reused by every product.

    ``op(v)`` returns g v ``(n,)``; ``op.jvp(v)`` returns J v ``(N, m)``; ``op.vjp(u)`` returns J^T u ``(n,)``;
    ``op.outputs`` holds f(inputs; w) ``(N, m)``. J v is taken as the vjp of the (linear) map u -> J^T u,
    so after one forward pass each product costs two backward-type passes and no re-trace; with ``traced``
    (a `TracedPushforward` of the same model, pointed here at w and ``inputs``) J v is its traced linear graph
    instead, the same numbers to float32 rounding for about half the cost.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, output_space: OutputSpace = "logits",
                 traced: TracedPushforward | None = None):
        self.model = model
        self.n_inputs = inputs.shape[0]
        with FUNC_LOCK, eval_mode(model):
            self.w = flat_params(model)
            self.outputs, self._pullback = vjp(output_fn(model, inputs, output_space), self.w)
        if traced is not None and (traced.model is not model or traced.output_space != output_space):
            raise InputError("the traced pushforward belongs to another network or output space")
        self._pushforward: Callable | None = None
        if traced is not None and traced.at(inputs, self.w):
            point = traced.point
            self._pushforward = lambda t: traced(t, point)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        with FUNC_LOCK:
            if self._pushforward is None:  # J v = d/du <J^T u, v>: the vjp of the linear map u -> J^T u
                pullback = self._pullback
                _, push = vjp(lambda u: pullback(u)[0], torch.zeros_like(self.outputs))
                self._pushforward = lambda t: push(t)[0]
            return self._pushforward(v)

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        with FUNC_LOCK:
            return self._pullback(u.reshape(self.outputs.shape))[0]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        gv = self.vjp(self.jvp(v) / self.n_inputs)
        if not torch.isfinite(gv).all():
            raise NonFiniteError("non-finite metric-vector product; the network's outputs or weights hold NaN/Inf")
        return gv


# ----------------------------------------------------------------------------------------------------------
# Gram matrix K = J J^T  (N m x N m), rows ordered (sample i, output k), i-major like f(inputs).reshape(-1).
# ----------------------------------------------------------------------------------------------------------

_SUPPORTED = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)


def _param_modules(model: nn.Module) -> list[nn.Module]:
    mods = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    for m in mods:
        if not isinstance(m, _SUPPORTED):
            raise InputError(f"the exact solver's Gram matrix supports Linear, Conv2d and BatchNorm layers, not "
                             f"{type(m).__name__}; use solver='cg'")
    return mods


ConvGramRule = Literal["auto", "direct", "kernel"]


def conv_gram_costs(n_in: int, m_out: int, c_out: int, ckk: int, positions: int) -> dict[str, int]:
    """Multiply-adds of `conv_weight_gram`'s two exact rules for one convolution (N inputs, m outputs each,
    C_out filters of CKK weights applied at P positions; S = N m):

    - ``direct``: S C_out CKK P to form the per-row gradients G, then S^2 C_out CKK for G G^T;
    - ``kernel``: (S P)^2 C_out for the output-gradient inner products, (N P)^2 CKK for the patch inner
      products, and (S P)^2 to combine them, counted as 64 multiply-adds each: an elementwise product and sum
      reads and writes memory where a matrix product reuses it (measured on the CPU: at P = 16, C_out = 64 the
      two rules take about equally long when CKK = 576).
    """
    s = n_in * m_out
    return {"direct": s * c_out * ckk * positions + s * s * c_out * ckk,
            "kernel": (s * positions) ** 2 * (c_out + 64) + (n_in * positions) ** 2 * ckk}


def conv_weight_gram(dflat: torch.Tensor, patches: torch.Tensor, rule: ConvGramRule = "auto",
                     max_elements: int = 400_000_000, layer: nn.Module | None = None) -> torch.Tensor:
    """One convolution's weight block of K = J J^T: ``(N m, N m)`` float64, rows ordered (sample i, output k).

    With ``dflat (N, m, C_out, P)`` the gradients of output k of sample i at the layer's outputs and
    ``patches (N, CKK, P)`` the unfolded inputs, row (i, k) of J restricted to the weights is
    G_ik = sum_p d_ikp x_ip^T (C_out x CKK), and the block is <G_ik, G_jl>. Two exact rules:

    - ``direct``: form G ``(N m, C_out CKK)`` a few output channels at a time (each chunk at most
      ``max_elements`` entries) and sum G_c G_c^T;
    - ``kernel``: <G_ik, G_jl> = sum_{p, q} (d_ikp . d_jlq) (x_ip . x_jq), never forming G, in chunks of
      positions, each an (N m, N m P) product of at most ``max_elements`` entries. Far cheaper where a
      layer has few positions and large filters: VGG's last blocks (P = 4 or 16) at N m = 640.

    ``auto`` takes the rule with fewer multiply-adds (`conv_gram_costs`); where the direct rule cannot fit one
    output channel in ``max_elements``, the kernel rule. Raises `InputError` when neither fits.
    """
    n, m, c_out, p = dflat.shape
    ckk = patches.shape[1]
    size = n * m
    direct_fits = size * ckk <= max_elements
    kernel_fits = size * p * size <= max_elements
    if rule == "auto":
        costs = conv_gram_costs(n, m, c_out, ckk, p)
        rule = "kernel" if kernel_fits and (costs["kernel"] < costs["direct"] or not direct_fits) else "direct"
    if (rule == "direct" and not direct_fits) or (rule == "kernel" and not kernel_fits):
        name = f"conv layer {layer}" if layer is not None else "a conv layer"
        raise InputError(f"{name} ({c_out} filters of {ckk} weights at {p} positions) x {size} outputs is too large "
                         f"for the exact solver's {rule} rule; use solver='cg' or a smaller metric batch")
    if rule == "direct":
        K = torch.zeros(size, size, device=dflat.device, dtype=torch.float64)
        chunk = max(1, min(c_out, max_elements // (size * ckk)))
        for c0 in range(0, c_out, chunk):
            g_w = torch.einsum("ikcp,idp->ikcd", dflat[:, :, c0:c0 + chunk], patches).reshape(size, -1)
            K += (g_w @ g_w.T).double()
        return K
    d = dflat.permute(3, 0, 1, 2).reshape(p * size, c_out)  # rows (p, i, k)
    x = patches.permute(2, 0, 1)  # (P, N, CKK)
    xx = torch.einsum("pie,qje->piqj", x, x)  # (P, N, P, N): x_ip . x_jq
    acc = torch.zeros(size, size, device=dflat.device, dtype=dflat.dtype)
    for q in range(p):  # one position at a time: (S, P S) products stay in cache (twice as fast as one block)
        dd = (d[q * size:(q + 1) * size] @ d.T).view(n, m, p, n, m)  # d_ikq . d_jlr over r
        dd *= xx[q].view(n, 1, p, n, 1)
        acc += dd.sum(2).view(size, size)
    return acc.double()


@full_float32()
def gram_matrix(model: nn.Module, inputs: torch.Tensor, output_space: OutputSpace = "logits",
                max_elements: int = 400_000_000, conv_rule: ConvGramRule = "auto") -> torch.Tensor:
    """K = J J^T ``(N m, N m)`` for the stacked Jacobian J ``(N m, n)`` of all outputs on ``inputs``.

    Built layer by layer from per-sample output gradients (one batched backward for the m outputs), without
    forming J for fully connected layers: for y = W h + b, the block is (D D^T) * (H H^T + 1) with D the
    per-(sample, output) gradients at y and H the layer inputs. Batch-norm blocks form their per-sample gradients
    G (N m x n_layer) and add G G^T. A convolution's block is `conv_weight_gram`, by whichever of its two exact
    rules costs fewer multiply-adds: G G^T formed in chunks of output channels of at most ``max_elements``
    gradient entries each, or, for layers with few positions and large filters (VGG's last blocks), the inner
    products of output gradients and of input patches combined without forming G. Memory stays
    O(max_elements) whatever the layer's size. ``conv_rule`` forces one rule for every convolution (for
    benchmarks; both are exact).

    Raises:
        InputError: a layer type without a Gram rule, or a block too large (use solver='cg').
    """
    mods = _param_modules(model)
    n_in, dev = inputs.shape[0], inputs.device
    saved: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(mod, args, out):
        saved[mod] = (args[0].detach(), out)

    handles = [m.register_forward_hook(hook) for m in mods]
    try:  # is_grads_batched runs the backward under vmap: a torch.func transform
        with FUNC_LOCK, eval_mode(model), torch.enable_grad():
            out = model(inputs)
            if output_space == "softmax":
                out = out.softmax(-1)
            m_out = out.shape[1]
            eye = torch.eye(m_out, device=dev, dtype=out.dtype)
            cot = eye.unsqueeze(1).expand(m_out, n_in, m_out).contiguous()  # (m, N, m): one-hot per output k
            outs = [saved[mod][1] for mod in mods]
            grads = torch.autograd.grad(out, outs, grad_outputs=cot, is_grads_batched=True)
    finally:
        for h in handles:
            h.remove()
    size = n_in * m_out
    K = torch.zeros(size, size, device=dev, dtype=torch.float64)
    for mod, delta in zip(mods, grads):
        h = saved[mod][0]
        # delta: (m, N, *out_shape) -> (N, m, *out_shape): rows in (i, k) order
        delta = delta.transpose(0, 1).reshape(size, *delta.shape[2:])
        if isinstance(mod, nn.Linear):
            if delta.dim() != 2:
                raise InputError("the exact solver supports Linear layers on (N, features) inputs only; use solver='cg'")
            dd = delta @ delta.T  # (Nm, Nm)
            hh = h.reshape(n_in, -1) @ h.reshape(n_in, -1).T  # (N, N)
            hh = hh.repeat_interleave(m_out, 0).repeat_interleave(m_out, 1)
            block = dd * hh + (dd if mod.bias is not None else 0)
            K += block.double()
            continue
        if isinstance(mod, nn.Conv2d):
            if mod.groups != 1:
                raise InputError("the exact solver does not support grouped convolutions; use solver='cg'")
            patches = nn.functional.unfold(h, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # (N, CKK, P)
            dflat = delta.reshape(n_in, m_out, delta.shape[1], -1)  # (N, m, C_out, P)
            K += conv_weight_gram(dflat, patches, conv_rule, max_elements=max_elements, layer=mod)
            if mod.bias is not None:
                g_b = dflat.sum(-1).reshape(size, -1)
                K += (g_b @ g_b.T).double()
            continue
        # batch norm in eval mode: y = xhat * weight + bias, xhat = (h - running_mean) / sqrt(running_var + eps)
        shape = (1, -1) + (1,) * (h.dim() - 2)
        xhat = (h - mod.running_mean.view(shape)) / torch.sqrt(mod.running_var.view(shape) + mod.eps)
        dflat = delta.reshape(n_in, m_out, *delta.shape[1:])
        red = tuple(range(3, dflat.dim()))
        if mod.weight is not None:
            g_w = (dflat * xhat.unsqueeze(1)).sum(red).reshape(size, -1) if red else (dflat * xhat.unsqueeze(1)).reshape(size, -1)
            K += (g_w @ g_w.T).double()
        if mod.bias is not None:
            g_b = dflat.sum(red).reshape(size, -1) if red else dflat.reshape(size, -1)
            K += (g_b @ g_b.T).double()
    if not torch.isfinite(K).all():
        raise NonFiniteError("non-finite Gram matrix J J^T; the network's weights or outputs hold NaN/Inf")
    return K


@full_float32()
def segment_lengths(model: nn.Module, points: Sequence[torch.Tensor], inputs: torch.Tensor,
                    output_space: OutputSpace = "logits", bn_inputs: torch.Tensor | None = None) -> torch.Tensor:
    """Riemannian length of each segment of a discrete path under g at the segment midpoint.

    For points w_0..w_T and Δ_t = w_{t+1} - w_t: ``l_t = sqrt(Δ_t^T g(m_t) Δ_t)`` with m_t the midpoint, and
    Δ^T g Δ = |J Δ|^2 / N (one jvp per segment, batch norm in eval mode). ``bn_inputs (M, ...)``: for a network
    with batch norm, its running statistics are re-estimated on them at every midpoint first, so that g(m_t)
    is the metric of the network at m_t rather than of whichever network the buffers came from (as the
    traversal's ``bn_every`` and the evaluation of every point do). Returns ``(T,)``; the model's weights
    and buffers are restored.
    """
    w0 = flat_params(model)
    refresh = bn_inputs is not None and has_batchnorm(model)
    buffers = {k: b.clone() for k, b in model.named_buffers()} if refresh else {}
    out = []
    try:
        for a, b in zip(points[:-1], points[1:]):
            a, b = a.to(w0), b.to(w0)
            mid = 0.5 * (a + b)
            if refresh:
                with torch.no_grad():
                    set_flat_params(model, mid)
                    recompute_bn(model, bn_inputs)
            with eval_mode(model):
                f = output_fn(model, inputs, output_space)
                jd = pushforward(f, mid, b - a)
            out.append(torch.sqrt((jd.double() ** 2).sum() / inputs.shape[0]))
    finally:
        set_flat_params(model, w0)
        if buffers:
            with torch.no_grad():
                for k, b in model.named_buffers():
                    b.copy_(buffers[k])
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)


def path_length(model: nn.Module, points: Sequence[torch.Tensor], inputs: torch.Tensor,
                output_space: OutputSpace = "logits", bn_inputs: torch.Tensor | None = None) -> float:
    """S(γ) of a discrete path under g (eq. 4), as the reparameterization-invariant length sum_t l_t.

    Eq. 4 integrates <γ', γ'>_γ; its minimizers are the geodesics, and the length sum_t sqrt(Δ_t^T g Δ_t)
    is the same functional made independent of how many points the path has, so the geodesic and the
    straight line between two networks can be compared directly.
    """
    return float(segment_lengths(model, points, inputs, output_space, bn_inputs).sum())


def cumulative_lengths(model: nn.Module, points: Sequence[torch.Tensor], inputs: torch.Tensor,
                       output_space: str = "logits", bn_inputs: torch.Tensor | None = None) -> list[float]:
    """S(γ) from the first point to each point of a discrete path, under g on one fixed batch ``inputs``
    (segment midpoints, batch-norm statistics re-estimated there on ``bn_inputs``: see `segment_lengths`);
    the model's weights and buffers are restored."""
    if len(points) < 2:
        return [0.0] * len(points)
    seg = segment_lengths(model, list(points), inputs, output_space, bn_inputs).double()
    return [0.0] + torch.cumsum(seg, 0).tolist()


def linear_path(w_a: torch.Tensor, w_b: torch.Tensor, points: int) -> list[torch.Tensor]:
    """``points`` equally spaced weight vectors on the straight line from w_a to w_b (both included)."""
    return [torch.lerp(w_a, w_b, float(t)) for t in torch.linspace(0, 1, points)]
