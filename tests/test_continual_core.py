"""Continual-learning core: scenarios, the EWC Fisher and penalties, the metrics, and the geodesic stage on real
permuted-MNIST data."""

import copy

import pytest
import torch

from geodesic_core import InputError, flat_params, train
from geodesic_core.config import GeoConfig, TrainConfig
from geodesic_core.continual import ContinualConfig
from geodesic_core.continual import (QuadraticPull, average_accuracy, backward_transfer, build_scenario_model,
                                     check_scenario_name, completed_heads, continual_geodesic, distill_head,
                                     fisher_diagonal, fisher_target, get_scenario, head_weights, linear_scan,
                                     load_task, mixed_start, pca_2d, polish_stage, task_accuracies,
                                     task_view)
from geodesic_core.targets import FixedTarget, WeightedTarget
from geodesic_core.data import Split
from geodesic_core.metric import linear_path

from conftest import tiny_cnn_bn, tiny_mlp


def test_scenarios_and_their_tasks(data_dir):
    s = get_scenario("permuted-mnist")
    tasks = s.tasks(3)
    assert [t.permutation for t in tasks] == [0, 1, 2] and all(t.label_offset == 0 for t in tasks)
    a, b = (load_task(t, False, data_dir) for t in tasks[:2])
    assert torch.equal(a.y, b.y) and not torch.equal(a.x, b.x)  # same labels, permuted pixels
    assert torch.allclose(a.x.flatten(1).sort(1).values, b.x.flatten(1).sort(1).values)
    shared = get_scenario("mnist-fashion")  # the paper's: one 10-way head, no task identity at test time
    assert [t.head for t in shared.tasks(2)] == [None, None] and build_scenario_model(shared)(a.x[:2]).shape == (2, 10)
    assert load_task(shared.tasks(2)[1], False, data_dir).y.max() == 9
    mf = get_scenario("mnist-fashion-heads")
    fashion = load_task(mf.tasks(2)[1], False, data_dir)
    assert fashion.y.min() == 0 and fashion.y.max() == 9 and mf.tasks(2)[1].head == (10, 20)
    net = build_scenario_model(mf)
    assert net(fashion.x[:2]).shape == (2, 20)
    view = task_view(net, mf.tasks(2)[1])  # the second task's head: outputs 10-19, the same parameters
    torch.testing.assert_close(view(fashion.x[:2]), net(fashion.x[:2])[:, 10:])
    assert [p.data_ptr() for p in view.parameters()] == [p.data_ptr() for p in net.parameters()]


@pytest.mark.parametrize("bad,match", [("cifar", "valid scenarios: mnist_fashion, mnist_fashion_heads, permuted_mnist")])
def test_unknown_scenario_lists_valid_ones(bad, match):
    with pytest.raises(InputError, match=match):
        check_scenario_name(bad)


def test_task_count_is_checked():
    with pytest.raises(InputError, match="at least 2 tasks"):
        get_scenario("permuted_mnist").tasks(1)
    with pytest.raises(InputError, match="has 2 tasks"):
        get_scenario("mnist_fashion").tasks(3)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        ContinualConfig(tasks=1)
    with pytest.raises(ValueError, match="has 2 tasks"):
        ContinualConfig(scenario="mnist_fashion", tasks=3)
    with pytest.raises(ValueError, match="valid methods"):
        ContinualConfig(methods=["geodesic", "replay"])
    assert ContinualConfig().n_tasks() == 5 and ContinualConfig(scenario="mnist_fashion").n_tasks() == 2


