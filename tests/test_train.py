import time

import pytest
import torch

from geodesic_core import TrainConfig, build_model, evaluate, flat_params, load_split, recompute_bn, train


def test_lenet300_trains_past_97_percent_on_mnist(data_dir):
    tr, te = load_split("mnist", True, data_dir), load_split("mnist", False, data_dir)
    torch.manual_seed(0)
    model = build_model("lenet300", 10, 1, 28)
    train(model, tr, TrainConfig(epochs=3, lr=0.05, seed=0), device=torch.device("cpu"))
    acc, loss = evaluate(model, te)
    assert acc > 97.0 and loss < 0.1


def test_training_is_bit_reproducible_on_cpu(data_dir):
    tr = load_split("mnist", True, data_dir)
    sub = type(tr)(tr.x[:2000], tr.y[:2000])
    ws = []
    for _ in range(2):
        torch.manual_seed(1)
        m = build_model("lenet300", 10, 1, 28)
        train(m, sub, TrainConfig(epochs=1, seed=3), device=torch.device("cpu"))
        ws.append(flat_params(m))
    assert torch.equal(ws[0], ws[1])


def test_masked_training_keeps_zeros(data_dir):
    tr = load_split("mnist", True, data_dir)
    sub = type(tr)(tr.x[:1000], tr.y[:1000])
    m = build_model("lenet300", 10, 1, 28)
    mask = (torch.rand_like(m[1].weight) > 0.5).float()
    with torch.no_grad():
        m[1].weight.mul_(mask)
    train(m, sub, TrainConfig(epochs=1), masks={"1.weight": mask}, device=torch.device("cpu"))
    assert (m[1].weight[mask == 0] == 0).all()


def test_the_schedule_spans_schedule_steps_or_wall_seconds_when_given(data_dir):
    """A cosine over 4 steps, cut at those 4, anneals to near 0; by default it spans the whole epoch (8 steps of 64
    images), so the same 4 steps end at half the peak rate. A wall-time run (``wall_seconds``) trains past
    ``cfg.epochs`` until its time is spent, annealing inside that time; its steps report no total, and its final
    step is marked the last."""
    import math

    tr = load_split("mnist", True, data_dir)
    sub = type(tr)(tr.x[:512], tr.y[:512])
    cfg = TrainConfig(epochs=1, lr=0.1, batch_size=64, schedule="cosine")
    for span, want in ((4, [0.05 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]),
                       (None, [0.05 * (1 + math.cos(math.pi * k / 8)) for k in range(4)])):
        lrs = []
        steps = train(build_model("lenet300", 10, 1, 28), sub, cfg, max_batches=4, schedule_steps=span,
                      step_callbacks=[lambda st: lrs.append(st.lr)], device=torch.device("cpu"))
        assert steps == 4 and lrs == pytest.approx(want)
    with pytest.raises(ValueError, match="schedule_steps"):
        train(build_model("lenet300", 10, 1, 28), sub, cfg, schedule_steps=0, device=torch.device("cpu"))
    for bad in (dict(wall_seconds=0.0), dict(wall_seconds=1.0, schedule_steps=4)):
        with pytest.raises(ValueError, match="wall_seconds"):
            train(build_model("lenet300", 10, 1, 28), sub, cfg, device=torch.device("cpu"), **bad)
    with pytest.raises(ValueError, match="empty"):
        train(build_model("lenet300", 10, 1, 28), type(tr)(tr.x[:0], tr.y[:0]), cfg, wall_seconds=1.0,
              device=torch.device("cpu"))
    # over wall time: a cosine spanning 0.4 s, run for those 0.4 s from a 1-epoch config, goes past that epoch's 8
    # steps and ends near 0
    seen = []
    t0 = time.perf_counter()
    steps = train(build_model("lenet300", 10, 1, 28), sub, cfg, wall_seconds=0.4, step_callbacks=[seen.append],
                  device=torch.device("cpu"))
    wall = time.perf_counter() - t0
    lrs = [st.lr for st in seen]
    assert 0.4 <= wall < 2.0 and steps == len(seen) > 8
    assert lrs[0] == pytest.approx(0.1, rel=0.05) and lrs[-1] < 0.005
    assert all(st.total is None for st in seen) and [st.last for st in seen] == [False] * (steps - 1) + [True]


def test_batchnorm_statistics_are_recomputed():
    torch.manual_seed(0)
    m = build_model("vgg11", 10, 3, 32).eval()
    x = 3.0 + 2.0 * torch.randn(64, 3, 32, 32)
    recompute_bn(m, x)
    bn = m.features[1]
    conv_out = m.features[0](x)
    assert torch.allclose(bn.running_mean, conv_out.mean((0, 2, 3)), atol=1e-3)
    assert not m.training  # the caller's mode is restored


def test_epochs_run_count_a_short_last_batch_as_a_step():
    from geodesic_core.train import epochs_run

    assert epochs_run(10, 100, 32) == 2.5  # 4 steps an epoch, the last of 4 images
    assert epochs_run(3, 96, 32) == 1.0 and epochs_run(0, 96, 32) == 0.0


def test_evaluation_builds_no_autograd_graph():
    """evaluate runs under no_grad (a graph per test batch would cost memory and time for nothing)."""
    seen = []

    class Probe(torch.nn.Linear):
        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return super().forward(x.flatten(1))

    x, y = torch.randn(50, 1, 2, 2), torch.randint(0, 3, (50,))
    acc, loss = evaluate(Probe(4, 3), (x, y), batch_size=20)
    assert seen == [False, False, False] and 0 <= acc <= 100 and loss > 0


def test_diverging_training_stops_with_an_error_that_names_the_learning_rate():
    """A learning rate that sends the loss to NaN/Inf stops training at the end of that epoch instead of
    returning a network of NaN weights."""
    from geodesic_core.errors import NonFiniteError
    from geodesic_core.data import Split

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    data = Split(100 * torch.randn(64, 6), torch.randint(0, 3, (64,)))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    with pytest.raises(NonFiniteError, match="learning rate 10"):
        train(model, data, TrainConfig(epochs=5, lr=10.0, batch_size=16), teacher=teacher)
    steps = train(model := torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3)), data,
                  TrainConfig(epochs=2, lr=1e-4, batch_size=16), teacher=teacher)
    assert steps == 8 and torch.isfinite(flat_params(model)).all()
