import pytest
import torch

from geodesic_core import (FilterTarget, InputError, SparseTarget, build_model, flat_params, param_slices,
                           project_sparse, sparsity)


@pytest.mark.parametrize("p", [50.0, 90.0, 98.0, 99.1])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_projection_hits_sparsity_exactly_and_keeps_biases(p, scope):
    model = build_model("lenet300", 10, 1, 28)
    slices = param_slices(model)
    w = flat_params(model)
    pw = project_sparse(w, slices, p, scope)
    n_prunable = sum(s.stop - s.start for s in slices if s.prunable)
    assert abs(sparsity(pw, slices) - p / 100) <= 1.0 / n_prunable
    for s in slices:
        if not s.prunable:  # biases are untouched
            assert torch.equal(pw[s.start:s.stop], w[s.start:s.stop])
        elif scope == "layer":
            n = s.stop - s.start
            assert int((pw[s.start:s.stop] == 0).sum()) == round(p / 100 * n)
    kept = pw != 0
    # the kept weights are exactly the unchanged largest-magnitude ones
    assert torch.equal(pw[kept], w[kept])
    if scope == "global":
        m = torch.zeros_like(w, dtype=torch.bool)
        for s in slices:
            m[s.start:s.stop] = s.prunable
        assert w[m & ~kept].abs().max() <= w[m & kept].abs().min()


def test_projection_is_idempotent_and_monotone():
    model = build_model("lenet300", 10, 1, 28)
    slices = param_slices(model)
    w = flat_params(model)
    p90 = project_sparse(w, slices, 90)
    assert torch.equal(project_sparse(p90, slices, 90), p90)
    p95 = project_sparse(p90, slices, 95)
    assert ((p90 == 0) <= (p95 == 0)).all()  # zeros stay zero as sparsity grows


def test_prune_bias_option_includes_biases():
    model = build_model("lenet300", 10, 1, 28)
    assert any(s.prunable for s in param_slices(model, prune_bias=True) if s.name.endswith("bias"))
    assert not any(s.prunable for s in param_slices(model) if s.name.endswith("bias"))


@pytest.mark.parametrize("p", [0, 100, -5, 150])
def test_sparsity_outside_open_interval_is_rejected(p):
    model = build_model("lenet300", 10, 1, 28)
    with pytest.raises(InputError, match="between 0 and 100"):
        SparseTarget(param_slices(model), p)


def test_sparse_target_refreshes_every_n_steps():
    model = build_model("lenet300", 10, 1, 28)
    t = SparseTarget(param_slices(model), 90, refresh_every=5)
    w = flat_params(model)
    a = t(w, 0)
    w2 = w * torch.linspace(0.5, 1.5, w.numel())
    assert t(w2, 4) is a  # kept between refreshes
    assert not torch.equal(t(w2, 5), a)


def test_filter_projection_zeroes_whole_filters():
    model = build_model("vgg11", 10, 3, 32)
    t = FilterTarget(model, "features.0", 50)
    w = flat_params(model)
    pw = t(w, 0)
    sl = {s.name: s for s in param_slices(model)}
    W = pw[sl["features.0.weight"].start:sl["features.0.weight"].stop].view(64, -1)
    b = pw[sl["features.0.bias"].start:sl["features.0.bias"].stop]
    zero = (W == 0).all(1)
    assert int(zero.sum()) == 50 and torch.equal(zero, b == 0)
    rest = torch.ones_like(w, dtype=torch.bool)
    rest[sl["features.0.weight"].start:sl["features.0.bias"].stop] = False
    assert torch.equal(pw[rest], w[rest])
    # the anchor and the distiller may move every weight except those of the zeroed filters
    expected = torch.ones_like(w, dtype=torch.bool)
    expected[sl["features.0.weight"].start:sl["features.0.weight"].stop].view(64, -1)[zero] = False
    expected[sl["features.0.bias"].start:sl["features.0.bias"].stop][zero] = False
    assert torch.equal(t.free_mask(pw), expected) and int((~expected).sum()) == 50 * (W.shape[1] + 1)
    with pytest.raises(InputError, match="conv layers"):
        FilterTarget(model, "classifier", 5)
    with pytest.raises(InputError, match="n_filters"):
        FilterTarget(model, "features.0", 64)