def test_unset_traversal_settings_are_the_scenarios():
    """eta, anchor, metric_batch, temperature and align left None take the scenario's `TraversalDefaults`: the
    paper's permuted-MNIST setting, the recipe chosen on held-out images for MNIST -> Fashion-MNIST (one head or two);
    a value the user gives is kept; on the logits T is 1; the core refuses an unresolved config."""
    base = ContinualConfig()
    assert (base.geo.eta, base.geo.anchor, base.geo.metric_batch, base.geo.temperature, base.align) == (None,) * 5
    r = base.resolved()
    assert (r.geo.eta, r.geo.anchor, r.geo.metric_batch, r.geo.temperature, r.align) == (0.1, 1.0, 256, 10.0, "none")
    assert r.resolved() == r and r.geo.max_steps == base.geo.max_steps == 4000
    heads = ContinualConfig(scenario="mnist-fashion-heads").resolved()
    assert (heads.geo.eta, heads.geo.anchor, heads.geo.metric_batch, heads.geo.temperature, heads.align) == (
        0.3, 1.0, 128, 4.0, "auto")
    mf = ContinualConfig(scenario="mnist-fashion").resolved()
    assert (mf.geo.eta, mf.geo.anchor, mf.geo.metric_batch, mf.geo.temperature, mf.align) == (0.3, 0.2, 128, 4.0, "auto")
    mine = ContinualConfig(scenario="mnist_fashion", geo={"anchor": 0.3, "cg_iters": 5}, align="none").resolved()
    assert (mine.geo.anchor, mine.geo.cg_iters, mine.geo.eta, mine.align) == (0.3, 5, 0.3, "none")
    assert ContinualConfig(geo={"output_space": "logits"}).resolved().geo.temperature == 1.0
    with pytest.raises(ValueError, match="a temperature"):
        ContinualConfig(geo={"output_space": "logits", "temperature": 4.0})
    model = tiny_mlp()
    with pytest.raises(ValueError, match=r"geo.eta, geo.anchor, geo.metric_batch, geo.temperature unset.*resolved"):
        continual_geodesic(model, tiny_mlp(), torch.randn(8, 6), base.geo)
    # the Fisher-aimed step: None is the scenario's ω, a given value wins, a negative one is refused
    assert base.fisher_weight is None and r.fisher_weight == 1.0 and heads.fisher_weight == 1.0
    assert mf.fisher_weight == get_scenario("mnist_fashion").traversal.fisher_weight
    assert ContinualConfig(scenario="mnist_fashion", fisher_weight=0).resolved().fisher_weight == 0.0
    assert ContinualConfig(fisher_weight=2.5).resolved().fisher_weight == 2.5
    with pytest.raises(ValueError, match="fisher_weight"):
        ContinualConfig(fisher_weight=-1)
    # the head refit: on with a head per task, off with a shared one, where asking for it is refused
    assert base.refit_head is None and r.refit_head is False and mf.refit_head is False and heads.refit_head is True
    assert ContinualConfig(scenario="mnist_fashion_heads", refit_head=False).resolved().refit_head is False
    with pytest.raises(ValueError, match="refit_head needs a head per task; scenario 'mnist_fashion' has one shared"):
        ContinualConfig(scenario="mnist_fashion", refit_head=True)
    # the closing correction: the scenario's epochs (two on permuted MNIST and with two heads, none on the paper's
    # MNIST -> Fashion), a given count wins, a negative one is refused
    assert base.polish_epochs is None and (r.polish_epochs, heads.polish_epochs, mf.polish_epochs) == (2, 2, 0)
    assert ContinualConfig(polish_epochs=0).resolved().polish_epochs == 0
    with pytest.raises(ValueError, match="polish_epochs"):
        ContinualConfig(polish_epochs=-1)


def test_the_fisher_aimed_target_weighs_the_earlier_tasks_fisher():
    """fisher_target: ω = 0 is the paper's FixedTarget; ω > 0 aims along (1 + ω F / mean F) ⊙ d; a missing,
    mis-sized, negative or all-zero Fisher is refused."""
    w = torch.randn(10)
    f = torch.rand(10)
    assert type(fisher_target(w, None, 0.0)).__name__ == "FixedTarget"
    t = fisher_target(w, f, 2.0)
    assert isinstance(t, WeightedTarget) and torch.allclose(t.weights, 1 + 2.0 * f / f.mean())
    with pytest.raises(ValueError, match="needs the earlier tasks' diagonal Fisher"):
        fisher_target(w, None, 1.0)
    for bad in (torch.rand(9), -f, torch.zeros(10)):
        with pytest.raises(InputError, match="Fisher"):
            fisher_target(w, bad, 1.0)
    with pytest.raises(InputError, match="fisher_weight"):
        fisher_target(w, f, float("nan"))


