"""The Geo step (paper eq. 6-7): an exactly solved trust-region sub-problem.

    θ* = argmin_θ  θ^T g θ − β θ^T d    subject to  θ^T θ ≤ ε,      d = w_a − w          (eq. 6)
    Δw = η θ* / ‖θ*‖                                                                    (eq. 7)

g is positive semi-definite, so the problem is convex and its KKT conditions characterize the solution:
2 (g + λ I) θ = β d, λ ≥ 0, ‖θ‖² ≤ ε, λ (‖θ‖² − ε) = 0. Hence θ(λ) = (β/2) (g + λ I)^{-1} d, and since g
is singular (rank ≤ N m ≪ n) the constraint is active whenever d leaves the row space of J: λ > 0 is the
unique root of ‖θ(λ)‖² = ε (‖θ(λ)‖ decreases monotonically in λ), found by bisection on log λ in float64.

Two solvers share that root finder, through the spectral form ‖θ(λ)‖² = (β/2)² Σ_k c_k² / (μ_k + λ)²:

* ``exact``: eigendecomposition of the Gram matrix K = J J^T = U diag(σ) U^T (N m x N m). By Woodbury,
  θ(λ) = (β / 2λ) [d − J^T U diag(1 / (σ + N λ)) U^T J d]: closed form for every λ, one jvp (J d) and one
  vjp (J^T ·) per solve.
* ``cg``: the Lanczos form of conjugate gradients (GLTR, Gould et al. 1999) on matrix-free products g v,
  started from d. The Krylov basis is shared by every shift g + λ I, so the trust-region problem is solved
  exactly inside the Krylov space; the residual ‖(g + λI) θ − (β/2) d‖ / ‖(β/2) d‖ is reported.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import nn

from .errors import InputError, NonFiniteError
from .metric import MetricOperator, OutputSpace, _check_vector, gram_matrix
from .train import full_float32


class GeoQPSolution(NamedTuple):
    """Solution of eq. 6. ``theta (n,)``; ``lam`` the multiplier; ``theta_g_theta`` = θ^T g θ;
    ``j_theta (N, m)`` = J θ; ``residual``: relative KKT residual (cg; 0.0 means "closed form")."""

    theta: torch.Tensor
    lam: float
    theta_g_theta: float
    j_theta: torch.Tensor
    residual: float
    solver: str


def _check_qp_args(beta: float, eps: float) -> None:
    if not (beta > 0 and math.isfinite(beta)):
        raise InputError(f"beta must be a positive finite number, got {beta}")
    if not (eps > 0 and math.isfinite(eps)):
        raise InputError(f"eps (the trust region θ^T θ ≤ eps) must be a positive finite number, got {eps}")


def solve_multiplier(norm2: Callable[[float], float], eps: float, lam_hi: float) -> float:
    """The root λ > 0 of ``norm2(λ) = eps`` for a decreasing ``norm2``, or 0.0 if ``norm2(0+) ≤ eps``.

    Bisection on log λ in [lam_hi 1e-30, lam_hi] to relative precision 1e-14 (≈ 70 scalar evaluations).
    """
    lo = lam_hi * 1e-30
    if norm2(lo) <= eps:
        return 0.0
    hi = lam_hi
    while norm2(hi) > eps:  # safety: lam_hi should already be feasible
        hi *= 10.0
    llo, lhi = math.log(lo), math.log(hi)
    while lhi - llo > 1e-14:
        mid = 0.5 * (llo + lhi)
        if norm2(math.exp(mid)) > eps:
            llo = mid
        else:
            lhi = mid
    return math.exp(lhi)


class GramFactor(NamedTuple):
    """Eigendecomposition of K = J J^T at w: ``sigma (Nm,)`` ≥ 0, ``U (Nm, Nm)`` (float64), plus the metric
    operator at w (for J v and J^T u)."""

    sigma: torch.Tensor
    U: torch.Tensor
    op: MetricOperator

    @staticmethod
    def compute(model: nn.Module, inputs: torch.Tensor, output_space: OutputSpace = "logits") -> "GramFactor":
        K = gram_matrix(model, inputs, output_space)
        sigma, U = torch.linalg.eigh(K)
        return GramFactor(sigma.clamp_min(0.0), U, MetricOperator(model, inputs, output_space))

    def solve_damped(self, rhs_out: torch.Tensor, damping: float) -> torch.Tensor:
        """(K + damping I)^{-1} r for ``rhs_out (N, m)``; returns ``(N, m)`` in the outputs' dtype."""
        r = self.U.T @ rhs_out.reshape(-1).double()
        return (self.U @ (r / (self.sigma + damping))).to(rhs_out.dtype).reshape(rhs_out.shape)


