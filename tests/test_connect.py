"""Mode connectivity: the core pieces, the geodesic between two real MNIST networks, and the flow."""

import copy

import pandas as pd
import pytest
import torch

from flows.cli import main
from geodesic_core import InputError, build_model, flat_params, save_checkpoint, train
from geodesic_core.config import GeoConfig, TrainConfig
from geodesic_core.connect import ConnectConfig
from geodesic_core.connect import (BezierCurve, CurveAnchor, InterpolatedOutputs, PolyChain, bn_batch,
                                   chain_nodes, chord_coordinates, check_same_architecture, connect_segment,
                                   distance_ratio, endpoint_teachers, evaluate_point, relax_path, train_bezier)
from geodesic_core.data import Split, load_split
from geodesic_core.metric import linear_path, set_flat_params

from conftest import tiny_cnn_bn, tiny_mlp


def test_chord_coordinates_and_distance_ratio():
    w_a, w_b = torch.zeros(3), torch.tensor([4.0, 0.0, 0.0])
    assert chord_coordinates(torch.tensor([1.0, 2.0, 0.0]), w_a, w_b) == pytest.approx((1.0, 2.0))
    assert chord_coordinates(w_b, w_a, w_b) == pytest.approx((4.0, 0.0))
    assert distance_ratio(w_a, w_a, w_b) == 1.0 and distance_ratio(w_b, w_a, w_b) == 0.0
    with pytest.raises(InputError, match="same network"):
        chord_coordinates(w_a, w_a, w_a)


def test_interpolated_outputs_run_from_one_network_to_the_other():
    a, b = tiny_mlp(0), tiny_mlp(1)
    x = torch.randn(4, 6)
    f = InterpolatedOutputs(copy.deepcopy(a), copy.deepcopy(b))
    torch.testing.assert_close(f(x), a(x))
    f.t = 1.0
    torch.testing.assert_close(f(x), b(x))
    f.t = 0.25
    torch.testing.assert_close(f(x), 0.75 * a(x) + 0.25 * b(x))


def test_endpoints_of_different_architectures_are_refused():
    meta = {"model": "lenet300", "num_classes": 10, "in_channels": 1, "image_size": 28}
    check_same_architecture(meta, dict(meta))
    with pytest.raises(InputError, match="not the same architecture.*model: 'lenet300' vs 'cnn'"):
        check_same_architecture(meta, {**meta, "model": "cnn"})
    with pytest.raises(InputError, match="num_classes: 10 vs 100"):
        check_same_architecture(meta, {**meta, "num_classes": 100})
    with pytest.raises(ValueError, match="both --checkpoint-a and --checkpoint-b"):
        ConnectConfig(checkpoint_a="a.pt")
    with pytest.raises(ValueError, match="different seeds"):
        ConnectConfig(seed=3, seed_b=3)