def test_a_multi_head_traversal_leaves_the_current_tasks_head_to_the_anchor():
    """head_weights marks the rows of one head in the output layer and their biases, nothing else; the target holds
    the current weights there (w_a = w, so w_{1:i-1}'s untrained rows of task i's head pull nothing), and the
    traversal's distance ignores them. A head the output layer does not have is refused."""
    sc = get_scenario("mnist-fashion-heads")
    net, prev = build_scenario_model(sc, seed=0), build_scenario_model(sc, seed=1)
    own = head_weights(net, (10, 20))
    marks = own.float().clone()
    torch.nn.utils.vector_to_parameters(marks, net.parameters())
    out = list(net.modules())[-1]
    assert int(own.sum()) == 10 * 100 + 10 and out.weight[10:].all() and out.bias[10:].all()
    assert int(out.weight.sum() + out.bias.sum()) == own.sum()  # no row of the other head, no other layer
    net = build_scenario_model(sc, seed=0)
    w, w_prev = flat_params(net), flat_params(prev)
    target = fisher_target(w_prev, None, 0.0, own)
    torch.testing.assert_close(target(w, 0), torch.where(own, w, w_prev))
    weighted = fisher_target(w_prev, torch.rand(w.numel()), 1.0, own)
    assert torch.equal(weighted.aim(weighted(w, 0) - w)[own], torch.zeros(int(own.sum())))
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    cfg = GeoConfig(eta=0.5, anchor=0.0, max_steps=3, patience=50, metric_batch=32, solver="cg", cg_iters=5)
    res = continual_geodesic(net, prev, x, cfg, task=sc.tasks(2)[1])
    gap = flat_params(prev) - flat_params(net)
    assert res.distance == pytest.approx(float(gap[~own].norm()), rel=1e-5)
    assert res.distance < float(gap.norm()) - 0.1  # the head's rows still differ from w_{1:i-1}'s, uncounted
    with pytest.raises(InputError, match="output layer with the head's units 20..29"):
        head_weights(net, (20, 30))
    with pytest.raises(InputError, match="own weights"):
        FixedTarget(w_prev, own=own[1:])(w, 0)


