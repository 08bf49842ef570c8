import pytest
import torch
from torch import nn
from torch.func import jacrev, jvp

from geodesic_core import InputError, MetricOperator, flat_params, gram_matrix, linear_path, metric_vector_product
from geodesic_core.metric import (TracedPushforward, conv_gram_costs, conv_weight_gram, eval_mode, output_fn,
                                  path_length, segment_lengths, set_flat_params)


def explicit_jacobian(model, x, space):
    w = flat_params(model)
    with eval_mode(model):
        return jacrev(output_fn(model, x, space))(w).reshape(-1, w.numel())  # (N m, n)


@pytest.mark.parametrize("space", ["logits", "softmax"])
def test_metric_vector_product_matches_explicit_jacobian(tiny, space):
    model, x = tiny
    J = explicit_jacobian(model, x, space)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(J.shape[1], generator=gen)
        ref = J.T @ (J @ v) / x.shape[0]
        got = metric_vector_product(model, x, v, space)
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6 * ref.abs().max())
        assert torch.allclose(MetricOperator(model, x, space)(v), ref, rtol=1e-5, atol=1e-6 * ref.abs().max())


@pytest.mark.parametrize("space", ["logits", "softmax"])
def test_traced_pushforward_follows_the_point_and_the_batch(tiny, space):
    """One trace, pointed at three (w, x) in turn (new weights, batch-norm statistics and inputs, written into its
    slots): J v and g v equal the explicit Jacobian's at each, and a product on an operator of an earlier point is
    refused rather than silently taken at the new one."""
    model, x0 = tiny
    model, x0 = model.double(), x0.double()  # float64: a wrong point shows, float32 rounding does not
    traced = TracedPushforward(model, space)
    gen = torch.Generator().manual_seed(2)
    w0 = flat_params(model)
    ops = []
    for i in range(3):
        w = w0 + 0.3 * i * torch.randn(w0.shape, generator=gen, dtype=w0.dtype)
        x = x0 + 0.5 * i * torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        set_flat_params(model, w)
        for b in model.buffers():
            if b.is_floating_point():
                b.mul_(1.1)  # running statistics move too (the traversal's bn_every re-estimation)
        J = explicit_jacobian(model, x, space)
        op = MetricOperator(model, x, space, traced)
        assert traced.failed is None and traced.point == i + 1
        v = torch.randn(J.shape[1], generator=gen, dtype=w0.dtype)
        ref = J @ v
        got = op.jvp(v).reshape(-1)
        assert torch.allclose(got, ref, rtol=1e-9, atol=1e-10 * float(ref.abs().max()))
        gv = J.T @ ref / x.shape[0]
        assert torch.allclose(op(v), gv, rtol=1e-9, atol=1e-10 * float(gv.abs().max()))
        ops.append(op)
    with pytest.raises(RuntimeError, match="another w"):
        ops[0].jvp(v)
    set_flat_params(model, w0)


