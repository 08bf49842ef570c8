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



def test_structured_stage_ends_with_the_statistics_of_its_end_network():
    """With ``bn_every`` > 0 the stage's end network (after the projection) carries batch-norm statistics
    re-estimated at its own weights, as the traversal's did; with 0 the start's statistics stay."""
    import copy

    from conftest import tiny_cnn_bn
    from geodesic_core import recompute_bn

    pool = torch.randn(40, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    start = tiny_cnn_bn(0)
    cfg = GeoConfig(eta=0.05, max_steps=3, metric_batch=8, anchor=0.0, solver="cg", cg_iters=5, bn_samples=64)
    frozen, fresh = copy.deepcopy(start), copy.deepcopy(start)
    structured_stage(frozen, "0", 1, pool, cfg.model_copy(update={"bn_every": 0}))
    assert torch.equal(frozen[1].running_var, start[1].running_var)
    structured_stage(fresh, "0", 1, pool, cfg.model_copy(update={"bn_every": 10}))
    ref = recompute_bn(copy.deepcopy(fresh), pool)
    assert torch.allclose(fresh[1].running_mean, ref[1].running_mean, atol=1e-6)
    assert torch.allclose(fresh[1].running_var, ref[1].running_var, atol=1e-6)
    assert not torch.allclose(fresh[1].running_var, start[1].running_var)

def test_prune_finetune_keeps_exact_sparsity(data_dir):
    from geodesic_core import load_split

    tr = load_split("mnist", True, data_dir)
    model = build_model("lenet300", 10, 1, 28)
    slices = param_slices(model)
    _, wall, steps = prune_finetune(model, 95, Split(tr.x[:3000], tr.y[:3000]), TrainConfig(epochs=1, lr=0.01),
                                    device=torch.device("cpu"))
    assert steps == 24 and wall > 0
    assert sparsity(flat_params(model), slices) == pytest.approx(0.95, abs=1e-5)
    _, wall, steps = prune_finetune(model, 95, Split(tr.x[:3000], tr.y[:3000]), TrainConfig(epochs=1, lr=0.01),
                                    wall_seconds=0.3, device=torch.device("cpu"))
    assert 0.3 <= wall < 2.0 and 0 < steps < 24000
    # under a cosine the equal-time run anneals inside its budget: its rate falls from the peak to about 0 (a budget
    # of 2 s, so that one slow step on a loaded machine, 0.17 s seen, cannot end it with the rate still at a quarter)
    lrs = []
    prune_finetune(model, 95, Split(tr.x[:3000], tr.y[:3000]), TrainConfig(epochs=1, lr=0.01, schedule="cosine"),
                   wall_seconds=2.0, device=torch.device("cpu"), step_callbacks=[lambda st: lrs.append(st.lr)])
    assert lrs[0] == pytest.approx(0.01, rel=0.05) and lrs[-1] < 0.0005
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert len(lrs) > 24  # past cfg.epochs (1 epoch, 24 steps): a wall-time run's length is its time


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


def _drive(plan, fidelity_of):
    """Run a schedule against a fidelity that depends only on the stage's sparsity; returns its history."""
    for _ in range(200):
        p = plan.propose()
        if p is None:
            return plan.history
        plan.report(fidelity_of(p))
    raise AssertionError("the schedule did not finish")


def test_adaptive_schedule_spaces_stages_in_log_density_and_ends_on_the_level():
    import math

    from geodesic_core.sparsify import AdaptiveSchedule

    hist = _drive(AdaptiveSchedule(99, stages=5), lambda p: 100.0)  # nothing lost: the largest steps throughout
    ps = [p for p, _, ok in hist]
    assert all(ok for _, _, ok in hist) and len(ps) == 5 and ps[-1] == 99
    logs = [math.log1p(-p / 100) for p in [0.0, *ps]]
    assert [b - a for a, b in zip(logs, logs[1:])] == pytest.approx([math.log(0.01) / 5] * 5)


def test_adaptive_schedule_shortens_and_retries_where_the_function_falls():
    import math

    from geodesic_core.sparsify import AdaptiveSchedule

    def fidelity(p):  # the network's agreement falls steeply above 95% sparsity
        return 100.0 - max(0.0, p - 95.0) * 2.0

    plan = AdaptiveSchedule(99, stages=5, tolerance=0.3, max_stages=40)
    hist = _drive(plan, fidelity)
    accepted = [(p, f) for p, f, ok in hist if ok]
    rejected = [(p, f) for p, f, ok in hist if not ok]
    assert accepted[-1][0] == 99 and [p for p, _ in accepted] == sorted(p for p, _ in accepted)
    assert rejected, "a stage that lost more than 2 x tolerance must be rejected"
    for i, (p, f, ok) in enumerate(hist):
        if not ok:  # the retry is shorter: between the last accepted stage and the rejected one
            before = max([q for q, _, good in hist[:i] if good] or [0.0])
            assert before < hist[i + 1][0] < p
    steps = [b[0] - a[0] for a, b in zip(accepted, accepted[1:])]
    assert len(accepted) > 5 and steps[-1] < steps[0]  # more, smaller stages near the target
    for a, b in zip([(0.0, 100.0), *accepted], accepted):  # a larger fall is kept only at the smallest step
        du = abs(math.log1p(-b[0] / 100) - math.log1p(-a[0] / 100))
        assert a[1] - b[1] <= 2 * 0.3 + 1e-9 or du <= 1.5 * plan.a_min
    # deterministic: the same fidelities give the same proposals (a resumed flow finds them cached)
    assert _drive(AdaptiveSchedule(99, stages=5, tolerance=0.3, max_stages=40), fidelity) == hist


def test_adaptive_schedule_always_finishes_and_rejects_bad_settings():
    from geodesic_core.sparsify import AdaptiveSchedule, FixedSchedule

    hist = _drive(AdaptiveSchedule(90, stages=2, tolerance=0.1, max_stages=6), lambda p: 100.0 - p)  # always falls
    assert hist[-1][0] == 90 and sum(ok for *_, ok in hist) <= 6  # the smallest step is always accepted
    for bad in ({"tolerance": 0.0}, {"stages": 5, "max_stages": 4}):
        with pytest.raises(InputError):
            AdaptiveSchedule(90, **bad)
    with pytest.raises(InputError):
        AdaptiveSchedule(100.0)
    with pytest.raises(RuntimeError):
        AdaptiveSchedule(90).report(99.0)
    assert [p for p, *_ in _drive(FixedSchedule([10.0, 20.0]), lambda p: 0.0)] == [10.0, 20.0]


def test_adaptive_schedule_never_retries_a_rejected_stage_at_the_same_level():
    """A rejection must lead to a shorter stage; where none exists (the smallest step, or the level itself
    again), the stage is kept instead of being run twice."""
    import random

    from geodesic_core.sparsify import AdaptiveSchedule

    rng = random.Random(0)
    for trial in range(300):
        stages, extra = rng.randint(1, 6), rng.randint(0, 10)
        level = rng.choice([80.0, 90.0, 95.0, 98.0, 99.0, 99.1])
        plan = AdaptiveSchedule(level, stages=stages, tolerance=0.3, max_stages=stages + extra)
        fid = [100.0]

        def fidelity(p):  # falls by 0-2 points a stage, at random
            return fid[0] - rng.uniform(0.0, 2.0)

        while (p := plan.propose()) is not None:
            f = fidelity(p)
            if plan.report(f):
                fid[0] = f
        hist = plan.history
        for (p0, _, ok), (p1, _, _) in zip(hist, hist[1:]):
            assert ok or p1 < p0, (trial, hist)
        assert hist[-1][0] == level and hist[-1][2]


def test_prediction_agreement_is_label_free_and_exact():
    from geodesic_core.sparsify import prediction_agreement

    torch.manual_seed(0)
    a = build_model("lenet300", 10, 1, 28)
    x = torch.randn(300, 1, 28, 28)
    assert prediction_agreement(a, a, x, batch_size=128) == 100.0
    b = build_model("lenet300", 10, 1, 28)
    with torch.no_grad():
        expected = 100.0 * float((a(x).argmax(1) == b(x).argmax(1)).float().mean())
    assert prediction_agreement(a, b, x, batch_size=128) == pytest.approx(expected)


def test_run_schedule_undoes_a_rejected_stage_and_continues_from_the_previous_end():
    """A stage that wrecks the function is undone (weights back to the previous stage's end, step count
    unchanged) and retried shorter; accepted stages continue the path."""
    from geodesic_core.sparsify import AdaptiveSchedule, StageResult, run_schedule

    torch.manual_seed(0)
    dense = build_model("lenet300", 10, 1, 28).requires_grad_(False)
    model = build_model("lenet300", 10, 1, 28)
    model.load_state_dict(dense.state_dict())
    probe = torch.randn(500, 1, 28, 28)
    calls, rejected = [], []

    def run_stage(p_k, start, attempt):
        calls.append((p_k, start, attempt))
        if attempt == 0:  # the first, largest stage scrambles the network: far more than 2 x 0.3 points lost
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_()
        return StageResult(attempt, p_k, 7, "reached", 0.0, 1.0)

    accepted = run_schedule(model, AdaptiveSchedule(90, stages=2, tolerance=0.3, max_stages=8), run_stage, dense,
                            probe, on_reject=rejected.append)
    assert len(rejected) == 1 and rejected[0].target_sparsity == calls[0][0]
    assert calls[1][0] < calls[0][0] and calls[1][1] == 0  # retried shorter, from step 0 again
    assert [c[1] for c in calls[1:]] == [7 * i for i in range(len(accepted))]  # accepted stages continue the count
    assert accepted[-1].target_sparsity == 90
    for name, t in dense.state_dict().items():  # only the undone stage changed anything
        assert torch.equal(model.state_dict()[name], t)


@pytest.mark.parametrize("level,loss", [(95, {}), (97, {"lr": 0.1, "temperature": 2.0})], ids=["logits", "tempered"])
def test_closing_correction_keeps_the_mask_and_pulls_the_outputs_back(data_dir, level, loss):
    """`polish`: masked distillation toward the dense outputs after the final projection, on the logits (at
    geo.distill_lr) or on the softmax at T = 2 (the sparsify flow's default loss and rate); the zeros stay
    exactly zero, that loss to the dense network falls by half, and the accuracy rises above the projection's."""
    import copy

    from geodesic_core import evaluate, load_split, train
    from geodesic_core.sparsify import polish
    from geodesic_core.train import distillation_loss

    tr, te = load_split("mnist", True, data_dir), load_split("mnist", False, data_dir)
    x, test = tr.x[:10000], Split(te.x[:2000], te.y[:2000])
    torch.manual_seed(0)
    dense = build_model("lenet300", 10, 1, 28)
    train(dense, Split(x, tr.y[:10000]), TrainConfig(epochs=2, lr=0.05), device=torch.device("cpu"))
    dense.requires_grad_(False)
    model = copy.deepcopy(dense).requires_grad_(True)
    oneshot_prune(model, param_slices(model), level)
    zeros = flat_params(model) == 0

    def gap(m):
        with torch.no_grad():
            return float(distillation_loss(m(test.x), dense(test.x), loss.get("temperature", 0.0)))

    before, acc_before = gap(model), evaluate(model, test)[0]
    seconds = polish(model, dense, x, level, GeoConfig(distill_lr=0.003), 1, device=torch.device("cpu"), **loss)
    assert seconds > 0 and torch.equal(flat_params(model) == 0, zeros)
    assert gap(model) < 0.5 * before and evaluate(model, test)[0] > acc_before + 1
    assert polish(model, dense, x, level, GeoConfig(), 0) == 0.0  # 0 epochs: off


def test_distillation_loss_is_the_logit_distance_or_the_tempered_kl_with_its_gradient():
    """`distillation_loss`: at T = 0 half the mean squared logit distance; at T > 0 T² KL(p_teacher ‖ p_student)
    of the softmaxes at T, zero where the logits agree up to a shift, with the logit gradient T (p_s − p_t) / B."""
    from geodesic_core.train import distillation_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 10, generator=g, dtype=torch.float64), torch.randn(5, 10, generator=g, dtype=torch.float64)
    assert torch.allclose(distillation_loss(s, t), 0.5 * (s - t).pow(2).sum(-1).mean())
    for T in (1.0, 2.0, 4.0):
        p_t, p_s = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
        kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * T * T
        x = s.clone().requires_grad_(True)
        loss = distillation_loss(x, t, T)
        assert torch.allclose(loss, kl)
        loss.backward()
        assert torch.allclose(x.grad, T * (p_s - p_t) / 5)
        assert float(distillation_loss(t + 3.0, t, T)) < 1e-12  # a shift of every logit changes no softmax
    assert float(distillation_loss(t + 3.0, t)) > 1  # the logit distance sees it


