import pytest
import torch

from geodesic_core import (GeoConfig, InputError, TrainConfig, build_model, evaluate, flat_params, param_slices,
                           sparsity)
from geodesic_core.data import Split
from geodesic_core.sparsify import geodesic_stage, oneshot_prune, prune_finetune, stage_sparsities, structured_stage


def test_schedule_is_increasing_and_ends_at_target():
    ps = stage_sparsities(98, 5)
    assert ps[-1] == pytest.approx(98) and all(a < b for a, b in zip(ps, ps[1:]))
    with pytest.raises(InputError):
        stage_sparsities(100, 5)


def test_stages_end_on_the_hyperplane_and_beat_oneshot(data_dir):
    from geodesic_core import load_split, train

    tr, te = load_split("mnist", True, data_dir), load_split("mnist", False, data_dir)
    torch.manual_seed(0)
    model = build_model("lenet300", 10, 1, 28)
    train(model, Split(tr.x[:20000], tr.y[:20000]), TrainConfig(epochs=2), device=torch.device("cpu"))
    test = Split(te.x[:2000], te.y[:2000])
    slices = param_slices(model)
    oneshot = build_model("lenet300", 10, 1, 28)
    oneshot.load_state_dict(model.state_dict())
    oneshot_prune(oneshot, slices, 95)
    for k, p_k in enumerate(stage_sparsities(95, 3)):
        res = geodesic_stage(model, slices, p_k, tr.x[:5000], GeoConfig(eta=0.2, max_steps=100, anchor=1.0), stage=k)
        assert res.steps > 0
        assert sparsity(flat_params(model), slices) == pytest.approx(p_k / 100, abs=1e-5)
    geo_acc, one_acc = evaluate(model, test)[0], evaluate(oneshot, test)[0]
    assert geo_acc > one_acc + 1.0  # the path keeps what dropping the weights at once loses


def test_structured_stage_zeroes_filters():
    torch.manual_seed(0)
    model = build_model("cnn", 10, 1, 28)
    pool = torch.randn(64, 1, 28, 28)
    res = structured_stage(model, "0", 10, pool, GeoConfig(eta=0.1, max_steps=5, metric_batch=8, solver="cg",
                                                            cg_iters=5))
    w = model[0].weight.detach().flatten(1)
    assert int((w.abs().sum(1) == 0).sum()) == 10 and res.steps <= 5


def test_prune_finetune_keeps_exact_sparsity(data_dir):
    from geodesic_core import load_split

    tr = load_split("mnist", True, data_dir)
    model = build_model("lenet300", 10, 1, 28)
    slices = param_slices(model)
    _, wall, steps = prune_finetune(model, 95, Split(tr.x[:3000], tr.y[:3000]), TrainConfig(epochs=1, lr=0.01),
                                    device=torch.device("cpu"))
    assert steps == 24 and wall > 0
    assert sparsity(flat_params(model), slices) == pytest.approx(0.95, abs=1e-5)
    _, wall, steps = prune_finetune(model, 95, Split(tr.x[:3000], tr.y[:3000]), TrainConfig(epochs=1000, lr=0.01),
                                    budget_seconds=0.3, device=torch.device("cpu"))
    assert 0.3 <= wall < 2.0 and 0 < steps < 24000


def test_prune_distill_reads_no_labels_and_recovers_accuracy(data_dir):
    """The label-free peer: masked SGD toward the dense network's outputs. Scrambled labels give the same
    weights bit for bit; the pruned weights stay zero; accuracy recovers above the one-shot projection."""
    import copy

    from geodesic_core import evaluate, load_split, train

    tr, te = load_split("mnist", True, data_dir), load_split("mnist", False, data_dir)
    data, test = Split(tr.x[:20000], tr.y[:20000]), Split(te.x[:2000], te.y[:2000])
    torch.manual_seed(0)
    dense = build_model("lenet300", 10, 1, 28)
    train(dense, data, TrainConfig(epochs=2, lr=0.05), device=torch.device("cpu"))
    dense.requires_grad_(False)
    oneshot = copy.deepcopy(dense)
    oneshot_prune(oneshot, param_slices(oneshot), 98)
    cfg = TrainConfig(epochs=1, lr=0.003, schedule="constant")
    runs = []
    for labels in (data.y, data.y[torch.randperm(data.y.shape[0])]):
        model = copy.deepcopy(dense).requires_grad_(True)
        prune_finetune(model, 98, Split(data.x, labels), cfg, device=torch.device("cpu"), teacher=dense)
        runs.append(model)
    assert torch.equal(flat_params(runs[0]), flat_params(runs[1]))
    assert sparsity(flat_params(runs[0]), param_slices(runs[0])) == pytest.approx(0.98, abs=1e-5)
    assert evaluate(runs[0], test)[0] > evaluate(oneshot, test)[0] + 5