class _NoForwardMode(torch.autograd.Function):
    """tanh with a backward rule and no forward-mode (jvp) rule: a network `make_fx` cannot linearize."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


def test_traced_pushforward_falls_back_to_the_double_vjp():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)

        def forward(self, x):
            return self.b(_NoForwardMode.apply(self.a(x)))

    torch.manual_seed(0)
    model, x = Net(), torch.randn(7, 6)
    traced = TracedPushforward(model)
    with pytest.warns(UserWarning, match="double vjp"):
        op = MetricOperator(model, x, "logits", traced)
    assert traced.failed is not None
    J = explicit_jacobian(model, x, "logits")
    v = torch.randn(J.shape[1])
    assert torch.allclose(op.jvp(v).reshape(-1), J @ v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("space", ["logits", "softmax"])
def test_gram_matrix_equals_j_jt(tiny, space):
    model, x = tiny
    J = explicit_jacobian(model, x, space).double()
    K = gram_matrix(model, x, space)
    assert torch.allclose(K, J @ J.T, rtol=1e-5, atol=1e-6 * float((J @ J.T).abs().max()))


def test_metric_is_symmetric_positive_semidefinite(tiny):
    model, x = tiny
    n = flat_params(model).numel()
    gen = torch.Generator().manual_seed(3)
    U = torch.randn(6, n, generator=gen)
    G = torch.stack([metric_vector_product(model, x, u) for u in U]) @ U.T  # (6, 6): u_i^T g u_j
    assert torch.allclose(G, G.T, rtol=1e-4, atol=1e-6)
    assert torch.linalg.eigvalsh(0.5 * (G + G.T).double()).min() > -1e-6 * G.abs().max()


def test_null_direction_leaves_outputs_unchanged_to_first_order(tiny):
    model, x = tiny
    J = explicit_jacobian(model, x, "logits").double()
    # a direction in the null space of J (g v = 0): project a random vector off the row space
    v = torch.randn(J.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    Q, _ = torch.linalg.qr(J.T)
    v_null = (v - Q @ (Q.T @ v)).float()
    v_null /= v_null.norm()
    gv = metric_vector_product(model, x, v_null)
    assert gv.norm() < 1e-4 * metric_vector_product(model, x, v.float() / v.norm()).norm()
    w = flat_params(model)
    f = output_fn(model, x, "logits")
    with eval_mode(model), torch.no_grad():
        base = f(w)
        for h in (1e-2, 5e-3):  # change is second order: halving the step quarters it
            diffs = [(f(w + s * v_null) - base).norm() for s in (h, h / 2)]
            assert diffs[1] < 0.3 * diffs[0] + 1e-6
        rnd = (f(w + 1e-2 * v.float() / v.norm()) - base).norm()
        assert (f(w + 1e-2 * v_null) - base).norm() < 0.1 * rnd


def test_wrong_vector_shape_is_a_clear_error(tiny):
    model, x = tiny
    with pytest.raises(InputError, match="expected"):
        metric_vector_product(model, x, torch.zeros(3))


def test_path_length_of_straight_line(tiny):
    model, x = tiny
    w0 = flat_params(model)
    w1 = w0 + 0.01 * torch.randn_like(w0)
    # for a short straight segment the length is sqrt(d^T g d) with g near w0, and refining the path keeps it
    coarse = path_length(model, linear_path(w0, w1, 2), x)
    fine = path_length(model, linear_path(w0, w1, 11), x)
    d = w1 - w0
    with eval_mode(model):
        _, jd = jvp(output_fn(model, x, "logits"), (w0,), (d,))
    approx = float((jd ** 2).sum() / x.shape[0]) ** 0.5
    assert fine == pytest.approx(coarse, rel=1e-2)
    assert fine == pytest.approx(approx, rel=5e-2)
    assert torch.equal(flat_params(model), w0)  # weights restored
    assert len(segment_lengths(model, linear_path(w0, w1, 11), x)) == 10


def test_segment_lengths_use_each_midpoints_batch_norm_statistics():
    """With ``bn_inputs`` a batch-norm network's g(m_t) is that of the network at m_t: its statistics are
    re-estimated there first, as every evaluated point's are; weights and buffers come back unchanged."""
    import copy

    from geodesic_core import recompute_bn, set_flat_params

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    x, bn_x = torch.randn(16, 1, 8, 8), 2.0 + 3.0 * torch.randn(64, 1, 8, 8)
    recompute_bn(model, bn_x)
    w0 = flat_params(model)
    w1 = w0 + 0.5 * torch.randn_like(w0)
    points = linear_path(w0, w1, 4)
    buffers = [b.clone() for b in model.buffers()]
    got = segment_lengths(model, points, x, bn_inputs=bn_x)
    expected = []
    for a, b in zip(points[:-1], points[1:]):
        at_mid = copy.deepcopy(model)
        set_flat_params(at_mid, 0.5 * (a + b))
        recompute_bn(at_mid, bn_x)
        expected.append(segment_lengths(at_mid, [a, b], x)[0])
    assert torch.allclose(got, torch.stack(expected), rtol=1e-6)
    assert not torch.allclose(got, segment_lengths(model, points, x), rtol=1e-2)  # one set of statistics differs
    assert torch.equal(flat_params(model), w0)
    assert all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers))