def test_points_of_batch_norm_networks_are_evaluated_with_their_own_statistics():
    model = tiny_cnn_bn()
    assert bn_batch(tiny_mlp(), torch.randn(5, 6)) is None
    x = torch.randn(64, 2, 4, 4) * 3 + 1
    test = Split(x[:16], torch.zeros(16, dtype=torch.long))
    w = flat_params(model)
    stale = copy.deepcopy(model.state_dict())
    evaluate_point(model, w, test, bn_batch(model, x))
    bn = model[1]
    assert not torch.allclose(bn.running_mean, stale["1.running_mean"])
    torch.testing.assert_close(bn.running_mean, model[0](x).mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_label_free_fits_read_the_endpoints_as_points_are_evaluated():
    """The teachers of the label-free fits are copies of the endpoints with batch-norm statistics re-estimated on
    the same training inputs every point of a path is evaluated with (not their stored running averages), so
    f_0 and f_1 are the endpoints as the path's table reports them; the networks passed in stay as they were."""
    a, b = tiny_cnn_bn(0), tiny_cnn_bn(1)
    x = torch.randn(64, 2, 4, 4) * 3 + 1
    stale = [copy.deepcopy(n.state_dict()) for n in (a, b)]
    ta, tb = endpoint_teachers((a, b), x, torch.device("cpu"))
    for net, teacher, kept in zip((a, b), (ta, tb), stale):
        assert teacher is not net
        for k, v in net.state_dict().items():
            assert torch.equal(v, kept[k]), k
        probe = copy.deepcopy(net)
        evaluate_point(probe, flat_params(net), Split(x[:4], torch.zeros(4, dtype=torch.long)), bn_batch(net, x))
        torch.testing.assert_close(teacher.eval()(x), probe.eval()(x))
        assert not torch.allclose(teacher[1].running_mean, kept["1.running_mean"])
    mlp = tiny_mlp(0)
    plain, _ = endpoint_teachers((mlp, tiny_mlp(1)), torch.randn(8, 6), torch.device("cpu"))
    torch.testing.assert_close(plain(torch.ones(2, 6)), mlp(torch.ones(2, 6)))


@pytest.fixture(scope="module")
def two_modes(data_dir):
    tr, te = load_split("mnist", True, data_dir), load_split("mnist", False, data_dir)
    tr, te = Split(tr.x[:10_000], tr.y[:10_000]), Split(te.x[:5_000], te.y[:5_000])
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = build_model("lenet300", 10, 1, 28)
        train(m, tr, TrainConfig(epochs=2, lr=0.05, seed=seed), device=torch.device("cpu"))
        nets.append(m)
    return nets, tr, te


@pytest.fixture(scope="module")
def traversal(two_modes):
    """Algorithm 3 between the two MNIST networks: the geodesic's points every 20 steps and their accuracies."""
    (a, b), tr, te = two_modes
    w_a, w_b = flat_params(a), flat_params(b)
    probe = copy.deepcopy(a)
    model, points, accs = copy.deepcopy(a), [w_a.clone()], []

    def record(info):
        if info.step % 20 == 0:
            points.append(info.weights.detach().clone())
            accs.append(evaluate_point(probe, info.weights, te, None)[0])

    cfg = GeoConfig(eta=0.1, anchor=1.0, max_steps=1000, patience=50, metric_batch=128, solver="cg", cg_iters=10)
    res = connect_segment(model, w_b, tr.x, cfg, anchor=InterpolatedOutputs(copy.deepcopy(a), copy.deepcopy(b)),
                          total_distance=float((w_b - w_a).norm()), callbacks=[record])
    return res, flat_params(model), points, accs


def test_geodesic_between_two_modes_stays_near_the_weaker_endpoint(two_modes, traversal):
    """Algorithm 3 on two MNIST networks: the traversal reaches w_2 exactly, and its lowest accuracy is within
    1 point of the weaker endpoint while the straight line dips lower."""
    (a, b), tr, te = two_modes
    w_a, w_b = flat_params(a), flat_params(b)
    probe = copy.deepcopy(a)
    ends = [evaluate_point(probe, w, te, None)[0] for w in (w_a, w_b)]
    line = [evaluate_point(probe, w, te, None)[0] for w in linear_path(w_a, w_b, 11)]
    res, end, _, accs = traversal
    assert res.stop_reason == "reached" and torch.equal(end, w_b)
    assert min(accs) > min(ends) - 1.0
    assert min(line) < min(accs) - 1.0


def _network_gradient_at(curve, base, t: float) -> torch.Tensor:
    """Check that the curve at ``t`` computes what the network with weights φ(t) computes, backpropagate one
    cross-entropy through both, and return the network's flat gradient (the curve's parameters hold theirs)."""
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    curve.t = t
    probe = copy.deepcopy(base)
    set_flat_params(probe, curve.point(t).detach())
    torch.testing.assert_close(curve(x), probe(x))
    for net in (curve, probe):
        torch.nn.functional.cross_entropy(net(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in probe.parameters()])


def test_chain_runs_through_its_nodes_and_trains_the_two_around_each_t():
    """φ(t) is the polyline w_1 → θ_1 → ... → θ_K → w_2 with θ_j at knot t_j; the gradient reaching the nodes
    at a t between t_j and t_{j+1} is (1 − s) and s times the network's gradient at φ(t) (s the fraction of the way
    between them), nothing for the other nodes; knots that do not increase inside (0, 1) are refused."""
    a, b = tiny_mlp(0), tiny_mlp(1)
    w_a, w_b = flat_params(a), flat_params(b)
    nodes = torch.stack([w_a + torch.randn_like(w_a), w_b + torch.randn_like(w_b)])
    chain = PolyChain(copy.deepcopy(a), w_a, w_b, nodes, [0.25, 0.6], seed=0).eval()
    assert [p.shape for p in chain.parameters()] == [nodes.shape]
    for t, w in ((0.0, w_a), (0.25, nodes[0]), (0.6, nodes[1]), (1.0, w_b)):
        torch.testing.assert_close(chain.point(t), w)
    torch.testing.assert_close(chain.point(0.5), 2 / 7 * nodes[0] + 5 / 7 * nodes[1])
    torch.testing.assert_close(chain.point(0.8), 0.5 * nodes[1] + 0.5 * w_b)
    g = _network_gradient_at(chain, a, 0.5)
    torch.testing.assert_close(chain.nodes.grad, torch.stack([2 / 7 * g, 5 / 7 * g]))
    for bad in ([0.6, 0.25], [0.0, 0.5], [0.5, 1.0]):
        with pytest.raises(InputError, match="knots must increase"):
            PolyChain(copy.deepcopy(a), w_a, w_b, nodes, bad)
    with pytest.raises(InputError, match="one knot per node"):
        PolyChain(copy.deepcopy(a), w_a, w_b, nodes, [0.5])


def test_chain_nodes_are_points_of_the_path_at_increasing_progress():
    """Each node is one of the path's points at its progress t = 1 − |w − w_2| / |w_1 − w_2|, the knots
    increase, points that do not advance past the last one are skipped, and each node is the point nearest
    k / (K + 1)."""
    w_a, w_b = torch.zeros(2), torch.tensor([10.0, 0.0])
    ts = [0.0, 0.1, 0.22, 0.18, 0.4, 0.55, 0.75, 0.9, 1.0]  # one point steps back (0.18)
    points = [torch.tensor([10.0 * t, 0.0]) for t in ts]
    nodes, knots = chain_nodes(points, w_a, w_b, 3)
    assert knots == pytest.approx([0.22, 0.55, 0.75])
    torch.testing.assert_close(nodes, torch.tensor([[2.2, 0.0], [5.5, 0.0], [7.5, 0.0]]))
    nodes, knots = chain_nodes(points, w_a, w_b, 20)  # more nodes asked than points: every qualifying point once
    assert knots == pytest.approx([0.1, 0.22, 0.4, 0.55, 0.75, 0.9])
    with pytest.raises(InputError, match="no point of the path"):
        chain_nodes([w_a, w_b], w_a, w_b, 4)


def test_relaxing_the_geodesic_fits_its_chain_to_the_interpolated_outputs_without_labels(two_modes, traversal):
    """The closing correction of a connect path: the chain through the geodesic's points, fit toward f_t, ends
    closer to f_t over the whole path (the label-free objective on held-out inputs, 11 t) than the unfitted
    polyline, stays within 1 point of the weaker endpoint, and never reads a label (shuffled labels: the same
    nodes to the bit)."""
    (a, b), tr, te = two_modes
    w_a, w_b = flat_params(a), flat_params(b)
    _, _, points, _ = traversal
    cfg = TrainConfig(epochs=2, lr=0.001, seed=0)  # measured: 0.003 diverges (the chain's nodes feel the full rate)
    sub = Split(tr.x[:4000], tr.y[:4000])
    relaxed = relax_path(copy.deepcopy(a), points, w_a, w_b, sub, cfg, nodes=6, endpoints=(a, b))
    shuffled = relax_path(copy.deepcopy(a), points, w_a, w_b, Split(sub.x, sub.y[torch.randperm(4000)]), cfg,
                          nodes=6, endpoints=(a, b))
    assert torch.equal(relaxed.nodes, shuffled.nodes)
    start = PolyChain(copy.deepcopy(a), w_a, w_b, *chain_nodes(points, w_a, w_b, 6))
    assert len(start.knots) == 8 and not torch.equal(start.nodes, relaxed.nodes)
    held = te.x[:2000]
    probe, f = copy.deepcopy(a), InterpolatedOutputs(copy.deepcopy(a), copy.deepcopy(b))

    def gap(chain) -> float:
        total = 0.0
        for t in torch.linspace(0, 1, 11):
            f.t = float(t)
            set_flat_params(probe, chain.point(float(t)).detach())
            with torch.no_grad():
                total += float(0.5 * ((probe(held) - f(held)) ** 2).sum(1).mean())
        return total / 11

    assert gap(relaxed) < 0.9 * gap(start)  # measured: 0.120 against 0.152
    along = [evaluate_point(probe, w, te, None)[0] for w in relaxed.points(11)]
    assert min(along) > min(along[0], along[-1]) - 1.0


def test_bezier_curve_is_the_quadratic_between_the_endpoints_and_trains_its_bend_only():
    """φ_θ(t) = (1-t)² w_1 + 2t(1-t) θ + t² w_2, θ at the chord's midpoint to start; the module is the network at
    φ_θ(t); the gradient reaching θ is 2t(1-t) times the network's gradient at φ_θ(t) (the chain rule the
    curve-finding objective rests on); the base network's parameters are not the curve's."""
    a, b = tiny_mlp(0), tiny_mlp(1)
    w_a, w_b = flat_params(a), flat_params(b)
    curve = BezierCurve(copy.deepcopy(a), w_a, w_b, seed=0).eval()
    assert [p.shape for p in curve.parameters()] == [w_a.shape]
    torch.testing.assert_close(curve.point(0.0), w_a)
    torch.testing.assert_close(curve.point(1.0), w_b)
    torch.testing.assert_close(curve.point(0.5), 0.5 * (w_a + w_b))  # straight line until trained
    with torch.no_grad():
        curve.bend += 0.1 * torch.randn_like(curve.bend)
    g = _network_gradient_at(curve, a, 0.3)
    torch.testing.assert_close(curve.bend.grad, 2 * 0.3 * 0.7 * g)
    with pytest.raises(InputError, match="one architecture"):
        BezierCurve(copy.deepcopy(a), w_a, torch.zeros(3))


def test_trained_bezier_curve_stays_high_where_the_straight_line_dips(two_modes):
    """Garipov et al. 2018, as published: training the bend on E_t L(φ_θ(t)) gives a curve between two modes
    whose accuracy stays near the endpoints' all along, while the straight line between them dips."""
    (a, b), tr, te = two_modes
    w_a, w_b = flat_params(a), flat_params(b)
    probe = copy.deepcopy(a)
    line = [evaluate_point(probe, w, te, None)[0] for w in linear_path(w_a, w_b, 11)]
    ends = [line[0], line[-1]]
    curve = train_bezier(copy.deepcopy(a), w_a, w_b, tr, TrainConfig(epochs=10, lr=0.05, seed=0))
    along = [evaluate_point(probe, w, te, None)[0] for w in curve.points(11)]
    assert along[0] == ends[0] and along[-1] == ends[1]
    assert min(along) > min(ends) - 1.0
    assert min(line) < min(along) - 1.0
    assert curve.euclidean_length() > float((w_b - w_a).norm())


def test_label_free_curve_matches_the_interpolated_outputs_at_the_t_it_drew_and_reads_no_labels():
    """The label-free curve's target is f_t = (1-t) f(w_1) + t f(w_2) at the t the curve drew for the same batch,
    and its training never reads a label: with the labels shuffled it ends bit-identical."""
    a, b = tiny_mlp(0), tiny_mlp(1)
    w_a, w_b = flat_params(a), flat_params(b)
    curve = BezierCurve(copy.deepcopy(a), w_a, w_b, seed=3).train()
    anchor = CurveAnchor(curve, a, b)
    x = torch.randn(8, 6)
    drawn = []
    for _ in range(3):
        curve(x)
        drawn.append(curve.drawn_t)
        with torch.no_grad():
            torch.testing.assert_close(anchor(x), (1 - drawn[-1]) * a(x) + drawn[-1] * b(x))
    assert len(set(drawn)) == 3 and all(0 <= t <= 1 for t in drawn)
    xs, ys = torch.randn(64, 6), torch.randint(0, 3, (64,))
    cfg = TrainConfig(epochs=2, lr=0.01, batch_size=16, seed=0)
    one = train_bezier(copy.deepcopy(a), w_a, w_b, Split(xs, ys), cfg, endpoints=(a, b))
    assert one.steps_trained == 2 * 64 // 16  # the fit's optimizer steps: 2 epochs of 4 batches
    other = train_bezier(copy.deepcopy(a), w_a, w_b, Split(xs, ys[torch.randperm(64)]), cfg, endpoints=(a, b))
    assert torch.equal(one.bend, other.bend) and not torch.equal(one.bend, 0.5 * (w_a + w_b))
    labelled = train_bezier(copy.deepcopy(a), w_a, w_b, Split(xs, ys), cfg)
    assert not torch.equal(one.bend, labelled.bend)
    # at a temperature: the endpoints' softmax matched by T² KL, still without reading a label
    soft = train_bezier(copy.deepcopy(a), w_a, w_b, Split(xs, ys), cfg, endpoints=(a, b), temperature=2.0)
    soft_shuffled = train_bezier(copy.deepcopy(a), w_a, w_b, Split(xs, ys[torch.randperm(64)]), cfg,
                                 endpoints=(a, b), temperature=2.0)
    assert torch.equal(soft.bend, soft_shuffled.bend) and not torch.equal(soft.bend, one.bend)
    with pytest.raises(InputError, match="temperature"):
        train_bezier(copy.deepcopy(a), w_a, w_b, Split(xs, ys), cfg, endpoints=(a, b), temperature=-1.0)
    torch.testing.assert_close(flat_params(a), w_a)  # the endpoints are not touched
    torch.testing.assert_close(flat_params(b), w_b)


def test_label_free_bezier_curve_stays_high_where_the_straight_line_dips(two_modes):
    """Fit to the endpoints' interpolated outputs, without labels, the curve between two MNIST modes stays near
    the endpoints' accuracy all along, above the straight line's dip."""
    (a, b), tr, te = two_modes
    w_a, w_b = flat_params(a), flat_params(b)
    probe = copy.deepcopy(a)
    line = [evaluate_point(probe, w, te, None)[0] for w in linear_path(w_a, w_b, 11)]
    curve = train_bezier(copy.deepcopy(a), w_a, w_b, tr, TrainConfig(epochs=10, lr=0.01, seed=0), endpoints=(a, b))
    along = [evaluate_point(probe, w, te, None)[0] for w in curve.points(11)]
    assert along[0] == line[0] and along[-1] == line[-1]
    assert min(along) > min(line[0], line[-1]) - 1.5  # measured: 0.94 below; the line 3.50 below
    assert min(line) < min(along) - 1.0


TINY = ["--train.epochs", "1", "--bezier-train.epochs", "1", "--geo.max-steps", "60", "--eval-every", "20",
        "--linear-points", "5", "--geo.eta", "0.5"]  # 5x the default step: the flow's behaviour in fewer steps


def _children(workdir):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("geodesic-connect")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    latest = next(r for r in runs if r.data.tags.get("geodesic.role") == "parent").info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == latest]
    training = [r for r in children if r.data.params["method"] == "train"]  # the endpoints' own runs
    assert all(r.info.status == "FINISHED" for r in training)
    return client, {r.data.params["method"] + ("_" + r.data.params["budget"] if "budget" in r.data.params else ""): r
                    for r in children if r.data.params["method"] != "train"}