def test_the_head_refit_moves_only_task_is_head_toward_w_is_outputs(data_dir):
    """distill_head on real MNIST / Fashion-MNIST images: w_2's shared layers moved (a stand-in for the traversal's
    end) lose Fashion; refitting the Fashion head to w_2's outputs, without labels, lowers the KL to them and brings
    the Fashion accuracy back, while every other weight, so every MNIST output, stays bit for bit. The result is
    near the convex problem's minimum: the KL's gradient in the head is under 2% of its norm at the start, and the
    reported KLs are the loss's values. A head the output layer lacks is refused before any work."""
    sc = get_scenario("mnist-fashion-heads")
    mnist, fashion = sc.tasks(2)
    tr, te = _subset(load_task(fashion, True, data_dir), 3000), _subset(load_task(fashion, False, data_dir), 1000)
    m_te = _subset(load_task(mnist, False, data_dir), 1000)
    w2 = build_scenario_model(sc, seed=1)
    train(task_view(w2, fashion), tr, TrainConfig(epochs=2, lr=0.1, seed=1), device=torch.device("cpu"))
    end = copy.deepcopy(w2)
    with torch.no_grad():  # the hidden layers moved: what a traversal toward another network does to them
        for p in list(end.parameters())[:-2]:
            p.add_(p.std() * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    teacher_acc = task_accuracies(w2, [te], [fashion])[0]
    moved = task_accuracies(end, [te], [fashion])[0]
    assert moved < teacher_acc - 10  # the move costs Fashion (measured: 69.3 -> 54.6)
    before = [p.detach().clone() for p in end.parameters()]
    mnist_out = end(m_te.x)[:, :10].detach().clone()
    fit = distill_head(end, w2, tr.x, fashion.head)
    assert fit.kl_after < 0.1 * fit.kl_before and fit.iterations > 0  # measured: 0.54 -> 0.018
    out = list(end.modules())[-1]
    for p, q in zip(list(end.parameters())[:-2], before[:-2]):
        assert torch.equal(p, q)  # no hidden weight moved
    assert torch.equal(out.weight[:10], before[-2][:10]) and torch.equal(out.bias[:10], before[-1][:10])
    assert torch.equal(end(m_te.x)[:, :10], mnist_out)  # MNIST's outputs bit for bit
    assert not torch.equal(out.weight[10:], before[-2][10:])
    assert task_accuracies(end, [te], [fashion])[0] > moved + 10  # Fashion comes back on unseen images (68.5)
    # near the convex problem's minimum: the head's gradient a small fraction of where it started
    from geodesic_core.train import distillation_loss

    feats, wanted = end[:-1](tr.x).detach(), w2(tr.x)[:, 10:].detach()

    def grad_norm(weight, bias):
        w = torch.cat([weight, bias[:, None]], 1).detach().requires_grad_(True)
        loss = distillation_loss(feats @ w[:, :-1].T + w[:, -1], wanted, 1.0)
        return float(loss.detach()), float(torch.autograd.grad(loss, w)[0].norm())

    loss_end, g_end = grad_norm(out.weight[10:], out.bias[10:])
    loss_start, g_start = grad_norm(before[-2][10:], before[-1][10:])
    assert loss_end == pytest.approx(fit.kl_after, rel=1e-4) and loss_start == pytest.approx(fit.kl_before, rel=1e-4)
    assert g_end < 0.02 * g_start
    with pytest.raises(InputError, match="output layer with the head's units 20..29"):
        distill_head(end, w2, tr.x, (20, 30))


def test_the_straight_line_between_multi_head_networks_keeps_every_trained_head():
    """completed_heads: w_{1:i-1} takes task i's head from w_i and w_i the earlier heads from w_{1:i-1}; nothing
    else changes, so on the line only the shared layers move; with one shared head the endpoints are unchanged."""
    sc = get_scenario("mnist-fashion-heads")
    net = build_scenario_model(sc, seed=0)
    w_i, w_prev = torch.randn(flat_params(net).numel()), torch.randn(flat_params(net).numel())
    own, earlier = head_weights(net, (10, 20)), head_weights(net, (0, 10))
    a, b = completed_heads(net, w_i, w_prev, sc.tasks(2), 1)
    assert torch.equal(a[earlier], w_prev[earlier]) and torch.equal(a[~earlier], w_i[~earlier])
    assert torch.equal(b[own], w_i[own]) and torch.equal(b[~own], w_prev[~own])
    shared = ~(own | earlier)
    mid = torch.lerp(a, b, 0.5)
    assert torch.equal(mid[own], w_i[own]) and torch.equal(mid[earlier], w_prev[earlier])
    assert not torch.equal(mid[shared], w_i[shared]) and not torch.equal(mid[shared], w_prev[shared])
    one = get_scenario("permuted_mnist")
    assert completed_heads(net, w_i, w_prev, one.tasks(2), 1) == (w_i, w_prev)


def test_the_geodesics_per_task_network_starts_between_a_fresh_one_and_the_chains_end():
    fresh, chain = tiny_cnn_bn(0), tiny_cnn_bn(1)
    with torch.no_grad():  # batch-norm statistics of their own, and a step count, as after training
        for net, v in ((fresh, 0.5), (chain, 2.0)):
            for name, b in net.named_buffers():
                b.fill_(7 if name.endswith("num_batches_tracked") else v)
    w0, w1 = flat_params(fresh), flat_params(chain)
    buffers0 = {k: b.clone() for k, b in fresh.named_buffers()}
    out = mixed_start(fresh, chain, 0.3)
    assert out is fresh and torch.allclose(flat_params(fresh), 0.3 * w1 + 0.7 * w0, atol=1e-6)
    assert torch.equal(flat_params(chain), w1)  # the chain's end is only read
    for k, b in fresh.named_buffers():
        if b.is_floating_point():  # running statistics mixed like the weights
            assert torch.allclose(b, torch.full_like(b, 0.3 * 2.0 + 0.7 * 0.5)), k
        else:  # the step count stays the fresh network's
            assert torch.equal(b, buffers0[k]), k
    same = tiny_mlp(0)
    assert torch.equal(flat_params(mixed_start(same, tiny_mlp(1), 0.0)), flat_params(tiny_mlp(0)))
    assert torch.equal(flat_params(mixed_start(same, tiny_mlp(1), 1.0)), flat_params(tiny_mlp(1)))
    with pytest.raises(InputError, match="different architectures"):
        mixed_start(tiny_mlp(0), tiny_cnn_bn(0), 0.5)
    with pytest.raises(InputError, match=r"start_mix must be in \[0, 1\]"):
        mixed_start(tiny_mlp(0), tiny_mlp(1), 1.5)
    with pytest.raises(ValueError, match="start_mix"):
        ContinualConfig(start_mix=-0.1)


def test_fisher_diagonal_matches_a_per_example_per_class_loop():
    model = tiny_mlp()
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(3))
    fisher = fisher_diagonal(model, x, batch_size=4)
    ref = torch.zeros_like(fisher, dtype=torch.float64)
    for xi in x:
        logp = torch.log_softmax(model(xi.unsqueeze(0)).squeeze(0), -1)
        for y in range(logp.numel()):
            g = torch.autograd.grad(logp[y], list(model.parameters()), retain_graph=True)
            ref += logp[y].exp().item() * torch.cat([t.reshape(-1) for t in g]).double() ** 2
    torch.testing.assert_close(fisher.double(), ref / x.shape[0], rtol=1e-4, atol=1e-8)


