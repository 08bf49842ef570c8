"""The deep-network half: width / depth of the paper's CIFAR networks, the CIFAR recipe, the structured
experiment's pieces (chunked Gram matrix, iterative prune-train, the physically smaller export) and
`benchmarks/cifar.py` end to end on a few hundred real CIFAR-10 images."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from geodesic_core import (FilterTarget, GeoConfig, InputError, TrainConfig, build_model, flat_params, gram_matrix,
                           load_model, load_split, save_checkpoint, set_flat_params)
from geodesic_core.config import cifar_recipe
from geodesic_core.connect import ConnectConfig
from geodesic_core.sparsify import SparsifyConfig
from geodesic_core.data import Split
from geodesic_core.geo import geo_step_passes
from geodesic_core.sparsify import iterative_prune_train, prune_finetune
from geodesic_core.structured import compact_filters, removed_filters
from geodesic_core.train import _lr_at, train

ROOT = Path(__file__).resolve().parents[1]


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_width_scales_every_layer_and_depth_selects_the_family_member():
    full, quarter = build_model("vgg11", 10, 3, 32), build_model("vgg11", 10, 3, 32, width=0.25)
    assert [c.out_channels for c in _convs(quarter)] == [round(c.out_channels / 4) for c in _convs(full)]
    assert quarter.features[0].out_channels == 16 and quarter.classifier.in_features == 128
    assert build_model("vgg16", 10, 3, 32, width=0.5).features[0].out_channels == 32
    r20 = build_model("resnet164", 10, 3, 32, width=0.5, depth=20)
    assert len(r20.blocks) == 6 and r20.conv1.out_channels == 8 and r20.fc.in_features == 128
    assert len(build_model("resnet164", 10, 3, 32).blocks) == 54  # ResNet-164: 18 bottlenecks per stage
    x = torch.randn(2, 3, 32, 32)
    for m in (quarter, r20):
        assert m(x).shape == (2, 10)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "vgg11", "width": 0.0}, "positive channel multiplier"),
    ({"name": "vgg11", "width": -1.0}, "positive channel multiplier"),
    ({"name": "vgg11", "width": float("nan")}, "positive channel multiplier"),
    ({"name": "vgg11", "width": 0.005}, "without any"),
    ({"name": "lenet300", "width": 0.5}, "no width option"),
    ({"name": "vgg16", "depth": 20}, "no depth option"),
    ({"name": "resnet164", "depth": 21}, "9n \\+ 2"),
    ({"name": "resnet164", "depth": 2}, "9n \\+ 2"),
])
def test_bad_architecture_options_are_refused(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(InputError, match=match):
        build_model(name, 10, 3, 32, **kwargs)


def test_configs_carry_width_and_depth_and_scale_the_filter_count():
    cfg = SparsifyConfig(model="vgg11", dataset="cifar10", width=0.25, structured=True, n_filters=12)
    assert cfg.arch() == {"width": 0.25} and cfg.model_dump()["width"] == 0.25
    assert SparsifyConfig().arch() == {}  # default networks keep their cache keys and checkpoints
    assert ConnectConfig(model="resnet164", dataset="cifar10", depth=20).arch() == {"depth": 20}
    with pytest.raises(ValueError, match="between 1 and 15"):
        SparsifyConfig(model="vgg11", dataset="cifar10", width=0.25, structured=True, n_filters=16)


def test_checkpoints_record_the_architecture_options(tmp_path):
    model = build_model("resnet164", 10, 3, 32, seed=0, width=0.25, depth=11)
    meta = {"model": "resnet164", "num_classes": 10, "in_channels": 3, "image_size": 32, "width": 0.25, "depth": 11}
    save_checkpoint(tmp_path / "r.pt", model, meta)
    loaded, _ = load_model(tmp_path / "r.pt", expect_arch={"width": 0.25, "depth": 11})
    assert torch.equal(flat_params(loaded), flat_params(model))
    with pytest.raises(InputError, match="--width / --depth"):
        load_model(tmp_path / "r.pt", expect_arch={})


def test_cifar_recipe_schedule_and_options():
    cfg = cifar_recipe(epochs=10, lr=0.1)
    assert cfg.nesterov and cfg.schedule == "onecycle" and cfg.weight_decay == 5e-4 and cfg.precision == "bf16"
    lrs = [_lr_at(cfg, e) for e in (0.0, 1.5, 5.0, 10.0)]
    assert math.isclose(lrs[0], 0.004) and math.isclose(lrs[1], 0.1) and 0 < lrs[2] < 0.1 and lrs[3] == 0.0
    with pytest.raises(ValueError, match="Nesterov"):
        TrainConfig(nesterov=True, momentum=0.0)


@pytest.fixture(scope="module")
def cifar_small(data_dir) -> tuple[Split, Split]:
    """A few hundred real CIFAR-10 images (the reconstruction in ../shared/data)."""
    tr, te = load_split("cifar10", True, data_dir), load_split("cifar10", False, data_dir)
    assert tr.x.shape == (50000, 3, 32, 32) and te.x.shape == (10000, 3, 32, 32)
    assert abs(float(tr.x.mean())) < 0.05 and abs(float(tr.x.std()) - 1) < 0.05  # normalized per channel
    return Split(tr.x[:384].clone(), tr.y[:384].clone()), Split(te.x[:200].clone(), te.y[:200].clone())


def test_training_with_the_recipe_learns_on_real_cifar(cifar_small):
    tr, _ = cifar_small
    model = build_model("vgg11", 10, 3, 32, seed=0, width=0.125)
    before = nn.functional.cross_entropy(model.eval()(tr.x), tr.y).item()
    train(model, tr, cifar_recipe(epochs=6, lr=0.05, batch_size=64), augment=True, device=torch.device("cpu"))
    after = nn.functional.cross_entropy(model.eval()(tr.x), tr.y).item()
    assert after < before - 0.2


def test_chunked_gram_matrix_equals_the_one_block_gram_matrix():
    torch.manual_seed(0)
    model = build_model("vgg11", 10, 3, 32, width=0.0625).eval()
    x = torch.randn(3, 3, 32, 32)
    full = gram_matrix(model, x)
    chunked = gram_matrix(model, x, max_elements=3 * 10 * 9 * 32)  # one output channel at a time in the widest layers
    assert torch.allclose(full, chunked, rtol=1e-5, atol=1e-6 * float(full.abs().max()))  # float32 blocks


def test_gram_matrix_rules_agree_on_strided_and_pointwise_convolutions():
    """The pre-activation ResNet's strided 3x3 and 1x1 convolutions: the kernel rule, forced on every layer, gives
    the direct rule's Gram matrix (the unit tests draw patches at random; here they come from unfold)."""
    torch.manual_seed(0)
    model = build_model("resnet164", 10, 3, 32, depth=11, width=0.25).eval()
    assert any(m.stride != (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert any(m.kernel_size == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(3, 3, 32, 32)
    direct = gram_matrix(model, x, conv_rule="direct")
    for rule in ("kernel", "auto"):
        K = gram_matrix(model, x, conv_rule=rule)
        assert torch.allclose(K, direct, rtol=1e-5, atol=1e-6 * float(direct.abs().max())), rule


def test_geo_step_pass_count_follows_the_implementation():
    cg = GeoConfig(solver="cg", cg_iters=10, anchor=0.0)
    assert geo_step_passes(cg, 64, 10) == 64 * 22
    assert geo_step_passes(cg.model_copy(update={"anchor": 1.0}), 64, 10, masked=True) == 64 * 22 + 64 * 23 + 64
    ex = GeoConfig(solver="exact", anchor=0.0, distill_steps=5, distill_batch=128)
    assert geo_step_passes(ex, 64, 10) == 64 * 14 + 3 * 5 * 128 + 64


def _with_bn_stats(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    return model.eval()


def test_compact_export_removes_filters_physically_with_equal_outputs(tmp_path):
    model = _with_bn_stats(build_model("vgg11", 10, 3, 32, seed=0, width=0.25))
    target = FilterTarget(model, "features.0", 12)
    set_flat_params(model, target.project(flat_params(model)))
    assert removed_filters(model, "features.0").numel() == 12
    small, removed = compact_filters(model, "features.0")
    assert removed == 12 and small.features[0].out_channels == 4 and small.features[1].num_features == 4
    assert all(not m.training for m in small.modules())
    assert small.features[4].in_channels == 4  # features.3 is the max-pool; the next conv's inputs shrink
    n_big, n_small = (sum(p.numel() for p in m.parameters()) for m in (model, small))
    assert n_big - n_small == 12 * (27 + 1 + 2) + 12 * 9 * small.features[4].out_channels
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert float((model(x) - small(x)).abs().max()) <= 1e-5
    meta = {"model": "vgg11", "num_classes": 10, "in_channels": 3, "image_size": 32, "width": 0.25,
            "compact_layer": "features.0", "compact_kept": 4}
    save_checkpoint(tmp_path / "small.pt", small, meta)
    loaded, _ = load_model(tmp_path / "small.pt")
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), small(x))
    with pytest.raises(InputError, match="no filter"):
        compact_filters(build_model("vgg11", 10, 3, 32, width=0.25), "features.0")
    with pytest.raises(InputError, match="nn.Sequential"):
        compact_filters(build_model("resnet164", 10, 3, 32, depth=11, width=0.25), "conv1")


def test_iterative_prune_train_removes_one_filter_per_cycle(cifar_small):
    tr, _ = cifar_small
    model = build_model("vgg11", 10, 3, 32, seed=0, width=0.125)
    cycles = []
    cfg = cifar_recipe(epochs=1, lr=0.01, batch_size=64).model_copy(update={"schedule": "constant"})
    iterative_prune_train(model, "features.0", 3, tr, cfg, epochs_per_filter=0.5, device=torch.device("cpu"),
                          callbacks=[cycles.append])
    assert [c.filters for c in cycles] == [1, 2, 3]
    assert [round(c.epochs, 6) for c in cycles] == [0.5, 1.0, 1.5]  # 3 of 6 batches per cycle
    assert removed_filters(model, "features.0").numel() == 3  # bias and batch norm stayed zero through training
    one_shot = build_model("vgg11", 10, 3, 32, seed=0, width=0.125)
    prune_finetune(one_shot, 3, tr, cfg, structured=True, layer="features.0", device=torch.device("cpu"))
    assert removed_filters(one_shot, "features.0").numel() == 3
    with pytest.raises(InputError, match="between 1 and 7"):
        iterative_prune_train(model, "features.0", 8, tr, cfg, epochs_per_filter=0.5)


def test_prune_train_cosine_anneals_within_every_cycle(cifar_small):
    """Under a cosine the rate restarts at its peak every cycle and ends each cycle's 3 steps near 0 (the schedule
    spans the cycle's steps, not the whole epoch the cycle is cut from)."""
    tr, _ = cifar_small
    model = build_model("vgg11", 10, 3, 32, seed=0, width=0.125)
    cfg = cifar_recipe(epochs=1, lr=0.01, batch_size=64).model_copy(update={"schedule": "cosine"})
    steps = []
    iterative_prune_train(model, "features.0", 2, tr, cfg, epochs_per_filter=0.5, device=torch.device("cpu"),
                          step_callbacks=[steps.append])
    lrs = [st.lr for st in steps]
    cosine = [0.005 * (1 + math.cos(math.pi * k / 3)) for k in range(3)]
    assert lrs == pytest.approx(cosine + cosine)
    assert all(st.total == 3 for st in steps)


def test_prune_train_for_wall_time_gives_every_cycle_its_share(cifar_small):
    """The equal-time prune-train: each of 2 cycles trains for half of the budget, past its 0.5 epoch, annealing
    its cosine to near 0 inside its share; the time the cycle callbacks take (a pause of half the budget each) is
    not counted. The budget is sized from a measured step (at least 15 steps a cycle), so a loaded machine's
    slower steps change the budget, not the outcome."""
    tr, _ = cifar_small
    model = build_model("vgg11", 10, 3, 32, seed=0, width=0.125)
    cfg = cifar_recipe(epochs=1, lr=0.01, batch_size=64).model_copy(update={"schedule": "cosine"})
    probe = build_model("vgg11", 10, 3, 32, seed=0, width=0.125)
    train(probe, tr, cfg, max_batches=1)  # warm-up
    t = time.perf_counter()
    train(probe, tr, cfg, max_batches=3)
    budget = max(1.2, 2 * 15 * (time.perf_counter() - t) / 3)
    steps, cycles = [], []

    def cycle(info):
        cycles.append(info)
        time.sleep(budget / 2)

    _, wall, n = iterative_prune_train(model, "features.0", 2, tr, cfg, epochs_per_filter=0.5, wall_seconds=budget,
                                       device=torch.device("cpu"), step_callbacks=[steps.append],
                                       callbacks=[cycle])
    assert n == len(steps) > 2 * 3  # more than the 3 steps of half an epoch each cycle
    assert budget <= wall < 1.5 * budget and cycles[-1].seconds == pytest.approx(wall, abs=0.05)  # pauses: +1x
    assert budget / 2 <= cycles[0].seconds < budget
    restart = next(i for i, st in enumerate(steps) if i and st.step < steps[i - 1].step)  # the second cycle's start
    for run in (steps[:restart], steps[restart:]):
        assert run[0].lr == pytest.approx(0.01, rel=0.05) and run[-1].lr < 0.002 and run[-1].last
    with pytest.raises(InputError, match="wall_seconds"):
        iterative_prune_train(model, "features.0", 2, tr, cfg, wall_seconds=0.0)


@pytest.mark.parametrize("argv, match", [
    (["--stage-max-steps", "-1"], "--stage-max-steps must be positive"),
    (["--struct-anchor-radius", "-0.5"], "--struct-anchor-radius must be 0 or more"),
    (["--struct-metric-batch", "0"], "--struct-metric-batch must be positive"),
    (["--peer-schedule", "linear"], "--peer-schedule: unknown 'linear'; valid: cosine, constant"),
    (["--width", "0"], "--width must be positive"),
    (["--relax-epochs", "-1"], "--relax-epochs must be 0 or more"),
    (["--connect-distill-radius", "-1"], "--connect-distill-radius must be 0 or more"),
    (["--relax-lr", "0"], "--relax-lr must be positive"),
    (["--relax-temperature", "-1"], "--relax-temperature must be 0 or more"),
    (["--polish-lr", "0"], "--polish-lr must be positive"),
    (["--distill-temperature", "-2"], "--distill-temperature must be 0 or more"),
    (["--polish-temperature", "-1"], "--polish-temperature must be 0 or more"),
    (["--connect-anchor", "1.5"], r"--connect-anchor must lie in \[0, 1\]"),
    (["--line-points", "1"], "--line-points must be at least 2"),
    (["--validation", "50000"], "--validation must leave training images"),
    (["--validation", "-5"], "--validation must be 0 or more"),
    (["--methods", "geodesic,prune"], r"--methods: unknown \['prune'\]; valid: geodesic, prune-train"),
    (["--paths", "line"], r"--paths: unknown \['line'\]"),
    (["--experiments", "structured,vgg19"], r"--experiments: unknown \['vgg19'\]"),
])
def test_cifar_benchmark_refuses_bad_settings_before_any_work(tmp_path, argv, match):
    """A bad setting stops the run before the data is read or a network trained: nothing is written."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cifar

    out = tmp_path / "out"
    s = cifar.parse(["--data-dir", str(tmp_path / "no-data"), "--out", str(out), *argv])
    with pytest.raises(SystemExit, match=match):
        cifar.run(s)
    assert not out.exists()  # refused before the missing data directory was even looked at


@pytest.mark.parametrize("given", ["1,1", "1", "1,2,3", "a,b", "-1,2"])
def test_cifar_benchmark_refuses_a_bad_seed_pair(given, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cifar

    assert cifar.parse(["--seeds", "2,3"]).seeds == (2, 3)
    with pytest.raises(SystemExit):
        cifar.parse([f"--seeds={given}"])
    assert "--seeds must be two distinct non-negative integers" in capsys.readouterr().err


@pytest.mark.slow
def test_cifar_benchmark_runs_end_to_end(tmp_path, data_dir, capsys):
    """`benchmarks/cifar.py`: both experiments, start to finish, on 512 training images at tiny widths."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cifar

    s = cifar.parse(["--data-dir", data_dir, "--n-train", "512", "--n-test", "256", "--width", "0.0625",
                     "--resnet-width", "0.25", "--resnet-depth", "11", "--structured-train-epochs", "1",
                     "--connect-train-epochs", "1", "--stages", "2", "--stage-steps", "4", "--geo-steps", "4",
                     "--connect-distill-steps", "2", "--relax-epochs", "1", "--relax-nodes", "2",
                     "--bezier-epochs", "1", "--finetune-epochs", "1", "--line-points", "3", "--eval-points", "2",
                     "--probe", "64", "--metric-batch", "32", "--struct-metric-batch", "16", "--device", "cpu",
                     "--out", str(tmp_path)])
    results = cifar.run(s)
    assert set(results) == set(cifar.EXPERIMENTS)
    st = json.loads((tmp_path / "structured.json").read_text())
    # the cpu profile runs every peer a second time for the geodesic's wall time
    assert set(st["curves"]) == {"geodesic", "prune-train", "oneshot+finetune", "oneshot+distill",
                                 "prune-train, equal time", "oneshot+finetune, equal time",
                                 "oneshot+distill, equal time"}
    assert st["export"]["max_output_difference"] <= 1e-5 and st["export"]["filters_removed"] == 3
    assert st["peer_schedule"] == "cosine"  # the peers anneal, as the geodesic's closing correction does
    # the label-free peer on the tempered loss, the closing correction on the logits (each as chosen on held-out images)
    assert (st["distill_temperature"], st["distill_lr"]) == (2, 0.05)
    assert (st["polish_temperature"], st["polish_lr"]) == (0, 0.003)
    # Algorithm 1: each stage runs until it reaches its target (at most 8 x 4 steps), its correction bounded
    assert st["geo"]["max_steps"] == 32 and st["geo"]["anchor_radius"] == 1.0
    # its own metric batch (the connect experiments keep --metric-batch), counted on the epochs axis
    assert st["geo"]["metric_batch"] == 16
    assert st["geo"]["epochs_per_step"] == geo_step_passes(GeoConfig(**{
        k: v for k, v in st["geo"].items() if k != "epochs_per_step"}), 16, 10, masked=True) / (2 * 512)
    # ... then the closing correction (2 epochs of masked distillation), which keeps the filters removed
    assert [r["stop_reason"] for r in st["curves"]["geodesic"][1:]] == ["reached", "reached",
                                                                       "closing correction, 2 epochs"]
    geo_rows = st["curves"]["geodesic"]
    assert geo_rows[-1]["epochs"] == pytest.approx(geo_rows[-2]["epochs"] + 2) and geo_rows[-1]["filters"] == 3
    assert st["curves"]["prune-train"][-1]["filters"] == st["curves"]["prune-train, equal time"][-1]["filters"] == 3
    geo_seconds = st["geodesic_seconds"]
    assert geo_seconds == st["curves"]["geodesic"][-1]["seconds"]
    # each method says the load it ran under (the machine's CPU use, and this process's share of it, which counts
    # in the machine's: compared on the geodesic's row, the longest; the shortest rows last a few of the kernel's
    # 10 ms ticks, which can put the process a few points above the machine)
    assert all(0 < rows[-1]["machine_cpu_percent"] <= 100 and 0 < rows[-1]["process_cpu_percent"] <= 110
               for rows in st["curves"].values())
    geo_load = st["curves"]["geodesic"][-1]
    assert geo_load["process_cpu_percent"] <= geo_load["machine_cpu_percent"] + 5
    # every equal-time peer trains for the geodesic's whole time (evaluation excluded), however many epochs fit
    for m in ("prune-train", "oneshot+finetune", "oneshot+distill"):
        last = st["curves"][f"{m}, equal time"][-1]
        assert geo_seconds <= last["seconds"] <= 1.5 * geo_seconds + 5, m
        assert last["epochs"] > 0 and last["filters"] == st["curves"][m][-1]["filters"] == 3
    log = capsys.readouterr().out
    for name, model in (("vgg16-connect", "vgg16"), ("resnet-connect", "resnet164")):
        r = json.loads((tmp_path / f"{name}.json").read_text())
        assert r["model"] == model
        assert set(r["paths"]) == {"linear", "bezier", "bezier-distill", "geodesic", "geodesic, relaxed",
                                   "bezier, equal time", "bezier-distill, equal time"}
        assert r["paths"]["geodesic"]["end_distance_ratio"] < 1e-6  # the path reaches w_2
        # ... with its correctors on and moving sideways only, so it needs no completion step
        assert r["geo"]["keep_progress"] and r["geo"]["distill_steps"] > 0
        assert r["geo"]["distill_radius"] == 0.0  # the corrector's whole move unbounded unless asked
        assert r["paths"]["geodesic"]["completion_steps"] == 0
        for p in r["paths"].values():
            assert 0 <= p["min"] <= p["mean"] <= 100 and p["length_g"] > 0 and 0 < p["machine_cpu_percent"] <= 100
            assert 0 < p["process_cpu_percent"] <= 110
        # the closing correction: the chain through 2 of the geodesic's points, fit for 1 epoch; its time counts
        # the traversal too, and is the equal-time curves' time
        geo, relaxed = r["paths"]["geodesic"], r["paths"]["geodesic, relaxed"]
        assert len(relaxed["knots"]) == 4 and relaxed["knots"][0] == 0 and relaxed["knots"][-1] == 1
        assert relaxed["wall_seconds"] == pytest.approx(geo["wall_seconds"] + relaxed["fit_seconds"])
        for curve in ("bezier", "bezier-distill"):
            bz, eq = r["paths"][curve], r["paths"][f"{curve}, equal time"]
            assert bz["epochs"] == 1 and eq["epochs"] > 0
            assert relaxed["wall_seconds"] <= eq["wall_seconds"] <= relaxed["wall_seconds"] * 1.5 + 5
        # every path is in the log the moment it is measured, before the experiment's table
        for path, p in r["paths"].items():
            line = f"  {path}: min {p['min']:.2f}, mean {p['mean']:.2f}"
            assert line in log and log.index(line) < log.index(f"### {model}"), (name, path)
    s_off = cifar.parse(["--no-equal-time"])
    assert s_off.equal_time is False and cifar.parse([]).equal_time is True
    assert cifar.parse(["--profile", "gpu"]).equal_time is False


@pytest.mark.parametrize("n", [256, 384, 10240])
def test_throughput_probe_counts_the_steps_it_ran(cifar_small, monkeypatch, n):
    """`benchmarks/cifar.py` sizes training from a probe of 20 steps; on a split of fewer batches one epoch ends the
    probe early, and the time per step is the elapsed time over the steps that ran (it was over 20: a 256-image
    epoch was estimated 20x too fast and trained for 10x its budget). A fake clock advances 1 s per step."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cifar

    clock = [0.0]

    def fake_train(model, data, cfg, max_batches=None, **kwargs):
        clock[0] += min(max_batches, math.ceil(data.x.shape[0] / cfg.batch_size))

    monkeypatch.setattr(cifar, "train", fake_train)
    monkeypatch.setattr(cifar.time, "perf_counter", lambda: clock[0])
    tr, _ = cifar_small
    data = Split(tr.x[:1].expand(n, -1, -1, -1), tr.y[:1].expand(n))
    cfg = cifar_recipe(epochs=1, batch_size=256)
    assert cifar.epoch_seconds(nn.Linear(1, 1), data, cfg, torch.device("cpu")) == math.ceil(n / 256)


def test_cifar_connect_keeps_the_other_paths_when_the_geodesic_fails(tmp_path, data_dir, monkeypatch):
    """A geodesic that stops on NaN/Inf weights (as ResNet-164's did on the GPU) costs only its own row: the line's
    result is written, with the error, and the run goes on to the next experiment."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cifar

    def diverge(*args, **kwargs):
        raise cifar.NonFiniteError("Geo step 15 produced NaN/Inf weights")

    monkeypatch.setattr(cifar, "connect_segment", diverge)
    s = cifar.parse(["--data-dir", data_dir, "--n-train", "256", "--n-test", "128", "--width", "0.0625",
                     "--experiments", "vgg16-connect", "--connect-train-epochs", "1", "--paths", "linear,geodesic",
                     "--line-points", "3", "--probe", "32", "--metric-batch", "16", "--no-equal-time",
                     "--device", "cpu", "--out", str(tmp_path)])
    results = cifar.run(s)
    r = json.loads((tmp_path / "vgg16-connect.json").read_text())
    assert set(results) == {"vgg16-connect"} and set(r["paths"]) == {"linear"}
    assert "NaN/Inf" in r["geodesic_error"] and len(r["paths"]["linear"]["accuracies"]) == 3


def test_cifar_connect_takes_an_overflowing_step_again_and_says_so(tmp_path, data_dir, monkeypatch, capsys):
    """A Geo step that comes out NaN/Inf once (the ResNet-164 GPU failure's kind) is taken again shorter
    (`GeoConfig.nonfinite_retries`): the geodesic's row is measured, and its result and printout say how many steps
    were retried."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cifar

    geo_mod = sys.modules["geodesic_core.geo"]
    real, calls = geo_mod._solve_lanczos, []

    def once_nan(*a):
        calls.append(1)
        sol = real(*a)
        return sol._replace(theta=sol.theta * float("nan")) if len(calls) == 3 else sol

    monkeypatch.setattr(geo_mod, "_solve_lanczos", once_nan)
    s = cifar.parse(["--data-dir", data_dir, "--n-train", "256", "--n-test", "128", "--width", "0.0625",
                     "--experiments", "vgg16-connect", "--connect-train-epochs", "1", "--paths", "geodesic",
                     "--geo-steps", "6", "--line-points", "3", "--eval-points", "3", "--probe", "32",
                     "--metric-batch", "16", "--connect-distill-steps", "1", "--no-equal-time", "--device", "cpu",
                     "--out", str(tmp_path)])
    cifar.run(s)
    g = json.loads((tmp_path / "vgg16-connect.json").read_text())["paths"]["geodesic"]
    assert g["nonfinite_retries"] == 1 and len(calls) > 3
    assert "1 steps overflowed and were taken again shorter" in capsys.readouterr().out


def test_cifar_benchmark_validation_reads_held_out_training_images_never_the_test_set(tmp_path, data_dir,
                                                                                    monkeypatch, capsys):
    """``--validation N``: the paths are evaluated on N held-out training images (benchmarks/heldout.py's draw),
    the endpoints trained without them, and the test set is never loaded."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cifar
    import heldout

    loaded = []
    real = heldout.load_split
    monkeypatch.setattr(heldout, "load_split", lambda name, train, *a, **k: loaded.append(train) or real(
        name, train, *a, **k))
    monkeypatch.setattr(cifar, "load_split", lambda *a, **k: pytest.fail("the test set was read"))
    s = cifar.parse(["--data-dir", data_dir, "--validation", "200", "--n-train", "256", "--width", "0.0625",
                     "--experiments", "vgg16-connect", "--connect-train-epochs", "1", "--paths", "linear",
                     "--line-points", "3", "--probe", "32", "--no-equal-time", "--device", "cpu",
                     "--out", str(tmp_path)])
    cifar.run(s)
    assert loaded == [True]
    r = json.loads((tmp_path / "vgg16-connect.json").read_text())
    # accuracies on 200 images: multiples of 0.5
    assert all(abs(a * 2 - round(a * 2)) < 1e-9 for a in r["paths"]["linear"]["accuracies"])
    assert "256 training / 200 held-out training (--validation" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_training_recipe_bf16_channels_last(cifar_small):
    tr, _ = cifar_small
    dev = torch.device("cuda")
    model = build_model("vgg11", 10, 3, 32, seed=0, width=0.25)
    train(model, Split(tr.x.to(dev), tr.y.to(dev)), cifar_recipe(epochs=2, batch_size=64), augment=True, device=dev)
    assert all(p.is_contiguous() for p in model.parameters())  # back in the default format for flat views
    assert flat_params(model).dtype == torch.float32 and torch.isfinite(flat_params(model)).all()