def test_flow_connects_tracks_every_path_and_resumes(harness, workdir, data_dir, monkeypatch, capsys):
    relax = ["--relax-epochs", "1", "--relax-lr", "0.001"]
    assert main(["connect", "--data-dir", data_dir, *TINY, "--bezier-equal-time", *relax]) == 0
    assert "geodesic" in capsys.readouterr().out
    client, children = _children(workdir)
    assert sorted(children) == ["bezier", "bezier_distill", "bezier_distill_equal_time", "bezier_equal_time",
                                "geodesic", "geodesic_relaxed", "linear"]
    # the closing correction: the chain through the geodesic's points, fit for 1 epoch; its wall time is the
    # traversal's and the fit's, and it is the budget of the equal-time curves
    relaxed = children["geodesic_relaxed"].data
    assert relaxed.metrics["epochs"] == 1 and relaxed.params["relax_lr"] == "0.001"
    geo_wall = relaxed.metrics["wall_seconds"]
    assert geo_wall > children["geodesic"].data.metrics["wall_seconds"]
    # each curve again for the geodesic's wall time, all of it (not epochs sized at its first run's speed), its
    # cosine annealed inside it
    for curve in ("bezier", "bezier_distill"):
        fixed, equal = children[curve].data.metrics, children[f"{curve}_equal_time"].data.metrics
        assert fixed["epochs"] == 1 and equal["epochs"] > 1
        assert geo_wall <= equal["wall_seconds"] <= 1.2 * geo_wall + 1.0
        lrs = [h.value for h in sorted(client.get_metric_history(children[f"{curve}_equal_time"].info.run_id, "lr"),
                                       key=lambda h: h.step)]
        assert max(lrs) > 5 * min(lrs) and all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:]))
    params = children["bezier_distill"].data.params  # the label-free curve: softmax at T = 2, the CE's rate
    assert params["bezier_distill_lr"] == "0.1" and params["bezier_distill_temperature"] == "2.0"
    keys = {"endpoint_a_accuracy", "endpoint_b_accuracy", "path_min_test_accuracy", "path_mean_test_accuracy",
            "path_length", "path_length_euclidean", "final_distance_ratio", "wall_seconds"}
    for method, r in children.items():
        m = r.data.metrics
        assert keys <= set(m) and m["final_distance_ratio"] == 0.0
        assert m["path_min_test_accuracy"] <= min(m["endpoint_a_accuracy"], m["endpoint_b_accuracy"]) + 1e-9
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"path_metrics.parquet", "accuracy_along_paths.png", "paths_2d.png"} <= arts
        df = pd.read_parquet(client.download_artifacts(r.info.run_id, "path_metrics.parquet", str(workdir / method)))
        assert {"test_accuracy", "test_loss", "chord_x", "chord_y", "distance_ratio", "path_length"} <= set(df.columns)
        assert df["path_length"].is_monotonic_increasing and df["distance_ratio"].iloc[-1] == 0.0
    ends = children["linear"].data.metrics
    assert children["geodesic"].data.metrics["endpoint_a_accuracy"] == ends["endpoint_a_accuracy"]
    # --align auto (the default) on LeNet-300-100: every path ends at w_2 with its units in w_1's order
    for r in children.values():
        assert r.data.params["align"] == "auto" and r.data.metrics["aligned_units_moved"] > 0

    def boom(*a, **k):
        raise AssertionError("a cached task ran again")

    monkeypatch.setattr("tasks.connect.connect_segment", boom)
    monkeypatch.setattr("tasks.connect.train_bezier", boom)
    monkeypatch.setattr("tasks.connect.relax_path", boom)
    monkeypatch.setattr("tasks.connect.align_to", boom)
    monkeypatch.setattr("tasks.training.train_and_save", boom)
    assert main(["connect", "--data-dir", data_dir, *TINY, "--bezier-equal-time", *relax]) == 0
    # other evaluation settings: the trained curves and the relaxed chain (and the geodesic) are evaluated again,
    # never retrained
    assert main(["connect", "--data-dir", data_dir, *TINY, "--linear-points", "7", *relax]) == 0
    client, children = _children(workdir)
    for path in ("bezier", "geodesic_relaxed"):
        df = pd.read_parquet(client.download_artifacts(children[path].info.run_id, "path_metrics.parquet",
                                                       str(workdir / f"{path}7")))
        assert len(df) == 7 and df["t"].tolist() == pytest.approx([i / 6 for i in range(7)])