def test_quadratic_pull_is_the_sum_of_per_task_penalties_and_its_gradient():
    model = tiny_mlp()
    n = flat_params(model).numel()
    gen = torch.Generator().manual_seed(0)
    anchors = [torch.randn(n, generator=gen) for _ in range(3)]
    fishers = [torch.rand(n, generator=gen) for _ in range(3)]
    pull = QuadraticPull.empty(2.5, n)
    for w, f in zip(anchors, fishers):
        pull = pull.add(w, f)
    w = torch.cat([p.reshape(-1) for p in model.parameters()])
    explicit = sum(0.5 * 2.5 * (f * (w - a) ** 2).sum() for a, f in zip(anchors, fishers))
    value = pull(model)
    torch.testing.assert_close(value, explicit, rtol=1e-5, atol=1e-4)
    g = torch.autograd.grad(value, list(model.parameters()))
    g_flat = torch.cat([t.reshape(-1) for t in g])
    torch.testing.assert_close(g_flat, 2.5 * sum(f * (w - a) for a, f in zip(anchors, fishers)).detach(),
                               rtol=1e-4, atol=1e-4)
    same = QuadraticPull.from_state(2.5, pull.state())
    torch.testing.assert_close(same(model), value)
    l2 = QuadraticPull.empty(0.1, n).add(anchors[0])
    torch.testing.assert_close(l2(model), 0.05 * ((w - anchors[0]) ** 2).sum(), rtol=1e-5, atol=1e-4)
    with pytest.raises(InputError, match=">= 0"):
        QuadraticPull.empty(-1.0, n)


def test_average_accuracy_and_backward_transfer():
    r = [[90.0, 10.0, 12.0], [80.0, 95.0, 11.0], [70.0, 85.0, 97.0]]
    assert average_accuracy(r[-1]) == pytest.approx((70 + 85 + 97) / 3)
    assert backward_transfer(r) == pytest.approx(((70 - 90) + (85 - 95)) / 2)


def test_linear_scan_picks_the_best_minimum():
    pts = linear_path(torch.zeros(2), torch.ones(2), 5)
    values, best = linear_scan(pts, lambda w: [float(100 * w[0]), float(100 * (1 - w[0]))])
    assert best == 2 and values[best] == [50.0, 50.0]


