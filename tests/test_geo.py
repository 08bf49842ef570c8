
import pytest
import torch

from geodesic_core import (FixedTarget, GeoConfig, InputError, NonFiniteError, SparseTarget, flat_params, geo,
                           param_slices, set_flat_params, sparsity)
from geodesic_core.targets import WeightedTarget
from conftest import tiny_mlp


def _pool(n=64, seed=0):
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_traversal_reaches_fixed_target_and_stops(solver):
    model = tiny_mlp(0)
    w_a = flat_params(tiny_mlp(1))
    infos = []
    cfg = GeoConfig(eta=0.05, max_steps=500, metric_batch=16, anchor=0.0, solver=solver, cg_iters=40)
    res = geo(model, FixedTarget(w_a), _pool(), cfg, callbacks=[infos.append])
    assert res.stop_reason == "reached"
    assert torch.equal(flat_params(model), w_a) and res.distance == 0.0
    assert res.steps == len(infos) < 500
    dists = [i.distance for i in infos]
    assert dists[-1] <= cfg.eta < dists[0]
    lengths = [i.path_length for i in infos]
    assert all(b >= a for a, b in zip(lengths, lengths[1:])) and res.path_length == pytest.approx(lengths[-1])


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_weighted_target_aims_eq6_along_the_weighted_difference_and_still_lands_on_w_a(solver):
    """WeightedTarget: eq. 6 is solved for a ⊙ d scaled to |d| (a = 1 is FixedTarget, to the bit); weights on one
    part of the network close that part's distance first; the traversal still stops on |d| and lands on w_a."""
    w_a = flat_params(tiny_mlp(1))
    n = w_a.numel()
    d = torch.randn(n, generator=torch.Generator().manual_seed(4))
    a = torch.ones(n)
    a[: n // 2] = 50.0
    aimed = WeightedTarget(w_a, weights=a).aim(d)
    assert float(aimed.norm()) == pytest.approx(float(d.norm()), rel=1e-5)
    assert torch.nn.functional.cosine_similarity(aimed, a * d, dim=0) == pytest.approx(1.0, abs=1e-5)
    cfg = GeoConfig(eta=0.05, max_steps=8, metric_batch=16, anchor=0.5, solver=solver, cg_iters=40)
    ends = {}
    for name, target in [("fixed", FixedTarget(w_a)), ("ones", WeightedTarget(w_a, weights=torch.ones(n))),
                         ("half", WeightedTarget(w_a, weights=a))]:
        model = tiny_mlp(0)
        res = geo(model, target, _pool(), cfg)
        assert res.steps == 8 and res.distance == pytest.approx(float((w_a - flat_params(model)).norm()))
        ends[name] = flat_params(model)
    assert torch.equal(ends["fixed"], ends["ones"])
    start = flat_params(tiny_mlp(0))
    part = slice(0, n // 2)
    closed = {k: 1 - float((w_a[part] - w[part]).norm() / (w_a[part] - start[part]).norm()) for k, w in ends.items()}
    assert closed["half"] > 1.5 * closed["fixed"] > 0  # the weighted half's distance closes faster
    model = tiny_mlp(0)
    res = geo(model, WeightedTarget(w_a, weights=a), _pool(), cfg.model_copy(update={"max_steps": 500, "anchor": 0.0,
                                                                                 "eta": 0.2}))
    assert res.stop_reason == "reached" and torch.equal(flat_params(model), w_a)
    for bad in (torch.ones(n - 1), -a, a * float("nan")):
        with pytest.raises(InputError, match="weights"):
            WeightedTarget(w_a, weights=bad)


def test_every_step_has_length_eta_without_anchor():
    model = tiny_mlp(0)
    w_a = flat_params(tiny_mlp(1))
    before = []
    cfg = GeoConfig(eta=0.02, max_steps=5, metric_batch=16, anchor=0.0)
    prev = flat_params(model)

    def record(info):
        before.append(float((info.weights - record.prev).norm()))
        record.prev = info.weights.clone()

    record.prev = prev
    res = geo(model, FixedTarget(w_a), _pool(), cfg, callbacks=[record])
    assert res.stop_reason == "max_steps" and res.steps == 5
    assert before == pytest.approx([0.02] * 5, rel=1e-4)


def test_oscillation_criterion_stops_when_distance_stalls():
    model = tiny_mlp(0)
    direction = torch.randn(flat_params(model).numel(), generator=torch.Generator().manual_seed(3))

    def receding(w, step):  # a target that keeps its distance: no progress is possible
        return w + direction

    receding.refresh_every = 1
    cfg = GeoConfig(eta=0.01, max_steps=1000, metric_batch=8, patience=7, anchor=0.0)
    res = geo(model, receding, _pool(), cfg)
    assert res.stop_reason == "oscillation"
    assert res.steps <= 9


def test_anchor_keeps_outputs_closer_to_start():
    pool = _pool(128)
    with torch.no_grad():
        y0 = tiny_mlp(0)(pool)
    drift = {}
    for a in (0.0, 0.5, 1.0):
        model = tiny_mlp(0)
        cfg = GeoConfig(eta=0.05, max_steps=40, metric_batch=32, anchor=a)
        res = geo(model, FixedTarget(flat_params(tiny_mlp(1))), pool, cfg)
        assert res.stop_reason == "max_steps"
        with torch.no_grad():
            drift[a] = float((model(pool) - y0).pow(2).mean())
    assert drift[1.0] < drift[0.5] < 0.01 * drift[0.0]


def test_anchor_never_undoes_the_sparse_targets_zeros():
    model = tiny_mlp(0)
    slices = param_slices(model)
    seen = []
    target = SparseTarget(slices, 50, refresh_every=1000)  # fixed zero set: distance must shrink every step
    geo(model, target, _pool(), GeoConfig(eta=0.02, max_steps=10, metric_batch=16, anchor=1.0),
        callbacks=[lambda i: seen.append(i.distance)])
    assert all(b < a for a, b in zip(seen, seen[1:]))


def test_sparse_traversal_ends_on_hyperplane_when_reached():
    model = tiny_mlp(0)
    slices = param_slices(model)
    cfg = GeoConfig(eta=0.05, max_steps=2000, metric_batch=16, anchor=0.0)
    res = geo(model, SparseTarget(slices, 50, refresh_every=5), _pool(), cfg)
    assert res.stop_reason == "reached"
    assert sparsity(flat_params(model), slices) == pytest.approx(0.5, abs=1 / 48)


def test_nonfinite_inputs_stop_with_clear_error_and_keep_last_good_weights():
    model = tiny_mlp(0)
    w0 = flat_params(model)
    pool = _pool()
    pool[:] = float("nan")
    with pytest.raises(NonFiniteError):
        geo(model, FixedTarget(flat_params(tiny_mlp(1))), pool, GeoConfig(metric_batch=8, anchor=0.0))
    assert torch.equal(flat_params(model), w0)


def test_mismatched_target_is_rejected():
    model = tiny_mlp(0)
    with pytest.raises(InputError, match="same architecture"):
        geo(model, FixedTarget(torch.zeros(3)), _pool(), GeoConfig(metric_batch=8))


def test_config_validation():
    from pydantic import ValidationError

    for bad in ({"eta": 0}, {"eps": -1}, {"beta": 0}, {"max_steps": 0}, {"metric_batch": 0}, {"solver": "x"},
                {"temperature": 0}):
        with pytest.raises(ValidationError):
            GeoConfig(**bad)
    with pytest.raises(ValidationError, match="only applies to the softmax output space"):
        GeoConfig(temperature=4.0)


def test_temperature_is_the_softmax_of_the_tempered_logits_throughout_the_traversal():
    """geo(..., output_space=softmax, temperature=T) is the traversal of the network whose logits are divided by
    T (metric, anchor and corrector alike), step for step, with the same weights."""
    from geodesic_core.metric import Tempered, tempered

    base = tiny_mlp(0)
    assert tempered(base, 1.0) is base
    x = _pool(8)
    torch.testing.assert_close(tempered(base, 4.0)(x), base(x) / 4.0)
    w_a = flat_params(tiny_mlp(1)) * 3
    cfg = GeoConfig(eta=0.05, max_steps=30, metric_batch=16, anchor=1.0, distill_steps=1, output_space="softmax")
    a, b = tiny_mlp(0), tiny_mlp(0)
    geo(a, FixedTarget(w_a), _pool(), cfg.model_copy(update={"temperature": 4.0}))
    geo(Tempered(b, 4.0), FixedTarget(w_a), _pool(), cfg)
    assert torch.equal(flat_params(a), flat_params(b))


@pytest.mark.parametrize("temperature,lr", [(0.0, 0.01), (2.0, 0.3)])
def test_distillation_corrector_reduces_drift_and_respects_target_zeros(temperature, lr):
    """The first-order corrector (squared logit distance, or T² KL between the softmaxes at T) pulls the outputs
    back toward the anchor's, measured in its own loss, and never moves the weights the target prunes."""
    from geodesic_core.train import distillation_loss

    pool = _pool(256)
    with torch.no_grad():
        y0 = tiny_mlp(0)(pool)
    drift = {}
    for steps in (0, 10):
        model = tiny_mlp(0)
        slices = param_slices(model)
        target = SparseTarget(slices, 50, refresh_every=1000)
        cfg = GeoConfig(eta=0.02, max_steps=15, metric_batch=16, anchor=0.0, distill_steps=steps, distill_lr=lr,
                        distill_batch=64, distill_temperature=temperature)
        seen = []
        geo(model, target, pool, cfg, anchor=tiny_mlp(0), callbacks=[lambda i: seen.append(i.distance)])
        assert all(b < a for a, b in zip(seen, seen[1:]))  # the corrector never moves the pruned weights
        with torch.no_grad():
            drift[steps] = float(distillation_loss(model(pool), y0, temperature))
    assert drift[10] < 0.5 * drift[0]


def test_distiller_steps_are_bounded_by_eta():
    """A distillation learning rate far too large for the network must not blow the path up: each corrector
    step is at most η long, so a Geo step (η) plus s distill steps moves at most (1 + s) η."""
    model = tiny_mlp(0)
    w0 = flat_params(model)
    cfg = GeoConfig(eta=0.05, max_steps=5, metric_batch=16, anchor=0.0, distill_steps=3, distill_lr=1e4, patience=100)
    seen = []
    geo(model, FixedTarget(flat_params(tiny_mlp(1))), _pool(), cfg, callbacks=[lambda i: seen.append(i.weights.clone())])
    prev = w0
    for w in seen:
        assert torch.isfinite(w).all()
        assert float((w - prev).norm()) <= (1 + cfg.distill_steps) * cfg.eta + 1e-5
        prev = w


def test_distill_radius_bounds_the_correctors_whole_move():
    """``distill_radius`` r: the corrector's whole move after a Geo step is at most r η, so the path moves at
    most (1 + r) η per step; without it the same corrector, pulling toward another network's outputs, moves
    farther (the bound binds)."""
    moves = {}
    for radius in (0.0, 1.0):
        model = tiny_mlp(0)
        cfg = GeoConfig(eta=0.05, max_steps=5, metric_batch=16, anchor=0.0, distill_steps=5, distill_lr=1.0,
                        patience=100, distill_radius=radius)
        seen = [flat_params(model)]
        geo(model, FixedTarget(flat_params(tiny_mlp(1))), _pool(), cfg, anchor=tiny_mlp(2),
            callbacks=[lambda i: seen.append(i.weights.clone())])
        moves[radius] = max(float((b - a).norm()) for a, b in zip(seen, seen[1:]))
    assert moves[1.0] <= 2 * 0.05 + 1e-5
    assert moves[0.0] > 3 * 0.05


def test_batchnorm_statistics_follow_the_weights_when_asked():
    """``bn_every``: the running statistics are re-estimated at the current weights (the network the metric and
    the anchor see is the network at w); 0 keeps the start network's statistics."""
    import copy

    from conftest import tiny_cnn_bn
    from geodesic_core import recompute_bn, set_flat_params

    pool = torch.randn(40, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    w_a = flat_params(tiny_cnn_bn(1))
    start = tiny_cnn_bn(0)
    frozen, fresh = copy.deepcopy(start), copy.deepcopy(start)
    cfg = GeoConfig(eta=0.05, max_steps=4, metric_batch=8, anchor=0.0, solver="cg", cg_iters=5, bn_samples=64)
    geo(frozen, FixedTarget(w_a), pool, cfg.model_copy(update={"bn_every": 0}))
    assert torch.equal(frozen[1].running_mean, start[1].running_mean)
    seen = []
    geo(fresh, FixedTarget(w_a), pool, cfg.model_copy(update={"bn_every": 1}), callbacks=[lambda i: seen.append(
        i.weights.clone())])
    # refreshed at the start of the last step: the statistics of the weights after the step before it
    ref = copy.deepcopy(start)
    set_flat_params(ref, seen[-2])
    recompute_bn(ref, pool)
    assert torch.allclose(fresh[1].running_mean, ref[1].running_mean, atol=1e-6)
    assert torch.allclose(fresh[1].running_var, ref[1].running_var, atol=1e-6)
    assert not torch.allclose(fresh[1].running_mean, start[1].running_mean)


def test_anchor_is_read_with_statistics_estimated_like_the_models():
    """With ``bn_every`` > 0 the model's batch-norm statistics are re-estimated on the pool from the first step,
    and so are the anchor's (on the same inputs, for the traversal's duration): a start network whose stored
    statistics are stale begins with no residual against its own anchor, so the first corrected step moves about
    η, not the many η of correcting the two estimates' difference (``bn_anchor`` False: the stored statistics, as
    before). The anchor's own statistics come back after."""
    import copy

    from conftest import tiny_cnn_bn

    pool = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 + 1
    start = tiny_cnn_bn(0)  # stored statistics unrelated to the pool's: as stale as they get
    anchor = copy.deepcopy(start)
    saved = {k: v.clone() for k, v in anchor.state_dict().items()}
    cfg = GeoConfig(eta=0.02, max_steps=1, metric_batch=32, anchor=1.0, solver="cg", cg_iters=10, bn_every=10,
                    bn_samples=64)
    moves = {}
    for bn_anchor in (True, False):
        model = copy.deepcopy(start)
        geo(model, FixedTarget(flat_params(tiny_cnn_bn(1))), pool, cfg.model_copy(update={"bn_anchor": bn_anchor}),
            anchor=anchor)
        moves[bn_anchor] = float((flat_params(model) - flat_params(start)).norm())
        for k, v in anchor.state_dict().items():
            assert torch.equal(v, saved[k]), k
        assert anchor[1].momentum == start[1].momentum
    assert moves[True] < 1.5 * cfg.eta
    assert moves[False] > 2 * cfg.eta  # the stored statistics: the correction chases the two estimates' difference


def test_anchor_correction_is_bounded_by_its_radius():
    """``anchor_radius`` = r: the Gauss-Newton correction toward the anchor is at most r·η long, so with the
    Geo step (η) a step moves at most (1 + r) η; unbounded (0), a far anchor's correction is many times η
    (the instability that wrecked the last structured stage on CIFAR-10)."""
    def longest_step(radius):
        model, w_prev, longest = tiny_mlp(0), flat_params(tiny_mlp(0)), [0.0]

        def record(info):
            longest[0] = max(longest[0], float((info.weights - record.prev).norm()))
            record.prev = info.weights.clone()

        record.prev = w_prev
        cfg = GeoConfig(eta=0.01, max_steps=6, metric_batch=16, anchor=1.0, anchor_radius=radius, patience=100)
        geo(model, FixedTarget(flat_params(tiny_mlp(1))), _pool(), cfg, anchor=tiny_mlp(2), callbacks=[record])
        return longest[0], cfg.eta

    unbounded, eta = longest_step(0.0)
    assert unbounded > 3 * eta
    for r in (0.5, 1.0):
        bounded, _ = longest_step(r)
        assert bounded <= (1 + r) * eta + 1e-6


@pytest.mark.parametrize("kw", [{"anchor": 1.0}, {"anchor": 0.0, "distill_steps": 3, "distill_lr": 0.5}])
def test_keep_progress_lets_correctors_move_sideways_never_back(kw):
    """``keep_progress``: after every step the distance to the target is at most the predictor's (w + η θ/‖θ‖),
    so it falls by about η each step whatever the correctors do; without it, an anchor behind the start (its
    weights the start's reflected away from the target) pulls the traversal back. Both correctors: the
    Gauss-Newton one and distillation."""
    target = flat_params(tiny_mlp(1))

    def distances(keep):
        model, out = tiny_mlp(0), []
        w0 = flat_params(model)
        behind = tiny_mlp(0)
        set_flat_params(behind, 2 * w0 - target)
        cfg = GeoConfig(eta=0.01, max_steps=8, metric_batch=16, patience=100, keep_progress=keep, **kw)
        geo(model, FixedTarget(target), _pool(), cfg, anchor=behind,
            callbacks=[lambda info: out.append(float((target - info.weights).norm()))])
        return [float((target - w0).norm())] + out, cfg.eta

    kept, eta = distances(True)
    assert all(b <= a - 0.9 * eta for a, b in zip(kept, kept[1:]))  # an advance of about η every step
    free, _ = distances(False)
    assert free[-1] > free[0]  # unconstrained, the correctors gave more ground than the steps made


def test_matrix_free_cg_solves_and_stops_at_a_direction_without_curvature():
    """The anchor's Gauss-Newton correction solves (J^T J + μ I) δ = -J^T r by CG on products. On a positive
    definite system it converges; where float32 round-off leaves a direction with zero or negative curvature it
    stops with the iterate so far instead of dividing by that curvature (the old guard divided by 1e-30 and sent
    the correction, and the weights, to Inf)."""
    import importlib

    _cg = importlib.import_module("geodesic_core.geo")._cg
    g = torch.Generator().manual_seed(0)
    m = torch.randn(20, 20, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(20, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    assert torch.allclose(_cg(lambda v: a @ v, b, 60), torch.linalg.solve(a, b), atol=1e-8)
    flat = torch.diag(torch.tensor([1.0, 0.0, -1e-7], dtype=torch.float64))  # b's second half: no curvature
    x = _cg(lambda v: flat @ v, torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64), 5)
    assert torch.isfinite(x).all() and float(x.norm()) == 0.0
    x = _cg(lambda v: flat @ v, torch.tensor([1.0, 1e-3, 0.0], dtype=torch.float64), 5)
    assert torch.isfinite(x).all() and abs(float(x[0]) - 1.0) < 1e-3 and float(x.norm()) < 2.0
    zero = _cg(lambda v: a @ v, torch.zeros(20, dtype=torch.float64), 5)  # nothing to correct (was 0/0: NaN)
    assert torch.isfinite(zero).all() and float(zero.norm()) == 0.0


def test_cg_traversal_with_the_traced_pushforward_equals_the_double_vjp(monkeypatch):
    """The cg solver's products J v come from one traced graph pointed at each step's weights, batch and
    re-estimated batch-norm statistics (`TracedPushforward`); the traversal is the one the double vjp gives, step
    for step, to float32 rounding (anchor, keep_progress and the distillation corrector all read J v)."""
    import copy

    from conftest import tiny_cnn_bn
    from geodesic_core import metric

    pool = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    cfg = GeoConfig(eta=0.05, max_steps=6, metric_batch=16, anchor=1.0, solver="cg", cg_iters=8, bn_every=2,
                    bn_samples=32, distill_steps=2, distill_batch=16, keep_progress=True)
    target = FixedTarget(flat_params(tiny_cnn_bn(1)))
    paths = {}
    calls = []
    real_at = metric.TracedPushforward.at
    monkeypatch.setattr(metric.TracedPushforward, "at", lambda self, *a: calls.append(1) or real_at(self, *a))
    for mode in ("traced", "double_vjp"):
        if mode == "double_vjp":
            monkeypatch.setattr(metric.TracedPushforward, "at", lambda self, *a: False)
        seen = []
        geo(copy.deepcopy(tiny_cnn_bn(0)), target, pool, cfg, callbacks=[lambda i: seen.append(i.weights.clone())])
        paths[mode] = torch.stack(seen)
    assert len(calls) == cfg.max_steps  # one point per step
    assert paths["traced"].shape == paths["double_vjp"].shape
    moved = (paths["double_vjp"][-1] - flat_params(tiny_cnn_bn(0))).norm()
    assert float((paths["traced"] - paths["double_vjp"]).norm(dim=1).max()) < 1e-4 * float(moved)


class _Overflowing(torch.nn.Module):
    """An anchor whose outputs overflow: every corrector that reads them produces NaN/Inf."""

    def forward(self, x):
        return torch.full((x.shape[0], 4), float("inf"))  # tiny_cnn_bn has 4 outputs


@pytest.mark.parametrize("anchor, distill_steps, where", [(1.0, 0, "the output anchor's correction"),
                                                          (0.0, 3, "the distillation corrector (its gradient is "
                                                                   "NaN/Inf at its step 1 of 3 (loss inf")])
def test_a_nonfinite_step_says_which_part_failed_and_how_large_the_outputs_are(anchor, distill_steps, where):
    """The GPU's ResNet-164 stopped on 'NaN/Inf weights' with nothing else to go on: the error now names the part of
    the step that failed and the logits at the last good weights (stored and re-estimated batch-norm statistics)."""
    from conftest import tiny_cnn_bn

    model = tiny_cnn_bn(0)
    w0 = flat_params(model)
    pool = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    cfg = GeoConfig(metric_batch=8, eta=0.05, anchor=anchor, distill_steps=distill_steps, bn_every=5)
    with pytest.raises(NonFiniteError) as err:
        geo(model, FixedTarget(flat_params(tiny_cnn_bn(1))), pool, cfg, anchor=_Overflowing())
    msg = str(err.value)
    assert f"Geo step 1 produced NaN/Inf weights in {where}" in msg
    assert "largest |logit| at the last good weights" in msg and "with the stored batch-norm statistics" in msg
    assert "re-estimated on this batch (0 steps after the last re-estimation)" in msg
    assert "bn_every" in msg
    assert "(and after 2 retries, each with half the step, down to eta = 0.0125" in msg  # GeoConfig's default 2
    assert torch.equal(flat_params(model), w0)  # the last good weights, not a corrector's intermediate


@pytest.mark.parametrize("solver, part", [("exact", "direction"), ("cg", "direction"), ("exact", "distiller"),
                                          ("exact", "gram")])
def test_a_step_that_overflows_once_is_taken_again_shorter_from_the_last_good_weights(monkeypatch, solver, part):
    """`GeoConfig.nonfinite_retries`: a step whose direction or corrected weights come out NaN/Inf is taken again from
    the last good weights with half the step (batch-norm statistics re-estimated there, a fresh batch, the
    corrector's momentum restarted); the traversal goes on and says how many steps it retried. With 0 retries the
    same overflow stops it."""
    import sys

    from conftest import tiny_cnn_bn

    geo_mod = sys.modules["geodesic_core.geo"]  # (the package exports the function `geo` under the module's name)
    pool = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    target = FixedTarget(flat_params(tiny_cnn_bn(1)))
    fail_on = {2}  # the second step overflows once

    calls = {"solve": 0, "distill": 0}
    if part == "direction":
        name = "_solve_exact" if solver == "exact" else "_solve_lanczos"
        real = getattr(geo_mod, name)

        def solve(*a):
            calls["solve"] += 1
            sol = real(*a)
            return sol._replace(theta=sol.theta * float("nan")) if calls["solve"] in fail_on else sol

        monkeypatch.setattr(geo_mod, name, solve)
    elif part == "gram":  # the Gram matrix J J^T at the step's weights overflows (stale statistics, say)
        real_compute = geo_mod.GramFactor.compute

        def compute(*a):
            calls["solve"] += 1
            if calls["solve"] in fail_on:
                raise NonFiniteError("non-finite Gram matrix J J^T; the network's weights or outputs hold NaN/Inf")
            return real_compute(*a)

        monkeypatch.setattr(geo_mod.GramFactor, "compute", compute)
    else:
        real_run = geo_mod._Distiller.run

        def run(self, w, w_a, eta):
            calls["distill"] += 1
            out = real_run(self, w, w_a, eta)
            return out * float("inf") if calls["distill"] in fail_on else out

        monkeypatch.setattr(geo_mod._Distiller, "run", run)
    cfg = GeoConfig(metric_batch=8, eta=0.05, anchor=0.0, solver=solver, cg_iters=8, bn_every=5, bn_samples=32,
                    distill_steps=2 if part == "distiller" else 0, distill_batch=8, max_steps=4)
    model, infos = tiny_cnn_bn(0), []
    moved = []
    prev = flat_params(model)

    def record(info):
        nonlocal prev
        moved.append(float((info.weights - prev).norm()))
        prev = info.weights.clone()
        infos.append(info)

    res = geo(model, target, pool, cfg, callbacks=[record])
    assert res.steps == 4 and res.retries == 1
    assert [i.retries for i in infos] == [0, 1, 0, 0]
    assert torch.isfinite(flat_params(model)).all()
    if part != "distiller":  # no corrector: each step is exactly eta long, the retried one eta / 2
        assert moved == pytest.approx([0.05, 0.025, 0.05, 0.05], rel=1e-4)
    calls.update(solve=0, distill=0)
    with pytest.raises(NonFiniteError, match="Geo step 2: " if part == "gram" else "Geo step 2") as err:
        geo(tiny_cnn_bn(0), target, pool, cfg.model_copy(update={"nonfinite_retries": 0}))
    assert "retries" not in str(err.value)


def test_anchor_cache_computes_each_pool_input_once_and_equals_the_anchor():
    """`AnchorCache`: the correctors' y* on pool[idx] are the anchor's outputs (a tempered mixture of two networks,
    mixed at the current t; logits and softmax), each pool input run through each network once; over its memory
    bound the cache is off and the anchor runs on every batch, with the same outputs."""
    from conftest import tiny_cnn_bn
    from geodesic_core.connect import InterpolatedOutputs
    from geodesic_core.geo import AnchorCache, _anchor_outputs
    from geodesic_core.metric import tempered

    pool = torch.randn(40, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    anchor = tempered(InterpolatedOutputs(tiny_cnn_bn(0), tiny_cnn_bn(1)), 2.0)
    cache, off = AnchorCache(anchor, pool), AnchorCache(anchor, pool, max_floats=0)
    first, overlap = torch.arange(0, 20), torch.arange(10, 30).flip(0)
    for t in (0.3, 0.8):
        anchor.model.t = t
        for idx in (first, overlap, first):
            for space in ("logits", "softmax"):
                want = _anchor_outputs(anchor, pool[idx], space)
                assert torch.allclose(cache(idx, pool[idx], space), want, atol=1e-6)
                assert torch.allclose(off(idx, pool[idx], space), want, atol=1e-6)
    # two networks: the first batch runs each once, the overlap each once more on its 10 new inputs, then nothing
    assert cache.calls == 4 and not cache.off
    assert off.off and off.calls > 4


@pytest.mark.parametrize("solver", ["cg", "exact"])
def test_traversal_with_the_anchor_cache_is_the_one_that_runs_the_anchor_every_batch(monkeypatch, solver):
    """The output anchor and the distillation corrector read the anchor's outputs from the `AnchorCache`: the
    traversal (batch-norm re-estimation with the anchor read at its own re-estimated statistics, the connect anchor
    whose t follows the progress, keep_progress) is the same step for step, with far fewer anchor forward passes."""
    import copy
    import importlib

    from conftest import tiny_cnn_bn
    from geodesic_core.connect import InterpolatedOutputs, connect_segment

    geo_mod = importlib.import_module("geodesic_core.geo")  # the module (the package's `geo` is the function)

    pool = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    w_b = flat_params(tiny_cnn_bn(1))
    cfg = GeoConfig(eta=0.05, max_steps=8, metric_batch=16, anchor=1.0, solver=solver, cg_iters=8, bn_every=3,
                    bn_samples=32, distill_steps=3, distill_batch=16, keep_progress=True)
    real = geo_mod.AnchorCache
    paths, forwards = {}, {}
    for mode in ("cached", "every_batch"):
        if mode == "every_batch":
            monkeypatch.setattr(geo_mod, "AnchorCache", lambda anchor, pool: real(anchor, pool, max_floats=0))
        anchor = InterpolatedOutputs(tiny_cnn_bn(0), tiny_cnn_bn(1))
        count = [0]
        anchor.net_a.register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1))
        seen = []
        start = tiny_cnn_bn(0)
        dist = float((flat_params(start) - w_b).norm())
        connect_segment(copy.deepcopy(start), w_b, pool, cfg, anchor=anchor, total_distance=dist,
                        callbacks=[lambda i: seen.append(i.weights.clone())])
        paths[mode], forwards[mode] = torch.stack(seen), count[0]
    assert paths["cached"].shape == paths["every_batch"].shape == (cfg.max_steps, w_b.numel())
    moved = float((paths["every_batch"][-1] - flat_params(tiny_cnn_bn(0))).norm())
    assert float((paths["cached"] - paths["every_batch"]).norm(dim=1).max()) < 1e-4 * moved
    # uncached: one anchor pass per step and per distillation batch (+ the statistics); cached: only while the
    # 64 pool inputs are still being seen
    assert forwards["every_batch"] >= cfg.max_steps * (1 + cfg.distill_steps)
    assert forwards["cached"] < forwards["every_batch"] / 2