def _solve_exact(gf: GramFactor, d: torch.Tensor, beta: float, eps: float) -> GeoQPSolution:
    n_in = gf.op.n_inputs
    sigma, U = gf.sigma, gf.U
    jd = gf.op.jvp(d)  # (N, m)
    r = U.T @ jd.reshape(-1).double()  # (Nm,)
    # modes with σ at round-off level are null directions of g (e.g. softmax outputs sum to 1): there
    # r_k = u_k^T J d is round-off too, and keeping it would break the cancellation-free norm below
    tol = float(sigma.max()) * 1e-6
    r = torch.where(sigma > tol, r, torch.zeros_like(r))
    r2 = r * r
    dd = float((d.double() ** 2).sum())
    half_b2 = (beta / 2.0) ** 2

    def norm2(lam: float) -> float:
        s = sigma + n_in * lam
        inner = dd - float((r2 * (sigma + 2 * n_in * lam) / (s * s)).sum())
        return half_b2 * max(inner, 0.0) / (lam * lam)

    lam_hi = beta * math.sqrt(dd) / (2.0 * math.sqrt(eps)) * 1.000001 + 1e-300
    lam = solve_multiplier(norm2, eps, lam_hi)
    if lam > 0.0:
        coef = U @ (r / (sigma + n_in * lam))  # (Nm,)
        theta = (beta / (2.0 * lam)) * (d - gf.op.vjp(coef.to(d.dtype)))
        j_theta_vec = U @ ((beta / 2.0) * n_in * r / (sigma + n_in * lam))
    else:  # unconstrained minimum inside the trust region: θ = (β/2) g^+ d (d in the row space of J)
        inv = torch.where(sigma > tol, 1.0 / sigma.clamp_min(tol) ** 2, torch.zeros_like(sigma))
        theta = (beta / 2.0) * n_in * gf.op.vjp((U @ (r * inv)).to(d.dtype))
        j_theta_vec = U @ ((beta / 2.0) * n_in * r * torch.where(sigma > tol, 1.0 / sigma.clamp_min(tol), 0.0))
    j_theta = j_theta_vec.to(d.dtype).reshape(gf.op.outputs.shape)
    tgt = float((j_theta.double() ** 2).sum()) / n_in
    return GeoQPSolution(theta, lam, tgt, j_theta, 0.0, "exact")


def _solve_lanczos(op: MetricOperator, d: torch.Tensor, beta: float, eps: float, iters: int) -> GeoQPSolution:
    dnorm = float(d.norm())
    q = d / dnorm
    Q = [q]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(iters):
        v = op(Q[-1])
        a = float(torch.dot(v, Q[-1]))
        alphas.append(a)
        v = v - a * Q[-1] - (betas[-1] * Q[-2] if betas else 0.0)
        for qq in Q:  # full re-orthogonalization (k ≤ iters vectors)
            v = v - torch.dot(v, qq) * qq
        b = float(v.norm())
        betas.append(b)
        if b <= 1e-10 * max(abs(a), 1e-30) or j == iters - 1:
            break
        Q.append(v / b)
    k = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[:k - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    mu, Z = torch.linalg.eigh(T)
    mu = mu.clamp_min(0.0)
    c = dnorm * Z[0, :]  # coefficients of d in the eigenbasis of T
    half_b2 = (beta / 2.0) ** 2

    def norm2(lam: float) -> float:
        return half_b2 * float((c * c / (mu + lam) ** 2).sum())

    lam = solve_multiplier(norm2, eps, beta * dnorm / (2.0 * math.sqrt(eps)) * 1.000001 + 1e-300)
    lam_eff = max(lam, 1e-12 * float(mu.max().clamp_min(1e-30)))
    y = Z @ ((beta / 2.0) * c / (mu + lam_eff))  # (k,) solution in the Lanczos basis
    Qm = torch.stack(Q[:k])  # (k, n)
    theta = y.to(device=d.device, dtype=d.dtype) @ Qm
    residual = abs(betas[k - 1] * float(y[-1])) / ((beta / 2.0) * dnorm)
    j_theta = op.jvp(theta)
    tgt = float((j_theta.double() ** 2).sum()) / op.n_inputs
    return GeoQPSolution(theta, lam, tgt, j_theta, residual, "cg")


@full_float32()
def solve_geo_qp(model: nn.Module, inputs: torch.Tensor, d: torch.Tensor, beta: float = 1.0, eps: float = 0.01,
                 solver: str = "exact", output_space: OutputSpace = "logits", cg_iters: int = 20,
                 return_info: bool = False, factor: GramFactor | None = None):
    """Solve eq. 6 at the model's current weights w for the direction ``d = w_a − w``.

    Args:
        model: network; g is averaged over ``inputs (N, ...)`` in ``output_space``.
        d: ``(n,)`` flat vector toward the target, parameters_to_vector order.
        beta, eps: eq. 6 (β > 0; trust region θ^T θ ≤ ε, ε > 0).
        solver: ``"exact"`` (Gram / Woodbury) or ``"cg"`` (Lanczos-CG on g v products, ``cg_iters`` products).
        return_info: return a `GeoQPSolution` instead of θ alone.
        factor: a precomputed `GramFactor` at the same weights and inputs (exact solver only).

    Returns:
        θ ``(n,)`` (or the `GeoQPSolution`). The step of eq. 7 is Δw = η θ / ‖θ‖.
    """
    _check_qp_args(beta, eps)
    _check_vector(model, d, "d")
    if solver not in ("exact", "cg"):
        raise InputError(f"unknown solver {solver!r}; valid solvers: cg, exact")
    if not torch.isfinite(d).all():
        raise NonFiniteError("the direction to the target d = w_a - w holds NaN/Inf; check the target network")
    if float(d.norm()) == 0.0:
        raise InputError("d = w_a - w is zero: the network already is at the target")
    if solver == "exact":
        sol = _solve_exact(factor or GramFactor.compute(model, inputs, output_space), d, beta, eps)
    else:
        sol = _solve_lanczos(MetricOperator(model, inputs, output_space), d, beta, eps, cg_iters)
    if not torch.isfinite(sol.theta).all():
        raise NonFiniteError("the Geo direction θ is NaN/Inf; reduce eta or check the weights for NaN/Inf")
    return sol if return_info else sol.theta