def test_pca_2d_recovers_a_planar_path():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(50, 2, generator=gen))[0].T  # (2, 50) orthonormal
    coords = torch.randn(12, 2, generator=gen) * torch.tensor([3.0, 1.0])
    proj = pca_2d(coords @ basis + 5.0)
    # distances between points are preserved by the projection on the plane they span
    torch.testing.assert_close(torch.cdist(proj, proj), torch.cdist(coords, coords), rtol=1e-4, atol=1e-4)


def _subset(s: Split, n: int) -> Split:
    return Split(s.x[:n], s.y[:n])


@pytest.fixture(scope="module")
def two_tasks(data_dir):
    """Two permuted-MNIST tasks: networks trained on 10k examples each, and the test sets (5k examples)."""
    tasks = get_scenario("permuted_mnist").tasks(2)
    trains = [_subset(load_task(t, True, data_dir), 10_000) for t in tasks]
    tests = [_subset(load_task(t, False, data_dir), 5_000) for t in tasks]
    nets = []
    for i, tr in enumerate(trains):
        m = build_scenario_model(get_scenario("permuted_mnist"), seed=i)
        train(m, tr, TrainConfig(epochs=2, lr=0.05, seed=i), device=torch.device("cpu"))
        nets.append(m)
    return nets, trains, tests


def test_ewc_keeps_task_1_where_sgd_forgets_it(two_tasks):
    """Kirkpatrick et al. (2017), Fig. 2A: after SGD on task 2 the task-1 accuracy collapses; with the EWC
    penalty from task 1's Fisher it stays high while task 2 is still learned. With λ = 0 EWC is SGD exactly."""
    nets, trains, tests = two_tasks
    w1 = nets[0]
    fisher = fisher_diagonal(w1, trains[0].x[:200])
    cfg = TrainConfig(epochs=3, lr=0.1, seed=5)
    runs = {}
    for name, strength in [("sgd", None), ("ewc0", 0.0), ("ewc", 100.0)]:
        m = copy.deepcopy(w1)
        pull = None if strength is None else QuadraticPull.empty(strength, fisher.numel()).add(flat_params(w1), fisher)
        train(m, trains[1], cfg, penalty=pull, device=torch.device("cpu"))
        runs[name] = (m, task_accuracies(m, tests))
    assert torch.equal(flat_params(runs["sgd"][0]), flat_params(runs["ewc0"][0]))
    sgd, ewc = runs["sgd"][1], runs["ewc"][1]
    assert sgd[0] < 80.0 and ewc[0] > sgd[0] + 10.0  # SGD forgets task 1; EWC keeps most of it
    assert ewc[1] > 90.0  # and still learns task 2


def test_geodesic_stage_reaches_a_network_good_on_both_tasks(two_tasks):
    """Algorithm 2 on two tasks: from w_2 toward w_1 under task 2's metric; task 1 comes back while task 2 is
    kept, and the end point beats the best point of the straight line between the same networks."""
    nets, trains, tests = two_tasks
    w1, w2 = nets
    start = task_accuracies(w2, tests)
    assert start[0] < 30.0 < 90.0 < start[1]
    model = copy.deepcopy(w2)
    cfg = GeoConfig(eta=0.1, anchor=1.0, max_steps=300, patience=50, metric_batch=128, solver="cg", cg_iters=10)
    seen = []
    res = continual_geodesic(model, w1, trains[1].x, cfg, callbacks=[lambda i: seen.append(i.distance)])
    end = task_accuracies(model, tests)
    assert res.steps == len(seen) and seen[-1] < 0.6 * seen[0]
    assert end[0] > start[0] + 50.0 and end[1] > start[1] - 4.0
    probe = copy.deepcopy(w2)

    def measure(w):
        torch.nn.utils.vector_to_parameters(w, probe.parameters())
        return task_accuracies(probe, tests)

    values, best = linear_scan(linear_path(flat_params(w2), flat_params(w1), 11), measure)
    assert min(end) > min(values[best]) + 5.0