def test_a_stalled_traversal_is_completed_or_reported(harness, workdir, data_dir, monkeypatch, capsys):
    """A traversal that stalls (oscillation) is continued with the looser completion step (anchor off, larger
    trust region) until it reaches w_2; with --no-complete the run ends there and reports how far it got."""
    import tasks.connect as tc

    real = tc.connect_segment
    calls = []

    def stalling(model, w_b, pool, cfg, **kw):
        calls.append(cfg.anchor)
        if cfg.anchor > 0:  # the anchored traversal "stalls" after a few steps
            res = real(model, w_b, pool, cfg.model_copy(update={"max_steps": 5}), **kw)
            return res._replace(stop_reason="oscillation")
        return real(model, w_b, pool, cfg, **kw)

    monkeypatch.setattr(tc, "connect_segment", stalling)
    args = ["connect", "--data-dir", data_dir, "--train.epochs", "1", "--geo.max-steps", "400", "--eval-every", "50",
            "--linear-points", "3", "--no-bezier", "--no-bezier-distill", "--geo.eta", "0.5", "--relax-epochs", "0"]
    assert main([*args, "--no-complete"]) == 0
    _, children = _children(workdir)
    assert 0.0 < children["geodesic"].data.metrics["final_distance_ratio"] < 1.0 and calls == [1.0]
    out = capsys.readouterr().out
    assert "did not reach w_2" in out and "oscillation" in out and "--complete" in out
    assert main([*args, "--complete"]) == 0
    _, children = _children(workdir)
    assert calls[-1] == 0.0 and children["geodesic"].data.metrics["final_distance_ratio"] == 0.0
    assert children["geodesic"].data.metrics["completion_steps"] > 0


