import pytest
import torch

from geodesic_core import set_flat_params
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
    with torch.no_grad():  # a batch norm with non-trivial scale and shift
        model.features[1].weight.uniform_(0.5, 1.5)
        model.features[1].bias.uniform_(0.1, 0.5)
    t = FilterTarget(model, "features.0", 50)
    assert t.batchnorm == "features.1"
    w = flat_params(model)
    pw = t(w, 0)
    sl = {s.name: s for s in param_slices(model)}

    def part(v, name):
        return v[sl[name].start:sl[name].stop]

    W = part(pw, "features.0.weight").view(64, -1)
    zero = (W == 0).all(1)
    assert int(zero.sum()) == 50
    for name in ("features.0.bias", "features.1.weight", "features.1.bias"):  # the whole channel is removed
        assert torch.equal(zero, part(pw, name) == 0), name
    rest = torch.ones_like(w, dtype=torch.bool)
    rest[sl["features.0.weight"].start:sl["features.1.bias"].stop] = False
    assert torch.equal(pw[rest], w[rest])
    # the anchor and the distiller may move every weight except those of the removed filters
    expected = torch.ones_like(w, dtype=torch.bool)
    part(expected, "features.0.weight").view(64, -1)[zero] = False
    for name in ("features.0.bias", "features.1.weight", "features.1.bias"):
        part(expected, name)[zero] = False
    assert torch.equal(t.free_mask(pw), expected) and int((~expected).sum()) == 50 * (W.shape[1] + 3)
    masks = t.masks(pw)
    assert set(masks) == {"features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias"}
    # the removed channel is exactly zero after batch norm whatever its statistics
    model.eval()
    set_flat_params(model, pw)
    with torch.no_grad():
        model.features[1].running_mean.normal_()
        out = model.features[:3](torch.randn(2, 3, 32, 32))
    assert float(out[:, zero].abs().max()) == 0.0
    with pytest.raises(InputError, match="conv layers"):
        FilterTarget(model, "classifier", 5)
    with pytest.raises(InputError, match="n_filters"):
        FilterTarget(model, "features.0", 64)