def test_the_fisher_aimed_stage_closes_the_distance_task_1_depends_on_first(two_tasks):
    """fisher_weight ω > 0: over the same number of steps the traversal closes more of task 1's Fisher-weighted
    distance, (w − w_1)^T diag(F_1) (w − w_1), than the paper's step does, and task 2 is kept."""
    nets, trains, tests = two_tasks
    w1, w2 = nets
    fisher = fisher_diagonal(w1, trains[0].x[:100])
    cfg = GeoConfig(eta=0.2, anchor=1.0, max_steps=20, patience=50, metric_batch=64, solver="cg", cg_iters=10)
    weighted, accs = {}, {}
    for omega in (0.0, 1.0):
        model = copy.deepcopy(w2)
        res = continual_geodesic(model, w1, trains[1].x, cfg, fisher=fisher, fisher_weight=omega)
        assert res.steps == 20
        gap = flat_params(model) - flat_params(w1)
        weighted[omega] = float((fisher * gap * gap).sum())
        accs[omega] = task_accuracies(model, tests)
    assert weighted[1.0] < 0.5 * weighted[0.0]  # measured: 0.11 against 0.43
    assert accs[1.0][1] > 85.0  # task 2 is kept all the same (90.4; the paper's step: 90.5)


def test_the_closing_correction_settles_task_is_outputs_against_the_earlier_tasks_pull(data_dir):
    """polish_stage on two real permuted-MNIST tasks, from the midpoint of w_2 and w_1 (a stand-in for the
    traversal's end): it lowers its objective, T² KL(w_2 ‖ w) on task 2's inputs + the pull of task 1's Fisher
    toward w_1, and without labels brings task 2 back on unseen images. Its strength λ is the trade-off it claims:
    the stronger the pull, the more of task 1 it holds and the further it leaves w_2's outputs on task 2. No epochs:
    no change, no time."""
    sc = get_scenario("permuted_mnist")
    specs = sc.tasks(2)
    trs = [_subset(load_task(t, True, data_dir), 3000) for t in specs]
    tes = [_subset(load_task(t, False, data_dir), 1000) for t in specs]
    nets = [build_scenario_model(sc, seed=i) for i in range(2)]
    for net, tr, i in zip(nets, trs, range(2)):
        train(net, tr, TrainConfig(epochs=4, lr=0.1, seed=i), device=torch.device("cpu"))
    w1, w2 = (flat_params(n) for n in nets)
    fisher = fisher_diagonal(nets[0], trs[0].x[:500])
    from geodesic_core.metric import set_flat_params
    from geodesic_core.train import distillation_loss

    def start() -> torch.nn.Module:
        m = copy.deepcopy(nets[1])
        set_flat_params(m, torch.lerp(w2, w1, 0.5))
        return m

    def kl(m) -> float:
        with torch.no_grad():
            return float(distillation_loss(m(trs[1].x), nets[1](trs[1].x), 1.0))

    mid = task_accuracies(start(), tes)
    accs, kls = {}, {}
    for lam in (0.0, 10.0, 100.0):
        pull = QuadraticPull.empty(lam, w1.numel()).add(w1, fisher)
        m = start()
        before = kl(m) + float(pull(m).detach())
        seconds = polish_stage(m, nets[1], trs[1].x, pull, 4, lr=0.01, seed=0)
        kls[lam] = kl(m)
        assert seconds > 0 and kls[lam] + float(pull(m).detach()) < 0.5 * before  # measured: 0.04-0.09 of it
        accs[lam] = task_accuracies(m, tes)
    assert accs[10.0][1] > mid[1] + 5  # task 2 comes back without labels (measured: 78.0 -> 88.2)
    assert accs[0.0][0] < accs[10.0][0] < accs[100.0][0]  # the pull holds task 1 (52.3, 74.8, 87.5) ...
    assert kls[0.0] < kls[10.0] < kls[100.0]  # ... and costs task 2's match to w_2
    m = start()
    assert polish_stage(m, nets[1], trs[1].x, QuadraticPull.empty(10.0, w1.numel()).add(w1, fisher), 0, lr=0.01) == 0.0
    assert torch.equal(flat_params(m), torch.lerp(w2, w1, 0.5))
