import math

import pytest
import torch
from torch.func import jacrev

from geodesic_core import InputError, NonFiniteError, flat_params, solve_geo_qp
from geodesic_core.metric import eval_mode, output_fn
from geodesic_core.solve import solve_multiplier


def dense_metric(model, x, space="logits"):
    w = flat_params(model)
    with eval_mode(model):
        J = jacrev(output_fn(model, x, space))(w).reshape(-1, w.numel()).double()
    return J.T @ J / x.shape[0]


def dense_trust_region(g, d, beta, eps):
    """Reference: eigendecomposition of the dense g and bisection on lambda (independent of the solver)."""
    mu, V = torch.linalg.eigh(g)
    mu = mu.clamp_min(0)
    c = V.T @ d

    def norm2(lam):
        return float(((beta / 2) ** 2 * c ** 2 / (mu + lam) ** 2).sum())

    lo, hi = 1e-12, 1e6
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if norm2(mid) > eps else (lo, mid)
    lam = hi
    return (beta / 2) * V @ (c / (mu + lam)), lam


def kkt_residuals(g, theta, lam, d, beta, eps):
    stat = (2 * (g @ theta) + 2 * lam * theta - beta * d).norm() / (beta * d.norm())
    feas = abs(float(theta @ theta) - eps) / eps  # active constraint: equality
    return float(stat), feas


@pytest.mark.parametrize("space", ["logits", "softmax"])
@pytest.mark.parametrize("beta,eps", [(1.0, 0.01), (0.3, 1e-4), (5.0, 2.0)])
def test_exact_solver_matches_dense_trust_region_and_kkt(tiny, space, beta, eps):
    model, x = tiny
    g = dense_metric(model, x, space)
    d = torch.randn(g.shape[0], generator=torch.Generator().manual_seed(2))
    sol = solve_geo_qp(model, x, d, beta, eps, solver="exact", output_space=space, return_info=True)
    theta = sol.theta.double()
    stat, feas = kkt_residuals(g, theta, sol.lam, d.double(), beta, eps)
    assert sol.lam > 0
    assert stat < 1e-4 and feas < 1e-4
    ref, ref_lam = dense_trust_region(g, d.double(), beta, eps)
    assert (theta - ref).norm() / ref.norm() < 1e-4
    assert sol.lam == pytest.approx(ref_lam, rel=1e-4)
    assert sol.theta_g_theta == pytest.approx(float(theta @ g @ theta), rel=1e-4)


def test_cg_solver_agrees_with_exact(tiny):
    model, x = tiny
    d = torch.randn(flat_params(model).numel(), generator=torch.Generator().manual_seed(4))
    ex = solve_geo_qp(model, x, d, 1.0, 0.01, solver="exact", return_info=True)
    cg = solve_geo_qp(model, x, d, 1.0, 0.01, solver="cg", cg_iters=80, return_info=True)
    assert (cg.theta - ex.theta).norm() / ex.theta.norm() < 1e-4
    assert cg.residual < 1e-4
    few = solve_geo_qp(model, x, d, 1.0, 0.01, solver="cg", cg_iters=2, return_info=True)
    assert few.residual > cg.residual  # the residual reports an unconverged solve


def test_direction_prefers_low_metric_directions(tiny):
    """The Geo direction trades progress toward d against functional change: θ^T g θ per unit length is
    below that of the straight direction d."""
    model, x = tiny
    g = dense_metric(model, x)
    d = torch.randn(g.shape[0], generator=torch.Generator().manual_seed(7)).double()
    theta = solve_geo_qp(model, x, d.float(), 1.0, 1e-4).double()
    t, u = theta / theta.norm(), d / d.norm()
    assert float(t @ g @ t) < float(u @ g @ u)
    assert float(t @ u) > 0  # still moves toward the target


def test_multiplier_root_is_exact():
    lam = solve_multiplier(lambda l: 4.0 / (1.0 + l) ** 2, 0.01, 1e3)
    assert 4.0 / (1.0 + lam) ** 2 == pytest.approx(0.01, rel=1e-10)
    assert solve_multiplier(lambda l: 1e-3, 0.01, 1.0) == 0.0  # inactive constraint: lambda = 0


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": 0.0}, "eps"), ({"eps": -1.0}, "eps"), ({"beta": 0.0}, "beta"),
    ({"solver": "newton"}, "valid solvers"),
])
def test_bad_arguments_are_clear_errors(tiny, kwargs, match):
    model, x = tiny
    d = torch.ones(flat_params(model).numel())
    args = {"beta": 1.0, "eps": 0.01, "solver": "exact", **kwargs}
    with pytest.raises(InputError, match=match):
        solve_geo_qp(model, x, d, **args)


def test_mismatched_and_nonfinite_directions(tiny):
    model, x = tiny
    n = flat_params(model).numel()
    with pytest.raises(InputError, match="expected"):
        solve_geo_qp(model, x, torch.ones(n + 1))
    d = torch.ones(n)
    d[0] = float("nan")
    with pytest.raises(NonFiniteError):
        solve_geo_qp(model, x, d)