def test_bad_endpoints_fail_before_any_work(tmp_path, monkeypatch, data_dir, capsys):
    monkeypatch.chdir(tmp_path)
    meta = {"model": "lenet300", "num_classes": 10, "in_channels": 1, "image_size": 28, "test_accuracy": 0.0}
    save_checkpoint(tmp_path / "a.pt", build_model("lenet300", 10, 1, 28), meta)
    save_checkpoint(tmp_path / "c.pt", build_model("cnn", 10, 1, 28), {**meta, "model": "cnn"})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases = [(["--checkpoint-a", str(tmp_path / "a.pt"), "--checkpoint-b", str(tmp_path / "c.pt")], "'cnn' network"),
             (["--checkpoint-a", str(tmp_path / "a.pt")], "both --checkpoint-a and --checkpoint-b"),
             (["--checkpoint-a", str(tmp_path / "a.pt"), "--checkpoint-b", str(tmp_path / "junk.pt")],
              "could not be loaded safely"),
             (["--checkpoint-a", str(tmp_path / "a.pt"), "--checkpoint-b", str(tmp_path / "none.pt")], "does not exist"),
             (["--seed-b", "0"], "different seeds"),
             (["--model", "torchvision:resnet18", "--align", "activations"], "neuron alignment supports"),
             (["--model", "resnet18"], "valid models")]
    for args, match in cases:
        assert main(["connect", "--data-dir", data_dir, *args]) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