def test_closing_correction_keeps_removed_filters_and_their_batch_norm_at_zero():
    """Structured: the removed filters' weights, bias and batch-norm scale and shift stay zero, so the channels
    stay exactly zero whatever the statistics."""
    from conftest import tiny_cnn_bn
    from geodesic_core.sparsify import polish, project_to_level

    dense = tiny_cnn_bn().requires_grad_(False)
    model = tiny_cnn_bn()
    project_to_level(model, 2, structured=True, layer="0")
    removed = (model[0].weight.detach().flatten(1).abs().sum(1) == 0).nonzero().flatten()
    assert removed.numel() == 2
    polish(model, dense, torch.randn(64, 2, 4, 4), 2, GeoConfig(distill_lr=0.01, distill_batch=16), 2,
           structured=True, layer="0", device=torch.device("cpu"))
    for p in (model[0].weight, model[0].bias, model[1].weight, model[1].bias):
        assert p.detach()[removed].abs().sum() == 0
    model.eval()
    with torch.no_grad():
        assert model[2](model[1](model[0](torch.randn(3, 2, 4, 4))))[:, removed].abs().sum() == 0
    assert not torch.equal(model[5].weight, dense[5].weight)  # the rest trained


def test_the_baselines_schedule_reaches_their_training_config():
    from geodesic_core.sparsify import FinetuneConfig

    cfg = FinetuneConfig(schedule="constant", lr=0.02, distill_lr=0.1)
    assert cfg.train_config(3, 5).model_dump(include={"schedule", "lr", "epochs", "seed"}) == {
        "schedule": "constant", "lr": 0.02, "epochs": 5, "seed": 3}
    assert cfg.train_config(3, distill=True).lr == 0.1 and FinetuneConfig().train_config(0).schedule == "cosine"
    with pytest.raises(ValueError, match="constant"):
        FinetuneConfig(schedule="linear")
