"""Geo(w_t, g, w_a, s): the traversal of section 3, one exactly solved Geo step (eq. 6-7) at a time.

Each step draws a metric batch X (N inputs), solves eq. 6 at the current weights for d = w_a − w, and moves
Δw = η θ / ‖θ‖ (eq. 7). The local metric only bounds each step's functional change, and over hundreds of
steps that change accumulates; the optional output anchor (``GeoConfig.anchor`` = a > 0) adds after each
step the damped Gauss-Newton correction toward an anchor network's outputs y* on the same batch,

    δ = −a J^T (J J^T + μ I)^{-1} r,   r = f(X; w) + J Δw − y*(X)    (the linearized residual after the step),

which lies in the row space of J and so leaves the null-space motion toward the target untouched
(``GeoConfig.anchor_radius`` = r > 0 bounds ‖δ‖ ≤ r η, a trust region for the correction as eq. 6 has one for θ).
Optionally (``GeoConfig.distill_steps``) a first-order corrector follows: a few SGD steps on fresh batches
that minimize |f(x; w) − y*(x)|², or with ``GeoConfig.distill_temperature`` T > 0 the tempered
T² KL(softmax(y*/T) ‖ softmax(f/T)) of knowledge distillation (it sees far more data per second than the exact
step's batch). Each of its SGD steps is at most η long, and ``GeoConfig.distill_radius`` = r > 0 bounds its whole
move after one Geo step to r η. For a sparse target both correctors move only the weights the target leaves free,
so they never undo its zeros.
With ``GeoConfig.keep_progress`` they never undo the step's progress either: where the corrected weights end
farther from w_a than the predictor w + Δw, they are pulled radially onto the sphere ‖w − w_a‖ = ‖w + Δw − w_a‖
(the corrector of a predictor-corrector continuation, which moves on the predictor's level set of progress).

Stopping criteria (section 3): (i) the target is within η (the last step lands on it exactly); (ii) ``s``
steps taken; (iii) oscillation: the distance to the target has not reached a new minimum for ``patience``
steps. Per-step information goes to callbacks; nothing here logs or tracks.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from .config import GeoConfig
from .errors import InputError, NonFiniteError
from .metric import (MetricOperator, TracedPushforward, eval_mode, flat_params, output_fn, pushforward, set_flat_params,
                     Tempered, tempered)
from .solve import GramFactor, _check_qp_args, _solve_exact, _solve_lanczos
from .targets import Target
from .train import bn_estimated, distillation_loss, full_float32, has_batchnorm, recompute_bn


class StepInfo(NamedTuple):
    """What one Geo step did. ``distance``: ‖w_a − w‖ before the step; ``step_length``: sqrt(Δw^T g Δw) on
    the step's batch; ``path_length``: cumulative S(γ) so far; ``weights``: flat weights after the step (a
    live tensor: copy it to keep it)."""

    step: int
    distance: float
    theta_g_theta: float
    step_length: float
    path_length: float
    lam: float
    residual: float
    weights: torch.Tensor
    retries: int = 0  # times this step was taken again, shorter, after its weights came out NaN/Inf


class GeoResult(NamedTuple):
    weights: torch.Tensor
    steps: int
    stop_reason: str  # "reached" | "max_steps" | "oscillation"
    distance: float  # distance to the target at the end
    path_length: float
    retries: int = 0  # steps retried shorter after NaN/Inf weights, over the traversal (GeoConfig.nonfinite_retries)


def _anchor_outputs(anchor: nn.Module, x: torch.Tensor, output_space: str) -> torch.Tensor:
    with torch.no_grad(), eval_mode(anchor):
        out = anchor(x)
        return out.softmax(-1) if output_space == "softmax" else out


class AnchorCache:
    """The anchor's outputs y*(x_i) on the traversal's pool for the correctors, computed once for each input.

    During one traversal the anchor is a fixed function of its input (frozen weights, eval mode, its batch-norm
    statistics fixed for the traversal), and the output anchor and the distillation corrector read it at every
    step on batches drawn from the same pool ``(P, ...)``: a table ``(P, m)`` of its logits, filled as indices are
    drawn, replaces one forward pass of the anchor per corrector batch (two for the connect anchor). An anchor
    whose output is a mixture of fixed networks with coefficients that change between steps (`InterpolatedOutputs`:
    f_t = (1 - t) f_a + t f_b) exposes ``mixture() -> [(coefficient, network), ...]``: one table per network, mixed
    at the current coefficients. A `Tempered` anchor's logits / T are mixed the same way (the division is linear).
    Tables larger than ``max_floats`` in all are not kept (the anchor is then run on every batch, as without the
    cache); ``calls`` counts the anchor forward passes that were run (a test's handle)."""

    def __init__(self, anchor: nn.Module, pool: torch.Tensor, max_floats: int = 1 << 26):
        self.anchor, self.pool, self.max_floats = anchor, pool, max_floats
        tempered_ = isinstance(anchor, Tempered)
        self.inner = anchor.model if tempered_ else anchor  # the network(s) whose logits are tabled
        self.scale = 1.0 / anchor.temperature if tempered_ else 1.0
        self.tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(network) -> (P, m) logits, (P,) filled
        self.off = False
        self.calls = 0

    def _parts(self) -> list[tuple[float, nn.Module]]:
        mixture = getattr(self.inner, "mixture", None)
        return list(mixture()) if callable(mixture) else [(1.0, self.inner)]

    def _table(self, net: nn.Module, idx: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        """``net``'s logits on ``pool[idx]`` ``(N, m)`` from its table, computing the inputs not seen yet (None when
        the tables would outgrow ``max_floats``: the cache is then off)."""
        idx = idx.to(device)
        table, filled = self.tables.get(id(net), (None, None))
        missing = torch.unique(idx if filled is None else idx[~filled[idx]])
        if missing.numel():
            with torch.no_grad(), eval_mode(net):
                out = net(self.pool[missing.to(self.pool.device)].to(device))
            self.calls += 1
            if table is None:
                if self.pool.shape[0] * out.shape[-1] * (len(self.tables) + 1) > self.max_floats:
                    self.off = True
                    return None
                table = torch.zeros(self.pool.shape[0], out.shape[-1], device=device, dtype=out.dtype)
                filled = torch.zeros(self.pool.shape[0], dtype=torch.bool, device=device)
                self.tables[id(net)] = (table, filled)
            table[missing] = out
            filled[missing] = True
        return table[idx]

    def __call__(self, idx: torch.Tensor, x: torch.Tensor, output_space: str) -> torch.Tensor:
        """y* on the inputs ``x = pool[idx]`` ``(N, ...)``: the anchor's outputs ``(N, m)`` in ``output_space``."""
        if not self.off:
            out = None
            for coef, net in self._parts():
                part = self._table(net, idx, x.device)
                if part is None:
                    break
                out = coef * part if out is None else out + coef * part
            else:
                out = out * self.scale if self.scale != 1.0 else out
                return out.softmax(-1) if output_space == "softmax" else out
        self.calls += 1
        return _anchor_outputs(self.anchor, x, output_space)


def _cg(op_apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int) -> torch.Tensor:
    """At most ``iters`` conjugate-gradient steps on A x = b for a symmetric positive semi-definite A given by its
    products (``b``, x: ``(n,)``). A direction of curvature p^T A p ≤ 1e-12 ‖p‖² max(‖A b‖/‖b‖, tiny) (float32
    round-off in a matrix-free J^T J product can make it zero or negative) ends the iteration with the x so far:
    dividing by it would send x to ±Inf."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = torch.dot(r, r)
    scale = None
    for _ in range(iters):
        ap = op_apply(p)
        pap = float(torch.dot(p, ap))
        if scale is None:  # the operator's size along b, the yardstick of "no curvature"
            scale = float(ap.norm()) / max(float(p.norm()), 1e-30)
        if not math.isfinite(pap) or pap <= 1e-12 * max(scale, 1e-30) * float(torch.dot(p, p)):
            break
        alpha = rr / pap
        x += alpha * p
        r -= alpha * ap
        rr_new = torch.dot(r, r)
        if rr_new.sqrt() < 1e-8 * b.norm():
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def _shrink(v: torch.Tensor, radius: float) -> float:
    """The factor min(1, radius / ‖v‖) that scales ``v`` onto the ball ‖v‖ ≤ radius (every trust region of the
    correctors: each distillation step within η, the distiller's whole move, the Gauss-Newton correction)."""
    norm = float(v.norm())
    return radius / norm if norm > radius else 1.0


class _Distiller:
    """First-order corrector: SGD (momentum 0.9) on (1/B) sum_i |f(x_i; w) - y*(x_i)|^2 over fresh batches (or,
    with ``distill_temperature`` T > 0, on `geodesic_core.train.distillation_loss` at T between the logits),
    updating only the weights the target leaves free. Momentum persists across Geo steps. Each SGD step is
    at most η long (the Geo step's own length): with large outputs (a CNN's logits) the gradient is large and
    an unbounded step at a learning rate tuned for a small network diverges. With ``distill_radius`` r > 0 the
    whole move of one call is then scaled onto ‖w − w_start‖ ≤ r η (the momentum keeps its raw value)."""

    def __init__(self, model, anchor: AnchorCache, pool, cfg: GeoConfig, target, gen):
        self.model, self.anchor, self.pool, self.cfg, self.target, self.gen = model, anchor, pool, cfg, target, gen
        self.buf: torch.Tensor | None = None

    def run(self, w: torch.Tensor, w_a: torch.Tensor, eta: float) -> torch.Tensor:
        """The corrector after one Geo step of length ``eta`` (``cfg.eta``, or less on a retried step): w, w_a
        ``(n,)``."""
        free = getattr(self.target, "free_mask", None)
        mask = free(w_a).to(w.dtype) if free is not None else None
        f_params = list(self.model.parameters())
        device = w.device
        T = self.cfg.distill_temperature
        space = "logits" if T > 0 else self.cfg.output_space  # the tempered loss reads the logits
        w_start = w
        for k in range(self.cfg.distill_steps):
            set_flat_params(self.model, w)
            idx = torch.randperm(self.pool.shape[0], generator=self.gen)[: self.cfg.distill_batch]
            x = self.pool[idx].to(device)
            y = self.anchor(idx, x, space)
            with eval_mode(self.model), torch.enable_grad():
                out = self.model(x)
                if T > 0:
                    loss = distillation_loss(out, y, T)
                else:
                    out = out.softmax(-1) if space == "softmax" else out
                    loss = (out - y).pow(2).sum(-1).mean()
                grads = torch.autograd.grad(loss, f_params)
            g = torch.cat([t.reshape(-1) for t in grads]).detach()
            if not torch.isfinite(g).all():  # NaN passes `_shrink`'s bound: stop here, with what overflowed
                raise NonFiniteError(f"its gradient is NaN/Inf at its step {k + 1} of "
                                     f"{self.cfg.distill_steps} (loss {float(loss.detach()):.3g}, largest |output| "
                                     f"{float(out.detach().abs().max()):.3g}, largest |wanted output| "
                                     f"{float(y.abs().max()):.3g})")
            if mask is not None:
                g = g * mask
            self.buf = g if self.buf is None else 0.9 * self.buf + g
            step = self.cfg.distill_lr * self.buf
            s = _shrink(step, eta)
            if s < 1:
                step = step * s
                self.buf = step / self.cfg.distill_lr  # the momentum carries the bounded step, not the raw one
            w = w - step
        if self.cfg.distill_radius > 0:  # the corrector's trust region: the whole move at most distill_radius × η
            move = w - w_start
            s = _shrink(move, self.cfg.distill_radius * eta)
            if s < 1:
                w = w_start + move * s
        return w


def geo_step_passes(cfg: GeoConfig, n_batch: int, n_outputs: int, masked: bool = False) -> int:
    """Sample-passes of one Geo step: forward passes plus backward-type passes (vjp, jvp), each counted once
    per input it processes, as the step is implemented in `geo`:

    - exact solver: forward + m batched backward passes for the Gram matrix K = J J^T, the operator's forward,
      J d and J^T u: N (m + 4);
    - cg solver: forward, ``cg_iters`` products g v (a jvp and a vjp each), J θ: N (2 + 2 cg_iters);
    - anchor > 0: the anchor's forward and J^T u (exact) or the damped CG solve (cg: 2 + 2 cg_iters passes),
      plus one jvp where a sparse or structured target masks the correction;
    - distill_steps: each an anchor forward, a forward and a backward on ``distill_batch`` inputs, then one
      jvp for the step's length.

    An SGD epoch is one forward and one backward pass per training sample (2 N_train sample-passes), so
    ``steps * geo_step_passes(...) / (2 N_train)`` puts a traversal on the epochs axis of its SGD baselines.
    """
    n, m = n_batch, n_outputs
    passes = n * (m + 4) if cfg.solver == "exact" else n * (2 + 2 * cfg.cg_iters)
    if cfg.anchor > 0:
        passes += n * (2 if cfg.solver == "exact" else 3 + 2 * cfg.cg_iters) + (n if masked else 0)
    if cfg.distill_steps:
        passes += 3 * cfg.distill_steps * cfg.distill_batch + n
    return passes


def geo(model: nn.Module, target: Target, pool: torch.Tensor, cfg: GeoConfig, *,
        anchor: nn.Module | None = None, callbacks: Sequence[Callable[[StepInfo], None]] = (),
        generator: torch.Generator | None = None, start_step: int = 0) -> GeoResult:
    """Traverse from the model's current weights toward ``target``; the model ends at the path's end.

    Args:
        model: start network w_t (updated in place).
        target: maps (w, step) to w_a (see `geodesic_core.targets`).
        pool: ``(P, C, H, W)`` inputs from which each step's metric batch of ``cfg.metric_batch`` is drawn
            (the task's data: g measures functional change on this task only).
        cfg: Geo settings (β, ε, η, s = max_steps, batch, output space, solver, anchor, patience).
        anchor: network whose outputs the correction pulls toward (default: a frozen copy of the start
            network). Unused when both correctors are off (``cfg.anchor == 0`` and ``cfg.distill_steps == 0``).
            With ``cfg.bn_every`` > 0 and ``cfg.bn_anchor`` its batch-norm statistics are re-estimated on the first
            step's inputs for the traversal and put back at its end.
        callbacks: called with a `StepInfo` after every step.
        generator: CPU generator for the metric batches (default: seeded from ``cfg.seed``).
        start_step: step counter offset (for target refresh schedules across segments).

    The whole traversal runs in IEEE float32 (`full_float32`: no TF32 convolutions or matrix products on a GPU).
    """
    _check_qp_args(cfg.beta, cfg.eps)
    if cfg.eta <= 0:
        raise InputError(f"eta (the step length of eq. 7) must be positive, got {cfg.eta}")
    if pool.shape[0] == 0:
        raise InputError("the metric's input pool is empty; pass the task's training inputs")
    gen = generator or torch.Generator().manual_seed(cfg.seed)
    if not torch.isfinite(flat_params(model)).all():
        raise NonFiniteError("the start network holds NaN/Inf weights; start from a finite checkpoint")
    corrects = cfg.anchor > 0 or cfg.distill_steps > 0  # the anchor is read at all
    if corrects and anchor is None:
        import copy

        anchor = copy.deepcopy(model).requires_grad_(False)
    # softmax of logits / T: the metric, the anchor and the corrector all see the tempered network (same weights)
    model = tempered(model, cfg.temperature)
    anchor = tempered(anchor, cfg.temperature) if anchor is not None else None
    # the anchor as the correctors read it: its outputs on the pool, each computed once (filled lazily inside the
    # batch-norm context below, so with the statistics the traversal reads it at)
    y_star = AnchorCache(anchor, pool) if corrects and anchor is not None else None
    distiller = _Distiller(model, y_star, pool, cfg, target, gen) if cfg.distill_steps else None
    refresh_bn = cfg.bn_every > 0 and has_batchnorm(model)
    bn_first = pool[torch.randperm(pool.shape[0], generator=gen)[:cfg.bn_samples]] if refresh_bn else None
    fresh_anchor = refresh_bn and cfg.bn_anchor and corrects and anchor is not None
    # bn_anchor: the anchor's function is read with statistics estimated as the model's are, on the first step's
    # inputs (its stored ones, averaged over training, can differ enough to start the correction off a residual that
    # is only the two estimates' difference); its own statistics are put back when the traversal ends
    with full_float32(), (bn_estimated(anchor, bn_first) if fresh_anchor else nullcontext()):
        return _traverse(model, target, pool, cfg, y_star, callbacks, gen, start_step, distiller, bn_first)


def _nonfinite(model: nn.Module, w: torch.Tensor, x: torch.Tensor, step: int, where: str, cfg: GeoConfig,
               since_bn: int | None) -> NonFiniteError:
    """The error for a Geo step whose new weights hold NaN/Inf: the model is put back at the last good weights ``w``
    ``(n,)``, and the message says which part of the step failed (``where``) and how large the network's logits on
    the step's batch ``x`` ``(N, ...)`` are there: with the stored batch-norm statistics and, for a network with
    batch norm, with statistics re-estimated on ``x`` (stale statistics of a deep network that moved far since
    their last re-estimation can overflow its activations)."""
    set_flat_params(model, w)
    net = model.model if isinstance(model, Tempered) else model  # the logits, not logits / T
    with torch.no_grad(), eval_mode(net):
        stored = float(net(x).abs().max())
    facts = [f"largest |logit| at the last good weights {stored:.3g}"]
    if has_batchnorm(net):
        with bn_estimated(net, x), torch.no_grad(), eval_mode(net):
            fresh = float(net(x).abs().max())
        facts[0] += " with the stored batch-norm statistics"
        facts.append(f"{fresh:.3g} with statistics re-estimated on this batch" +
                     (f" ({since_bn} steps after the last re-estimation)" if since_bn is not None else ""))
    return NonFiniteError(
        f"Geo step {step + 1} produced NaN/Inf weights in {where}; the last good weights are kept "
        f"({'; '.join(facts)}). "
        f"Lower eta, bound the correctors (anchor_radius, distill_radius), re-estimate batch-norm statistics more "
        f"often (bn_every), or check the data for NaN/Inf")


class _ZeroDirection(NonFiniteError):
    """Eq. 6 gave θ = 0 at finite weights: there is no step to shorten, so it is not taken again."""


def _corrected_step(model, w, w_a, d, aim, idx, x, eta, cfg, anchor, distiller, traced, target, step, since_bn):
    """One Geo step of length ``eta`` from ``w`` toward ``w_a`` (``d = w_a − w``, all ``(n,)``; eq. 6 solved for
    ``aim`` ``(n,)``: the target's `aim` of d where it has one, else d itself) on the metric batch
    ``x = pool[idx]`` ``(N, ...)``: eq. 6 solved (exactly or by Lanczos-CG), Δw = η θ / ‖θ‖ (eq. 7), then the
    correctors (the output anchor's Gauss-Newton correction, the distillation corrector, the sideways projection).
    Returns the new weights ``(n,)``, J Δw on the batch ``(N, m)`` and the sub-problem's solution. The model is left
    at whatever weights the correctors set last. Raises `NonFiniteError` where the new weights (the model put back at
    ``w``), a product, the Gram matrix or θ overflowed (`_traverse` takes the step again shorter, at most
    ``GeoConfig.nonfinite_retries`` times), `_ZeroDirection` for θ = 0 (not taken again)."""
    n_batch = x.shape[0]
    if cfg.solver == "exact":
        factor = GramFactor.compute(model, x, cfg.output_space)
        op = factor.op
        sol = _solve_exact(factor, aim, cfg.beta, cfg.eps)
    else:
        factor, op = None, MetricOperator(model, x, cfg.output_space, traced)
        sol = _solve_lanczos(op, aim, cfg.beta, cfg.eps, cfg.cg_iters)
    tnorm = float(sol.theta.norm())
    if not math.isfinite(tnorm) or tnorm == 0.0:
        error = _ZeroDirection if tnorm == 0.0 else NonFiniteError
        raise error(f"Geo step {step + 1}: the direction θ is {'zero' if tnorm == 0 else 'NaN/Inf'}; the last good "
                    f"weights are kept. Lower eta, raise eps, or check the data for NaN/Inf")
    c = eta / tnorm
    delta = c * sol.theta
    j_delta = c * sol.j_theta  # (N, m)
    if cfg.anchor > 0:
        resid = op.outputs.detach() + j_delta - anchor(idx, x, cfg.output_space)
        if factor is not None:
            mu = cfg.anchor_damping * float(factor.sigma.mean().clamp_min(1e-30))
            u = factor.solve_damped(resid, mu)  # (K + μI)^{-1} r
            corr = -cfg.anchor * op.vjp(u)
            j_corr = -cfg.anchor * (factor.U @ (factor.sigma * (factor.U.T @ u.reshape(-1).double())))
            j_corr = j_corr.to(j_delta.dtype).reshape(j_delta.shape)
        else:  # (J^T J + μ' I) δ = -J^T r, matrix-free
            rhs = op.vjp(resid)
            mu = cfg.anchor_damping * float((rhs.norm() / max(float(resid.norm()), 1e-30)) ** 2 / n_batch + 1e-12)
            corr = -cfg.anchor * _cg(lambda v: op(v) * n_batch + mu * v, rhs, cfg.cg_iters)
            j_corr = op.jvp(corr)
        free = getattr(target, "free_mask", None)
        if free is not None:  # never undo the target's zeros: correct with the free weights only
            corr = corr * free(w_a).to(corr.dtype)
            j_corr = op.jvp(corr)
        if cfg.anchor_radius > 0:  # the correction's trust region: at most anchor_radius * eta long
            s = _shrink(corr, cfg.anchor_radius * eta)
            if s < 1:
                corr, j_corr = corr * s, j_corr * s
        delta = delta + corr
        j_delta = j_delta + j_corr
    w_new = w + delta
    if not torch.isfinite(w_new).all():
        raise _nonfinite(model, w, x, step, "the output anchor's correction" if cfg.anchor > 0 else "the Geo step",
                         cfg, since_bn)
    moved = distiller is not None
    if distiller is not None:
        try:
            w_new = distiller.run(w_new, w_a, eta)
        except NonFiniteError as exc:
            raise _nonfinite(model, w, x, step, f"the distillation corrector ({exc})", cfg, since_bn) from None
    if cfg.keep_progress and (cfg.anchor > 0 or distiller is not None):
        # the correctors may move the weights sideways, never back: w_new is pulled radially onto the sphere
        # around w_a through the predictor's point w + η θ/|θ| when it ended outside it
        reach, off = float((d - c * sol.theta).norm()), w_new - w_a
        off_norm = float(off.norm())
        if off_norm > reach:
            w_new, moved = w_a + off * (reach / off_norm), True
    if moved:  # (unmoved, w_new is the predictor's point, checked above)
        if not torch.isfinite(w_new).all():
            raise _nonfinite(model, w, x, step, "the distillation corrector" if distiller is not None else
                             "the sideways projection (keep_progress)", cfg, since_bn)
        j_delta = op.jvp(w_new - w)  # the step's length under g covers the correctors' motion too
    return w_new, j_delta, sol


def _traverse(model, target, pool, cfg, anchor, callbacks, gen, start_step, distiller, bn_first):
    """`geo`'s loop (arguments checked, the model and anchor tempered, the anchor's statistics estimated, the anchor
    read through its `AnchorCache`, called with the batch's pool indices and inputs; ``bn_first``: the inputs of the
    first batch-norm re-estimation, None when the statistics are not refreshed)."""
    refresh_bn = bn_first is not None
    device = next(model.parameters()).device
    w = flat_params(model)
    n_batch = min(cfg.metric_batch, pool.shape[0])
    best, last_improve, total = math.inf, start_step, 0.0
    dist, retries = math.inf, 0
    step = start_step
    stop = "max_steps"
    # the cg solver takes 2 cg_iters products J v at each point (the step, then the correction): traced once here,
    # pointed at each step's w and batch (the exact solver takes one or two, where the double vjp is cheaper)
    traced = TracedPushforward(model, cfg.output_space) if cfg.solver == "cg" else None
    aim = getattr(target, "aim", None)  # the vector eq. 6 is solved for, where the target gives one (WeightedTarget)
    for step in range(start_step, start_step + cfg.max_steps):
        since_bn = (step - start_step) % cfg.bn_every if refresh_bn else None
        if refresh_bn and since_bn == 0:  # the statistics of the network at w
            recompute_bn(model, bn_first if step == start_step else
                         pool[torch.randperm(pool.shape[0], generator=gen)[:cfg.bn_samples]])
        w_a = target(w, step).to(w)
        if w_a.shape != w.shape:
            raise InputError(f"target has {w_a.numel()} weights, the network {w.numel()}: not the same architecture")
        d = w_a - w
        dist = float(d.norm())
        idx = torch.randperm(pool.shape[0], generator=gen)[:n_batch]
        x = pool[idx].to(device)
        if dist <= cfg.eta:  # criterion (i): land on the target
            with eval_mode(model):
                jd = pushforward(output_fn(model, x, cfg.output_space), w, d)
            seg = math.sqrt(float((jd.double() ** 2).sum()) / n_batch)
            w = w_a.clone()
            set_flat_params(model, w)
            total += seg
            info = StepInfo(step + 1, dist, float("nan"), seg, total, float("nan"), 0.0, w)
            for cb in callbacks:
                cb(info)
            step += 1
            stop, dist = "reached", 0.0
            break
        aim_d = aim(d) if aim is not None else d
        eta, tries = cfg.eta, 0
        while True:  # the step, taken again shorter on fresh statistics and a fresh batch when it overflows
            try:
                w_new, j_delta, sol = _corrected_step(model, w, w_a, d, aim_d, idx, x, eta, cfg, anchor, distiller,
                                                      traced, target, step, since_bn)
                break
            except _ZeroDirection:  # no step to shorten
                raise
            except NonFiniteError as exc:  # the new weights, or the Gram matrix, a product on the way
                set_flat_params(model, w)  # the last good weights, to stop at or to take the step again from
                error = str(exc)
                if tries == cfg.nonfinite_retries:
                    again = (f" (and after {tries} retries, each with half the step, down to eta = {eta:.3g}, from "
                             f"re-estimated batch-norm statistics and a fresh batch)" if tries else "")
                    where = "" if error.startswith("Geo step") else f"Geo step {step + 1}: "
                    raise NonFiniteError(where + error + again) from None
            tries, eta = tries + 1, eta / 2
            if distiller is not None:
                distiller.buf = None  # its momentum carried the step that overflowed
            if refresh_bn:
                recompute_bn(model, pool[torch.randperm(pool.shape[0], generator=gen)[:cfg.bn_samples]])
                since_bn = 0
            idx = torch.randperm(pool.shape[0], generator=gen)[:n_batch]
            x = pool[idx].to(device)
        retries += tries
        w = w_new
        set_flat_params(model, w)
        seg = math.sqrt(float((j_delta.double() ** 2).sum()) / n_batch)
        total += seg
        info = StepInfo(step + 1, dist, sol.theta_g_theta, seg, total, sol.lam, sol.residual, w, tries)
        for cb in callbacks:
            cb(info)
        if dist < best * (1 - 1e-4):
            best, last_improve = dist, step
        elif step - last_improve >= cfg.patience:  # criterion (iii)
            step += 1
            stop = "oscillation"
            break
    else:
        step = start_step + cfg.max_steps
    if stop != "reached":
        dist = float((target(w, step).to(w) - w).norm())
    return GeoResult(w, step - start_step, stop, dist, total, retries)