def test_connect_benchmark_compares_the_relaxed_path_with_the_curves_given_its_time():
    """With --relax-epochs the curves' equal-time budget is the relaxed path's time (traversal + fit): the verdict at
    equal time is the relaxed path's, not the bare traversal's (the benchmark printed the latter before commit e1bc83a)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from connect import curve_lines

    def row(method, path_min, wall, epochs=None):
        return {"method": method, "path_min_test_accuracy": path_min, "wall_seconds": wall,
                **({"epochs": epochs} if epochs else {})}

    curves = [row("bezier", 90.05, 68.5, 5), row("bezier_equal_time", 90.08, 403.6, 34),
              row("bezier_distill", 89.87, 135.2, 5), row("bezier_distill_equal_time", 90.07, 288.2, 17)]
    relaxed = curve_lines([row("geodesic", 89.53, 216.8), row("geodesic_relaxed", 89.93, 470.2), *curves])
    assert relaxed[1] == ("at equal wall time (470 s; the curve 34 epochs in 404 s), the relaxed geodesic's path "
                          "minimum vs the Bezier curve's: level (-0.15)")
    assert relaxed[3].endswith("the relaxed geodesic's path minimum vs the label-free Bezier curve's: level (-0.14)")
    assert relaxed[0].startswith("Bezier curve (5 epochs): path minimum 90.05 vs the geodesic's 89.53")
    bare = curve_lines([row("geodesic", 89.53, 216.8), *curves])
    assert bare[1].startswith("at equal wall time (217 s;") and bare[1].endswith("the geodesic's path minimum vs the "
                                                                                 "Bezier curve's: behind (-0.55)")