def test_products_are_safe_from_concurrent_threads(tiny):
    """Flows run levels on a thread pool, each with its own network; torch.func state is process-global."""
    import copy
    import threading

    from geodesic_core.solve import GramFactor

    model, x = tiny
    v = torch.randn(flat_params(model).numel(), generator=torch.Generator().manual_seed(0))
    ref = metric_vector_product(model, x, v)
    errors = []

    def work(net):
        try:
            w = flat_params(net)
            for _ in range(30):
                assert torch.allclose(metric_vector_product(net, x, v), ref, rtol=1e-5, atol=1e-7)
                assert torch.allclose(GramFactor.compute(net, x).op(v), ref, rtol=1e-4, atol=1e-6)
                path_length(net, linear_path(w, w + 1e-3 * v, 3), x)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(copy.deepcopy(model),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, repr(errors[0])


def _precisions():
    b = torch.backends
    return b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision


class _Recorder(torch.nn.Module):
    """The tiny MLP, recording the TF32 settings its forward pass runs under."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        self.seen = set()

    def forward(self, x):
        self.seen.add(_precisions())
        return self.net(x)


def test_metric_products_geo_steps_and_evaluation_run_in_ieee_float32():
    """Issue 14: metric products, Geo steps and evaluation stay float32 on a GPU, where PyTorch runs float32
    convolutions in TF32 by default. The core sets the fp32 precisions itself and puts back the caller's."""
    from geodesic_core import GeoConfig, evaluate, geo, solve_geo_qp
    from geodesic_core.targets import FixedTarget

    b = torch.backends
    before = _precisions()
    b.cuda.matmul.fp32_precision = b.cudnn.conv.fp32_precision = b.cudnn.rnn.fp32_precision = "tf32"
    try:
        model, x = _Recorder(), torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
        w = flat_params(model)
        d = torch.randn(w.numel(), generator=torch.Generator().manual_seed(1))
        calls = {
            "metric_vector_product": lambda: metric_vector_product(model, x, d),
            "gram_matrix": lambda: gram_matrix(model, x),
            "solve_geo_qp exact": lambda: solve_geo_qp(model, x, d, solver="exact"),
            "solve_geo_qp cg": lambda: solve_geo_qp(model, x, d, solver="cg"),
            "path_length": lambda: path_length(model, linear_path(w, w + d, 3), x),
            "evaluate": lambda: evaluate(model, (x, torch.zeros(16, dtype=torch.long))),
            "geo": lambda: geo(model, FixedTarget(w + d), x, GeoConfig(eta=0.05, max_steps=3, metric_batch=8,
                                                                        anchor=0.5, distill_steps=2)),
        }
        for name, call in calls.items():
            model.seen.clear()
            call()
            assert model.seen == {("ieee", "ieee", "ieee")}, (name, model.seen)
            assert _precisions() == ("tf32", "tf32", "tf32"), f"{name} did not put the caller's settings back"
        assert b.cudnn.allow_tf32  # the legacy reading still works: conv and rnn agree again
    finally:
        b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision = before


def test_full_float32_holds_until_the_last_thread_leaves():
    """The flags are process-wide and the flows run tasks on threads: a block that ends must not restore TF32 under
    another thread's traversal."""
    import threading

    from geodesic_core.train import full_float32

    b = torch.backends
    before = _precisions()
    b.cudnn.conv.fp32_precision = "tf32"
    try:
        entered, release = threading.Event(), threading.Event()
        seen = []

        def long_block():
            with full_float32():
                entered.set()
                release.wait(10)
                seen.append(b.cudnn.conv.fp32_precision)

        t = threading.Thread(target=long_block)
        t.start()
        assert entered.wait(10)
        with full_float32():  # a short block, nested in time inside the long one, ends first
            assert b.cudnn.conv.fp32_precision == "ieee"
        assert b.cudnn.conv.fp32_precision == "ieee"  # the long block still runs
        release.set()
        t.join()
        assert seen == ["ieee"]
        assert b.cudnn.conv.fp32_precision == "tf32"
    finally:
        b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision = before


@pytest.mark.parametrize("positions", [1, 4, 16])
def test_conv_gram_rules_agree_with_explicit_per_sample_gradients(positions):
    """Both exact rules of a convolution's Gram block equal <G_ik, G_jl> from explicit per-row gradients, also
    when chunked; auto picks the rule with fewer multiply-adds."""
    gen = torch.Generator().manual_seed(positions)
    n, m, c_out, ckk = 3, 4, 5, 7
    dflat = torch.randn(n, m, c_out, positions, generator=gen)
    patches = torch.randn(n, ckk, positions, generator=gen)
    G = torch.einsum("ikcp,idp->ikcd", dflat.double(), patches.double()).reshape(n * m, -1)
    ref = G @ G.T
    smallest = {"direct": n * m * ckk, "kernel": (n * m) ** 2 * positions, "auto": 400_000_000}
    for rule in ("direct", "kernel", "auto"):
        for max_elements in (400_000_000, smallest[rule]):  # the second: the least each rule fits in
            K = conv_weight_gram(dflat, patches, rule, max_elements=max_elements)
            assert K.dtype == torch.float64 and K.shape == (n * m, n * m)
            assert torch.allclose(K, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max())), (rule, max_elements)
    costs = conv_gram_costs(64, 10, 512, 4608, 4)  # VGG's last block at N m = 640: the kernel rule is far cheaper
    assert costs["kernel"] * 100 < costs["direct"]
    costs = conv_gram_costs(64, 10, 64, 27, 1024)  # its first layer: the direct rule
    assert costs["direct"] * 100 < costs["kernel"]


def test_conv_gram_refuses_a_block_no_rule_fits():
    dflat, patches = torch.randn(2, 3, 4, 9), torch.randn(2, 50, 9)
    with pytest.raises(InputError, match="too large for the exact solver's direct rule; use solver='cg'"):
        conv_weight_gram(dflat, patches, "auto", max_elements=100)
    with pytest.raises(InputError, match="kernel rule"):
        conv_weight_gram(dflat, patches, "kernel", max_elements=310)  # direct fits (6 x 50), kernel not (6 x 9 x 6)
    K = conv_weight_gram(dflat, patches, "auto", max_elements=310)  # auto falls back to direct
    assert K.shape == (6, 6)


def test_gram_matrix_with_kernel_rule_layers_equals_j_jt():
    """A network whose late convolution has few positions and large filters (as VGG's last blocks): gram_matrix
    takes the kernel rule there and still equals J J^T."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 2 * 2, 3)).eval()
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    costs = conv_gram_costs(3, 3, 32, 8 * 9, 4)
    assert costs["kernel"] < costs["direct"]  # the second convolution goes by the kernel rule
    J = explicit_jacobian(model, x, "logits").double()
    K = gram_matrix(model, x)
    assert torch.allclose(K, J @ J.T, rtol=1e-5, atol=1e-6 * float((J @ J.T).abs().max()))
    for rule in ("direct", "kernel"):  # each rule forced on every convolution
        assert torch.allclose(gram_matrix(model, x, conv_rule=rule), K, rtol=1e-5, atol=1e-6 * float(K.abs().max()))
