"""The paper's deep-network experiments on CIFAR-10, start to finish: structured sparsification of VGG11
(Figure 4C/D) and mode connectivity of VGG16 and the pre-activation ResNet (Figure 7A/B).

Pure PyTorch on `geodesic_core` (no Prefect, no MLflow: it runs on a bare GPU machine with the core's
dependencies alone). Each experiment writes its results (``<out>/<name>.json``: tables and curves) the moment
it finishes, so a run stopped by a time limit keeps every finished experiment, and prints Markdown tables:

- structured: test accuracy against update epochs and wall time for the geodesic (a Geo step's forward and
  backward passes counted as a fraction of an epoch, `geodesic_core.geo.geo_step_passes`), the paper's
  iterative prune-train baseline (one filter removed per cycle, SGD retraining after each), one-shot
  removal + fine-tuning and its label-free counterpart, one-shot removal + distillation toward the dense
  network's outputs (no labels, as the geodesic), the peers' rates annealed by a cosine as the geodesic's closing
  correction's is (``--peer-schedule constant``: as measured before); then the geodesic's end exported as a
  physically smaller network, with its largest output difference from the masked network.
- connect: for two networks trained from two seeds, the geodesic (Algorithm 3 with the output anchor and
  the completion step, as `geodesic connect` runs it, plus 10 distillation-corrector steps toward f_t per
  Geo step that move the weights sideways, never back: `GeoConfig.keep_progress`), with ``--relax-epochs`` the
  geodesic relaxed (`geodesic_core.connect.relax_path`: the chain through its points, fit toward the endpoints'
  interpolated outputs without labels; its time is the traversal's plus the fit's), the straight line, the
  trained quadratic Bezier curve (Garipov et al. 2018) and its label-free counterpart (fit to the endpoints'
  interpolated outputs, the geodesic's anchor, no labels): path minimum / mean test accuracy (batch-norm
  statistics re-estimated at every evaluated point), length under g on one probe batch, Euclidean length,
  wall time.

With ``--equal-time`` (on in the ``cpu`` profile, off in ``gpu``, whose device time is short) every peer runs a second
time for the geodesic's wall time (in the connect experiments with the relaxation: the traversal's and the
fit's), as the flows' equal-time peers do: each trains until that time is spent, its learning-rate schedule spanning
it (`geodesic_core.train.train`'s ``wall_seconds``; prune-train: each cycle an equal share of it), evaluated at its
end only (evaluation excluded from the time), and each table ends with the geodesic ahead of, level with or behind
each peer. Each experiment's results go to ``--out`` as JSON when it
ends, and each connect path is printed the moment it is measured, so a stopped run keeps what it finished.

Profiles fix the scale: ``cpu`` (VGG at width 1/8, where an epoch takes 13-21 s on 2 cores; the
pre-activation ResNet at depth 11 and width 1/2; a few epochs each: the whole run in 55 minutes with the
equal-time peers, measured on 2 cores before the label-free peers joined; with them not timed as one run) and
``gpu`` (the paper's networks at width 1; training epochs chosen from a measured throughput probe to fit
``--*-train-seconds``). ``--cache DIR`` keeps trained endpoints (fixed epochs only) for reruns. ``--validation N``
holds out N training images (`benchmarks/heldout.py`'s draw) and reports every accuracy on them, never reading
the test set: the way to choose a setting. Every setting can be overridden:

    python benchmarks/cifar.py --data-dir ../shared/data --profile cpu
    python benchmarks/cifar.py --data-dir /tmp/c10 --profile gpu --out results/       # on a GPU
    python benchmarks/cifar.py --data-dir ../shared/data --experiments structured --width 0.25
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import MachineLoad, load_text  # noqa: E402

from geodesic_core import (GeoConfig, InputError, NonFiniteError, build_model, cumulative_lengths,  # noqa: E402
                           evaluate, flat_params, linear_path, load_split)
from geodesic_core.config import cifar_recipe  # noqa: E402
from geodesic_core.connect import (InterpolatedOutputs, bn_batch, connect_segment, distance_ratio,  # noqa: E402
                                   evaluate_point, relax_path, train_bezier)
from geodesic_core.data import Split  # noqa: E402
from geodesic_core.geo import geo_step_passes  # noqa: E402
from geodesic_core.checkpoint import atomic_write  # noqa: E402
from geodesic_core.sparsify import (iterative_prune_train, polish, project_to_level, prune_finetune,  # noqa: E402
                                    structured_stage)
from geodesic_core.targets import FilterTarget  # noqa: E402
from geodesic_core.structured import compact_filters  # noqa: E402
from geodesic_core.align import align_to  # noqa: E402
from geodesic_core.train import epochs_run, full_float32, train  # noqa: E402
from heldout import heldout  # noqa: E402  (benchmarks/heldout.py: the validation draw every benchmark holds out)
from _flowrun import versus  # noqa: E402  (benchmarks/_flowrun.py: the other benchmarks' "level" tolerance)

EXPERIMENTS = ("vgg16-connect", "structured", "resnet-connect")
METHODS = ("geodesic", "prune-train", "oneshot+finetune", "oneshot+distill")
PATHS = ("linear", "bezier", "bezier-distill", "geodesic")
PEER_SCHEDULES = ("cosine", "constant")


@dataclass
class Settings:
    """One run's scale. ``*_train_epochs`` (or, when None, ``*_train_seconds`` through a throughput probe)
    size the endpoint training; ``geo_steps``: the geodesic's step budget (η = distance / geo_steps)."""

    data_dir: str | None = None
    out: str = "cifar-results"
    experiments: tuple[str, ...] = EXPERIMENTS
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    n_train: int | None = None  # a subset (tests); None: all 50 000
    n_test: int | None = None
    seeds: tuple[int, int] = (0, 1)  # the structured experiment's dense network trains from the first, the connect
    # experiments' endpoints from both (`--seeds 2,3`: another pair, to check that a result holds across seeds)
    lr: float = 0.1
    batch_size: int = 256
    # structured (VGG11, Figure 4C/D)
    width: float = 0.125
    n_filters: int | None = None  # default round(50 W)
    structured_train_epochs: int | None = 8
    structured_train_seconds: float = 60.0
    stages: int = 5
    stage_steps: int = 40
    struct_eta: float | None = None  # default: distance to the target / (stages x stage_steps / 2)
    stage_max_steps: int | None = None  # a stage runs until it reaches its target (Algorithm 1); at most this
    # many steps (default 8 x stage_steps, which sizes eta)
    struct_anchor_radius: float = 1.0  # the output anchor's correction at most this x eta long (0: unbounded)
    distill_steps: int = 5
    polish_epochs: int = 2  # the closing correction after the last stage (`SparsifyConfig.polish_epochs`; 0: off)
    polish_lr: float = 0.003  # its peak rate (cosine to 0), as `SparsifyConfig.polish_lr` (0.1 there, at T = 2)
    polish_temperature: float = 0.0  # its loss: 0 matches the dense logits, T > 0 their softmax at T (as
    # `SparsifyConfig.polish_temperature`; on held-out images T = 2 at lr 0.05 ended 1.42 lower on one seed, 1.08 higher
    # on the other)
    epochs_per_filter: float = 0.25
    finetune_epochs: int = 3
    peer_schedule: str = "cosine"  # the three peers' learning-rate schedule, as `FinetuneConfig.schedule`: cosine to 0
    # over each run (prune-train: over each cycle), as the geodesic's closing correction anneals; constant before
    distill_lr: float = 0.05  # one-shot removal + distillation (label-free), as `FinetuneConfig.distill_lr`
    distill_temperature: float = 2.0  # its loss, as `FinetuneConfig.distill_temperature`: T = 2 at lr 0.05 ended
    # 1.6-2.0 points above the logits at lr 0.003 (the default before) after 3 epochs, 0.2-1.1 at equal time, on
    # held-out images for two dense networks
    # connect (VGG16 and the pre-activation ResNet, Figure 7A/B)
    vgg16_width: float | None = None  # default: width
    resnet_width: float = 0.5
    resnet_depth: int = 20
    connect_train_epochs: int | None = 8
    connect_train_seconds: float = 60.0
    resnet_train_seconds: float | None = None  # default connect_train_seconds
    resnet_geo_steps: int | None = None  # default geo_steps
    resnet_bezier_epochs: int | None = None  # default bezier_epochs
    geo_steps: int = 150
    connect_anchor: float = 1.0  # the connect geodesic's output-anchor weight (GeoConfig.anchor; 0: off)
    connect_anchor_radius: float = 0.0  # the connect geodesic's anchor correction at most this x eta (0: unbounded)
    connect_distill_steps: int = 10  # the connect geodesic's first-order corrector toward f_t (0: off)
    connect_distill_lr: float = 0.003
    connect_keep_progress: bool = True  # the correctors move the weights sideways, never back (GeoConfig)
    connect_distill_radius: float = 0.0  # the corrector's whole move after a Geo step at most this x eta (0: off)
    align: str = "auto"  # permute w_2's hidden units to match w_1's first (activation matching, every path), as
    # `ConnectConfig.align`: auto (where the architecture allows: VGG and the pre-activation ResNet), activations, none
    relax_epochs: int = 0  # the connect path's closing correction: epochs of the label-free chain fit (0: off)
    relax_lr: float = 0.001  # its rate (chosen on a validation split of VGG16 at width 1/8, with the logits matched)
    relax_temperature: float = 0.0  # its loss: 0 matches f_t's logits, T > 0 its softmax at T (the connect flow's 2)
    relax_nodes: int = 8  # the chain's interior nodes, points of the geodesic
    metric_batch: int = 128
    bezier_epochs: int = 3
    # the label-free curve's rate, its logits matched: how every CIFAR-10 table was measured (the connect flow now
    # defaults to the softmax at T = 2 with lr 0.1, chosen on MNIST and Fashion-MNIST; not measured on CIFAR-10)
    bezier_distill_lr: float = 0.003
    line_points: int = 11
    eval_points: int = 12
    probe: int = 512
    bn_every: int = 10  # Geo steps between batch-norm re-estimations at the current weights (0: never)
    struct_bn_every: int | None = None  # default bn_every
    struct_metric_batch: int = 32  # the structured geodesic's metric batch N (its Gram matrix is (10 N)^2); 64
    # before: on held-out training images 32 and 16 ended level with 64 or above it, in half or a third of the time
    methods: str = "geodesic,prune-train,oneshot+finetune,oneshot+distill"  # the structured experiment's methods
    paths: str = "linear,bezier,bezier-distill,geodesic"  # the connect experiments' paths
    cache: str | None = None  # a folder for trained endpoints (fixed epochs only): reruns reuse them
    time_limit: float | None = None  # seconds for the whole run; later experiments are skipped past it
    validation: int = 0  # hold out this many training images (benchmarks/heldout.py's seeded draw) and report every
    # accuracy on them instead of the test set: settings are chosen without reading it (0: the test set)
    equal_time: bool = False  # also run every peer for the geodesic's wall time (trained until it is spent)


PROFILES = {
    # the structured experiment's dense network: 30 epochs of the recipe (82% at width 1/8; 6 before commit 6361e2c, 76%)
    "cpu": Settings(equal_time=True, relax_epochs=5, structured_train_epochs=30, connect_train_epochs=4,
                    resnet_depth=11, stages=5,
                    stage_steps=20, geo_steps=120, metric_batch=64, bezier_epochs=2, finetune_epochs=3, line_points=9,
                    eval_points=6, probe=256),
    "gpu": Settings(width=1.0, resnet_width=1.0, resnet_depth=164, structured_train_epochs=None,
                    connect_train_epochs=None, structured_train_seconds=40.0, connect_train_seconds=45.0,
                    resnet_train_seconds=35.0, batch_size=256, stage_steps=40, distill_steps=5, epochs_per_filter=0.5,
                    finetune_epochs=8, geo_steps=200, metric_batch=128, bezier_epochs=4, line_points=11,
                    eval_points=10, resnet_geo_steps=80, resnet_bezier_epochs=2),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _resident(split: Split, device: torch.device, n: int | None) -> Split:
    x, y = (split.x[:n], split.y[:n]) if n else (split.x, split.y)
    return Split(x.to(device), y.to(device))


def epoch_seconds(model: torch.nn.Module, data: Split, cfg, device: torch.device, steps: int = 20) -> float:
    """Measured wall time of one training epoch (a throughput probe on a copy of the model: warm-up, then
    ``steps`` timed steps)."""
    probe = copy.deepcopy(model)
    train(probe, data, cfg.model_copy(update={"epochs": 1}), augment=True, device=device, max_batches=10)
    _sync(device)
    t = time.perf_counter()
    train(probe, data, cfg.model_copy(update={"epochs": 1}), augment=True, device=device, max_batches=steps)
    _sync(device)
    batches = math.ceil(data.x.shape[0] / cfg.batch_size)
    per_step = (time.perf_counter() - t) / min(steps, batches)  # one epoch of fewer batches ends the probe early
    return per_step * batches


def train_endpoint(name: str, arch: dict, seed: int, data: Split, test: Split, s: Settings, epochs: int | None,
                   seconds: float, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Train one network with the CIFAR recipe for ``epochs`` (or as many as fit ``seconds``)."""
    model = build_model(name, 10, 3, 32, seed=seed, **arch).to(device)
    cfg = cifar_recipe(epochs=1, lr=s.lr, seed=seed, batch_size=s.batch_size)
    ep_s = None
    if epochs is None:
        ep_s = epoch_seconds(model, data, cfg, device)
        epochs = max(1, int(seconds // ep_s))
    cached = None
    if s.cache and ep_s is None:
        key = "-".join(f"{k}{v}" for k, v in sorted(arch.items()))
        cached = Path(s.cache) / f"{name}-{key}-seed{seed}-{epochs}ep-{data.x.shape[0]}-lr{s.lr}-b{s.batch_size}.pt"
    t = time.perf_counter()
    if cached is not None and cached.is_file():
        blob = torch.load(cached, map_location=device, weights_only=True)
        model.load_state_dict(blob["state"])
        wall = float(blob["train_seconds"])
    else:
        train(model, data, cfg.model_copy(update={"epochs": epochs}), augment=True, device=device)
        _sync(device)
        wall = time.perf_counter() - t
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)  # atomic: a killed run leaves no half-written file
            atomic_write(cached, lambda fh: torch.save({"state": model.state_dict(), "train_seconds": wall}, fh))
    acc, _ = evaluate(model, test)
    info = {"model": name, **arch, "seed": seed, "epochs": epochs, "train_seconds": wall, "test_accuracy": acc,
            "probe_epoch_seconds": ep_s, "weights": sum(p.numel() for p in model.parameters())}
    print(f"  {name} {arch} seed {seed}: {epochs} epochs in {wall:.1f} s -> {acc:.2f}%", flush=True)
    return model, info


# --------------------------------------------------------------------------------------------------------------
# Structured sparsification (Figure 4C/D)
# --------------------------------------------------------------------------------------------------------------

def run_structured(s: Settings, train_data: Split, test: Split, device: torch.device) -> dict:
    width = s.width
    n_filters = s.n_filters or max(1, round(50 * width))
    layer = "features.0"
    n_train = train_data.x.shape[0]
    dense, info = train_endpoint("vgg11", {"width": width} if width != 1 else {}, s.seeds[0], train_data, test, s,
                                 s.structured_train_epochs, s.structured_train_seconds, device)
    dense.requires_grad_(False)
    dense_acc = info["test_accuracy"]
    curves: dict[str, list[dict]] = {}

    def report(name: str, row: dict, budget: float | None = None) -> None:
        """One progress line as a method ends: its accuracy, update epochs and training seconds."""
        print(f"  {name}{'' if budget is None else ', equal time'}: {row['test_accuracy']:.2f}% after "
              f"{row['epochs']:.2f} epochs, {row['seconds']:.1f} s (CPU use: {load_text(row)})",
              flush=True)

    # --- geodesic: the filters zeroed a few at a time, one structured stage each (as the flow does) -------------
    model = copy.deepcopy(dense).requires_grad_(True)
    start_dist = float((FilterTarget(model, layer, n_filters).project(flat_params(model)) - flat_params(model)).norm())
    eta = s.struct_eta or start_dist / max(1, s.stages * s.stage_steps / 2)
    max_steps = s.stage_max_steps or 8 * s.stage_steps
    cfg = GeoConfig(eta=eta, max_steps=max_steps, anchor=1.0, anchor_radius=s.struct_anchor_radius,
                    patience=max_steps, metric_batch=s.struct_metric_batch,
                    solver="exact", distill_steps=s.distill_steps, distill_lr=0.003, distill_batch=128,
                    bn_every=s.bn_every if s.struct_bn_every is None else s.struct_bn_every)
    per_step = geo_step_passes(cfg, min(cfg.metric_batch, n_train), 10, masked=True) / (2 * n_train)
    rows = [{"epochs": 0.0, "seconds": 0.0, "test_accuracy": dense_acc, "filters": 0}]
    spent, step0, meter = 0.0, 0, MachineLoad()
    for k in range(1, s.stages + 1):
        level = max(1, round(n_filters * k / s.stages))
        _sync(device)
        t = time.perf_counter()
        res = structured_stage(model, layer, level, train_data.x, cfg, anchor=dense, start_step=step0, stage=k)
        _sync(device)
        spent += time.perf_counter() - t
        step0 += res.steps
        acc, _ = evaluate(model, test)
        rows.append({"epochs": step0 * per_step, "seconds": spent, "test_accuracy": acc, "filters": level,
                     "steps": step0, "stop_reason": res.stop_reason, "nonfinite_retries": res.retries,
                     "projection_distance": res.distance_before_projection})
        print(f"  geodesic stage {k}/{s.stages}: {level} filters removed, {acc:.2f}% after {step0} steps, "
              f"{spent:.1f} s", flush=True)
    if s.polish_epochs:  # the closing correction: masked distillation toward the dense network's outputs
        _sync(device)
        spent += polish(model, dense, train_data.x, n_filters, cfg, s.polish_epochs, lr=s.polish_lr,
                        temperature=s.polish_temperature, structured=True, layer=layer, augment=True, device=device)
        _sync(device)
        rows.append({"epochs": step0 * per_step + s.polish_epochs, "seconds": spent,
                     "test_accuracy": evaluate(model, test)[0], "filters": n_filters, "steps": step0,
                     "stop_reason": f"closing correction, {s.polish_epochs} epochs"})
    rows[-1].update(meter.reading())  # over the traversal and its evaluations
    if s.polish_epochs:
        report("geodesic, closing correction", rows[-1])
    curves["geodesic"] = rows
    geo_model = model

    methods = s.methods.split(",")
    # --- the paper's baseline: remove one filter, retrain, repeat -------------------------------------------------
    ft_cfg = cifar_recipe(epochs=1, lr=0.01, seed=s.seeds[0], batch_size=s.batch_size).model_copy(
        update={"schedule": s.peer_schedule, "label_smoothing": 0.0})
    report_every = max(1, n_filters // 10)

    def prune_train(budget: float | None = None) -> tuple[list[dict], float]:
        """The prune-train curve (``s.epochs_per_filter`` epochs a cycle, or ``budget`` seconds in all, each cycle
        an equal share) and its training seconds (evaluation excluded: it runs between cycles)."""
        model = copy.deepcopy(dense).requires_grad_(True)
        rows = [{"epochs": 0.0, "seconds": 0.0, "test_accuracy": dense_acc, "filters": 0}]
        meter = MachineLoad()

        def cycle(ci):
            if (budget is None and ci.cycle % report_every == 0) or ci.cycle == n_filters:
                rows.append({"epochs": ci.epochs, "seconds": ci.seconds, "test_accuracy": evaluate(model, test)[0],
                             "filters": ci.filters})

        _, wall, _ = iterative_prune_train(model, layer, n_filters, train_data, ft_cfg,
                                           epochs_per_filter=s.epochs_per_filter, wall_seconds=budget, augment=True,
                                           device=device, callbacks=[cycle])
        rows[-1].update(meter.reading())
        report("prune-train", rows[-1], budget)
        return rows, wall

    def finetune(budget: float | None = None, distill: bool = False) -> tuple[list[dict], float]:
        """One-shot removal + fine-tuning (``distill``: + distillation toward the dense network's outputs, no
        labels) for ``s.finetune_epochs`` epochs, each evaluated, or for ``budget`` seconds, evaluated at its end
        (an evaluation inside the run would spend its time): the curve and its training seconds (evaluation
        excluded)."""
        model = copy.deepcopy(dense).requires_grad_(True)
        oneshot = project_to_level(copy.deepcopy(dense), n_filters, structured=True, layer=layer)
        rows = [{"epochs": 0.0, "seconds": 0.0, "test_accuracy": dense_acc, "filters": 0},
                {"epochs": 0.0, "seconds": 0.0, "test_accuracy": evaluate(oneshot, test)[0], "filters": n_filters}]
        t0, evals, meter = time.perf_counter(), [0.0], MachineLoad()

        def epoch_done(e):
            t = time.perf_counter()
            acc = evaluate(model, test)[0]
            rows.append({"epochs": e.epoch + 1.0, "seconds": t - t0 - evals[0], "test_accuracy": acc,
                         "filters": n_filters})
            evals[0] += time.perf_counter() - t

        cfg = ft_cfg.model_copy(update={"epochs": s.finetune_epochs, **({"lr": s.distill_lr} if distill else {})})
        _, wall, steps = prune_finetune(model, n_filters, train_data, cfg, structured=True, layer=layer,
                                        augment=True, device=device, callbacks=[] if budget else [epoch_done],
                                        wall_seconds=budget, teacher=dense if distill else None,
                                        teacher_temperature=s.distill_temperature)
        if budget:
            rows.append({"epochs": epochs_run(steps, n_train, cfg.batch_size), "seconds": wall,
                         "test_accuracy": evaluate(model, test)[0], "filters": n_filters})
        rows[-1].update(meter.reading())
        report(f"one-shot removal + {'distillation' if distill else 'fine-tuning'}", rows[-1], budget)
        return rows, wall - evals[0]

    train_seconds = {}
    if "prune-train" in methods:
        curves["prune-train"], train_seconds["prune-train"] = prune_train()

    # --- one-shot removal + fine-tuning on the labels; + distillation without them -------------------------------
    for m in ("oneshot+finetune", "oneshot+distill"):
        if m in methods:
            curves[m], train_seconds[m] = finetune(distill=m == "oneshot+distill")

    # --- each peer again for the geodesic's wall time, trained until it is spent ------------------------------------
    if s.equal_time and "prune-train" in methods:
        curves["prune-train, equal time"], _ = prune_train(spent)
    for m in ("oneshot+finetune", "oneshot+distill"):
        if s.equal_time and m in methods:
            curves[f"{m}, equal time"], _ = finetune(spent, distill=m == "oneshot+distill")

    # --- export: the geodesic's end as a physically smaller network -----------------------------------------------
    small, removed = compact_filters(geo_model, layer)
    with torch.no_grad():
        x = test.x[:256]
        geo_model.eval(), small.eval()
        diff = float((geo_model(x) - small(x)).abs().max())
    export = {"filters_removed": removed, "weights_masked": sum(p.numel() for p in geo_model.parameters()),
              "weights_compact": sum(p.numel() for p in small.parameters()), "max_output_difference": diff,
              "compact_test_accuracy": evaluate(small, test)[0]}
    return {"experiment": "structured", "model": "vgg11", "width": width, "layer": layer, "n_filters": n_filters,
            "dense": info, "geo": {"eta": eta, **cfg.model_dump(), "epochs_per_step": per_step},
            "epochs_per_filter": s.epochs_per_filter, "finetune_epochs": s.finetune_epochs,
            "peer_schedule": s.peer_schedule,
            "distill_lr": s.distill_lr, "distill_temperature": s.distill_temperature, "polish_lr": s.polish_lr,
            "polish_temperature": s.polish_temperature,
            "curves": curves,
            "geodesic_seconds": spent, "peer_train_seconds": train_seconds,
            "export": export}


def recover_epochs(rows: list[dict], level: float) -> float | None:
    """Epochs at which a curve first holds ``level`` or more after its filters are all removed."""
    final = rows[-1]["filters"]
    hits = [r["epochs"] for r in rows if r["filters"] == final and r["test_accuracy"] >= level]
    return min(hits) if hits else None


def print_structured(r: dict) -> None:
    def loss(t: float) -> str:
        return "the logits" if not t else f"the softmax at T = {t:g}"

    dense = r["dense"]["test_accuracy"]
    print(f"\n### VGG11 (width {r['width']}) on CIFAR-10: {r['n_filters']} of the filters of {r['layer']} removed\n")
    print(f"dense network: {dense:.2f}% after {r['dense']['epochs']} epochs ({r['dense']['train_seconds']:.0f} s); "
          f"the peers' learning rate: {r['peer_schedule']}; distillation on {loss(r['distill_temperature'])} at lr "
          f"{r['distill_lr']:g}, the closing correction on {loss(r['polish_temperature'])} at lr {r['polish_lr']:g}\n")
    print("| method | final accuracy | best accuracy | update epochs | epochs to within 1 point of dense | wall s "
          "| CPU use (% of all cores) |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in r["curves"].items():
        rec = recover_epochs(rows, dense - 1.0)
        print(f"| {name} | {rows[-1]['test_accuracy']:.2f} | {max(x['test_accuracy'] for x in rows[1:]):.2f} | "
              f"{rows[-1]['epochs']:.2f} | {'not reached' if rec is None else f'{rec:.2f}'} | "
              f"{rows[-1]['seconds']:.1f} | {load_text(rows[-1])} |")
    geo_final = r["curves"]["geodesic"][-1]["test_accuracy"]
    if retried := sum(x.get("nonfinite_retries", 0) for x in r["curves"]["geodesic"]):
        print(f"geodesic: {retried} steps overflowed and were taken again shorter (GeoConfig.nonfinite_retries)")
    for name, rows in r["curves"].items():
        if name != "geodesic":
            print(f"geodesic vs {name}, final accuracy: {versus(geo_final, rows[-1]['test_accuracy'])}")
    e = r["export"]
    print(f"\nexport: {e['filters_removed']} filters removed physically, {e['weights_masked']} -> "
          f"{e['weights_compact']} weights, max |output difference| {e['max_output_difference']:.2e}, "
          f"accuracy {e['compact_test_accuracy']:.2f}%")


# --------------------------------------------------------------------------------------------------------------
# Mode connectivity (Figure 7A/B)
# --------------------------------------------------------------------------------------------------------------

class _Paths(dict):
    """The connect experiment's paths by name: each one printed the moment it is measured, so that a run stopped
    before its table (a spent GPU lease, a killed CPU run) keeps in its log every path it finished."""

    def __setitem__(self, name: str, p: dict) -> None:
        super().__setitem__(name, p)
        print(f"  {name}: min {p['min']:.2f}, mean {p['mean']:.2f}, length under g {p['length_g']:.2f}, "
              f"{p['wall_seconds']:.1f} s (CPU use: {load_text(p)})", flush=True)


def _path_summary(accs: list[float], lengths: list[float], euclid: float, wall: float, cpu: dict, **extra) -> dict:
    """A path's row; ``cpu``: the machine's and this process's CPU use in % of all cores while the path was built
    (`_load.MachineLoad.reading`)."""
    return {"min": min(accs), "mean": sum(accs) / len(accs), "length_g": lengths[-1], "euclidean": euclid,
            "wall_seconds": wall, **cpu, "accuracies": accs, **extra}


def run_connect(name: str, arch: dict, s: Settings, train_data: Split, test: Split, device: torch.device,
                train_seconds: float) -> dict:
    ends = [train_endpoint(name, arch, seed, train_data, test, s, s.connect_train_epochs, train_seconds, device)
            for seed in s.seeds]
    (net_a, info_a), (net_b, info_b) = ends
    try:  # the same function as w_2, its hidden units in w_1's order: every path connects w_1 to it
        if s.align != "none":
            info_b = {**info_b, "alignment": align_to(net_a, net_b, train_data.x[:5000])}
            print(f"  aligned w_2 to w_1: {info_b['alignment']}", flush=True)
    except InputError as e:
        if s.align == "activations":
            raise
        print(f"  w_2 not aligned: {e}", flush=True)
    w_a, w_b = flat_params(net_a), flat_params(net_b)
    dist = float((w_b - w_a).norm())
    probe_x = train_data.x[torch.randperm(train_data.x.shape[0], generator=torch.Generator().manual_seed(0))[:s.probe]]
    bn = bn_batch(net_a, train_data.x)
    viewer = copy.deepcopy(net_a)

    def evaluate_points(points):
        return [evaluate_point(viewer, w, test, bn)[0] for w in points]

    paths = _Paths()
    # --- the straight line ---------------------------------------------------------------------------------------
    t, meter = time.perf_counter(), MachineLoad()
    pts = linear_path(w_a, w_b, s.line_points)
    accs = evaluate_points(pts)
    paths["linear"] = _path_summary(accs, cumulative_lengths(viewer, pts, probe_x, bn_inputs=bn), dist,
                                    time.perf_counter() - t, meter.reading())
    endpoint_acc = (accs[0], accs[-1])  # the endpoints with batch-norm statistics re-estimated, like every point

    # --- the peer baselines: a trained quadratic Bezier curve, on the labels and label-free -------------------------
    wanted = s.paths.split(",")
    bz_cfg = cifar_recipe(epochs=s.bezier_epochs, lr=0.05, seed=s.seeds[0], batch_size=s.batch_size).model_copy(
        update={"label_smoothing": 0.0})

    def bezier(budget: float | None = None, distill: bool = False) -> dict:
        """The curve trained for ``s.bezier_epochs`` epochs (or ``budget`` seconds: `train`'s wall-time run) and
        measured like every path; ``distill``: label-free, fit to the endpoints' interpolated outputs."""
        _sync(device)
        t, meter = time.perf_counter(), MachineLoad()
        cfg = bz_cfg.model_copy(update={"lr": s.bezier_distill_lr} if distill else {})
        curve = train_bezier(copy.deepcopy(net_a), w_a, w_b, train_data, cfg, augment=True, wall_seconds=budget,
                             endpoints=(net_a, net_b) if distill else None)
        _sync(device)
        wall, cpu = time.perf_counter() - t, meter.reading()
        pts = curve.points(s.line_points)
        epochs = round(epochs_run(curve.steps_trained, train_data.x.shape[0], cfg.batch_size), 2)
        return _path_summary(evaluate_points(pts), cumulative_lengths(viewer, pts, probe_x, bn_inputs=bn),
                             curve.euclidean_length(), wall, cpu, epochs=epochs)

    for curve in ("bezier", "bezier-distill"):
        if curve in wanted:
            paths[curve] = bezier(distill=curve == "bezier-distill")
    result = {"experiment": "connect", "model": name, **arch, "endpoints": [info_a, info_b],
              "endpoint_accuracy_bn": endpoint_acc, "distance": dist, "paths": paths}
    if "geodesic" not in wanted:
        return result

    # --- the geodesic: Algorithm 3 with the output anchor; the completion step if it stalls ------------------------
    model = copy.deepcopy(net_a).requires_grad_(True)
    eta = dist / s.geo_steps
    cfg = GeoConfig(eta=eta, anchor=s.connect_anchor, anchor_radius=s.connect_anchor_radius,
                    max_steps=(3 * s.geo_steps) // 2, patience=50, metric_batch=s.metric_batch, solver="cg",
                    cg_iters=10, bn_every=s.bn_every,
                    distill_steps=s.connect_distill_steps, distill_lr=s.connect_distill_lr, distill_batch=128,
                    keep_progress=s.connect_keep_progress, distill_radius=s.connect_distill_radius)
    every = max(1, s.geo_steps // s.eval_points)
    every_node = max(1, s.geo_steps // (2 * s.relax_nodes))  # candidates for the chain's nodes, twice as many
    points, eucl, last, candidates = [w_a.clone()], [0.0], [w_a.clone()], []

    def record(info):
        eucl[0] += float((info.weights - last[0]).norm())
        last[0] = info.weights.clone()
        if info.step % every == 0:
            points.append(info.weights.clone())
        if s.relax_epochs and info.step % every_node == 0:
            candidates.append(info.weights.clone())

    anchor = InterpolatedOutputs(copy.deepcopy(net_a), copy.deepcopy(net_b))
    _sync(device)
    t, meter = time.perf_counter(), MachineLoad()
    try:
        res = connect_segment(model, w_b, train_data.x, cfg, anchor=anchor, total_distance=dist, callbacks=[record])
    except NonFiniteError as e:  # the other paths stay measured (one GPU try must not lose them)
        print(f"  geodesic failed after {len(points) - 1} recorded points: {e}", flush=True)
        return {**result, "geo": cfg.model_dump(), "geodesic_error": str(e)}
    steps, stops, completion, retries = res.steps, [res.stop_reason], 0, res.retries
    if res.stop_reason != "reached":  # the completion step: anchor off, a 10x looser trust region
        loose = cfg.completion(10, seed=1, max_steps=s.geo_steps)
        res = connect_segment(model, w_b, train_data.x, loose, callbacks=[record], start_step=steps)
        completion = res.steps
        steps += res.steps
        stops.append(res.stop_reason)
        retries += res.retries
    _sync(device)
    geo_wall, geo_cpu = time.perf_counter() - t, meter.reading()
    w_end = flat_params(model)
    if not torch.equal(points[-1], w_end):
        points.append(w_end)
    accs = evaluate_points(points)
    paths["geodesic"] = _path_summary(accs, cumulative_lengths(viewer, points, probe_x, bn_inputs=bn), eucl[0], geo_wall,
                                      geo_cpu, steps=steps, completion_steps=completion, stop_reasons=stops, eta=eta,
                                      nonfinite_retries=retries,
                                      end_distance_ratio=distance_ratio(w_end, w_a, w_b))
    budget = geo_wall
    if s.relax_epochs:  # the closing correction: the chain through the geodesic's points, fit label-free to f_t
        _sync(device)
        t = time.perf_counter()
        relax_cfg = bz_cfg.model_copy(update={"epochs": s.relax_epochs, "lr": s.relax_lr})
        chain = relax_path(copy.deepcopy(net_a), candidates, w_a, w_b, train_data, relax_cfg, nodes=s.relax_nodes,
                           augment=True, endpoints=(net_a, net_b), temperature=s.relax_temperature)
        _sync(device)
        fit = time.perf_counter() - t
        budget = geo_wall + fit
        pts = chain.points(s.line_points)
        paths["geodesic, relaxed"] = _path_summary(
            evaluate_points(pts), cumulative_lengths(viewer, pts, probe_x, bn_inputs=bn), chain.euclidean_length(),
            budget, meter.reading(), epochs=s.relax_epochs, fit_seconds=fit, knots=chain.knots)
    for curve in ("bezier", "bezier-distill"):
        if s.equal_time and curve in paths:
            # trained for the geodesic's time (with the relaxation, if any)
            paths[f"{curve}, equal time"] = bezier(budget, distill=curve == "bezier-distill")
    return {**result, "geo": cfg.model_dump()}


def print_connect(r: dict) -> None:
    a, b = r["endpoints"]
    arch = {k: r[k] for k in ("width", "depth") if k in r}
    print(f"\n### {r['model']} {arch or ''} on CIFAR-10: seeds {a['seed']} and {b['seed']}, {a['epochs']} / "
          f"{b['epochs']} epochs ({a['train_seconds']:.0f} / {b['train_seconds']:.0f} s), endpoints "
          f"{a['test_accuracy']:.2f} / {b['test_accuracy']:.2f}%, |w_2 - w_1| = {r['distance']:.1f}\n")
    print("| path | min accuracy | mean accuracy | length under g | Euclidean length | epochs | wall s "
          "| CPU use (% of all cores) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, p in r["paths"].items():
        print(f"| {name} | {p['min']:.2f} | {p['mean']:.2f} | {p['length_g']:.2f} | {p['euclidean']:.1f} | "
              f"{p.get('epochs', '')} | {p['wall_seconds']:.1f} | {load_text(p)} |")
    if "geodesic_error" in r:
        print(f"\ngeodesic: failed ({r['geodesic_error']})")
    g = r["paths"].get("geodesic")
    if g:
        print(f"\ngeodesic: {g['steps']} steps (η = {g['eta']:.3g}; {g['stop_reasons']}, {g['completion_steps']} "
              f"completion steps), ends at {g['end_distance_ratio']:.3f} of the distance"
              + (f"; {g['nonfinite_retries']} steps overflowed and were taken again shorter"
                 if g.get("nonfinite_retries") else ""))
        for name in ("bezier", "bezier, equal time", "bezier-distill", "bezier-distill, equal time"):
            for mine in ("geodesic", "geodesic, relaxed"):
                if name in r["paths"] and mine in r["paths"]:
                    print(f"{mine} vs {name}, path minimum: {versus(r['paths'][mine]['min'], r['paths'][name]['min'])}")
        relaxed = r["paths"].get("geodesic, relaxed")
        if relaxed:
            knots = ", ".join(f"{k:.2f}" for k in relaxed["knots"])
            print(f"relaxed: {relaxed['epochs']} epochs of the chain's fit in {relaxed['fit_seconds']:.1f} s "
                  f"(its wall s counts the traversal too); knots {knots}; equal-time curves trained for the "
                  f"traversal's time plus the fit's")


# --------------------------------------------------------------------------------------------------------------

def _experiment(name: str, s: Settings, train_data: Split, test: Split, device: torch.device) -> dict:
    if name == "structured":
        return run_structured(s, train_data, test, device)
    if name == "vgg16-connect":
        w = s.vgg16_width if s.vgg16_width is not None else s.width
        return run_connect("vgg16", {"width": w} if w != 1 else {}, s, train_data, test, device,
                           s.connect_train_seconds)
    arch = {"depth": s.resnet_depth, **({"width": s.resnet_width} if s.resnet_width != 1 else {})}
    s = replace(s, geo_steps=s.resnet_geo_steps or s.geo_steps, bezier_epochs=s.resnet_bezier_epochs or s.bezier_epochs)
    return run_connect("resnet164", arch, s, train_data, test, device, s.resnet_train_seconds or s.connect_train_seconds)


# settings that count something (at least 1) and settings that may be 0 (off) but never negative
_POSITIVE = ("n_train", "n_test", "batch_size", "n_filters", "structured_train_epochs", "stages", "stage_steps",
             "stage_max_steps", "finetune_epochs", "resnet_depth", "connect_train_epochs", "resnet_geo_steps",
             "resnet_bezier_epochs", "geo_steps", "metric_batch", "struct_metric_batch", "bezier_epochs",
             "eval_points", "probe", "lr", "width", "vgg16_width", "resnet_width", "struct_eta", "epochs_per_filter",
             "distill_lr", "polish_lr", "connect_distill_lr", "bezier_distill_lr", "relax_lr", "relax_nodes",
             "structured_train_seconds", "connect_train_seconds", "resnet_train_seconds", "time_limit")
_NON_NEGATIVE = ("struct_anchor_radius", "connect_anchor_radius", "connect_distill_radius", "connect_distill_steps",
                 "distill_steps", "bn_every", "struct_bn_every", "relax_epochs", "relax_temperature", "validation",
                 "distill_temperature", "polish_temperature")


def check(s: Settings) -> None:
    """Refuse bad settings before any data is read or any network trained (a clear error naming the option)."""
    problems = []
    for names, what, ok in ((_POSITIVE, "positive", lambda v: v > 0), (_NON_NEGATIVE, "0 or more", lambda v: v >= 0)):
        problems += [f"--{n.replace('_', '-')} must be {what} (got {getattr(s, n)})" for n in names
                     if getattr(s, n) is not None and not ok(getattr(s, n))]
    if s.validation >= 50000:
        problems.append(f"--validation must leave training images: CIFAR-10 has 50000 (got {s.validation})")
    if not 0 <= s.connect_anchor <= 1:
        problems.append(f"--connect-anchor must lie in [0, 1] (got {s.connect_anchor})")
    if s.peer_schedule not in PEER_SCHEDULES:
        problems.append(f"--peer-schedule: unknown {s.peer_schedule!r}; valid: {', '.join(PEER_SCHEDULES)}")
    if s.line_points < 2:
        problems.append(f"--line-points must be at least 2, the path's two ends (got {s.line_points})")
    for option, given, valid in (("--experiments", s.experiments, EXPERIMENTS),
                                 ("--methods", s.methods.split(","), METHODS), ("--paths", s.paths.split(","), PATHS)):
        unknown = [e for e in given if e not in valid]
        if unknown:
            problems.append(f"{option}: unknown {unknown}; valid: {', '.join(valid)}")
    if problems:
        raise SystemExit("benchmarks/cifar.py: " + "; ".join(problems))


def run(s: Settings) -> dict[str, dict]:
    check(s)
    # float32 means float32: no TF32 in convolutions and matrix products anywhere in the run (the core's metric
    # products, Geo steps and evaluation make sure of it themselves; this covers the rest, e.g. the export's
    # comparison); training runs under bf16 autocast regardless
    with full_float32():
        return _run(s)


def _run(s: Settings) -> dict[str, dict]:
    device = torch.device(s.device)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    t_start = time.perf_counter()
    if s.validation:  # the held-out images stand in for the test set, which is never read
        x_tr, y_tr, x_val, y_val, _ = heldout("cifar10", s.data_dir, s.validation)
        train_data = _resident(Split(x_tr, y_tr), device, s.n_train)
        test = _resident(Split(x_val, y_val), device, s.n_test)
    else:
        train_data = _resident(load_split("cifar10", True, s.data_dir), device, s.n_train)
        test = _resident(load_split("cifar10", False, s.data_dir), device, s.n_test)
    evaluated_on = "held-out training (--validation: every accuracy below is on these)" if s.validation else "test"
    print(f"CIFAR-10: {train_data.x.shape[0]} training / {test.x.shape[0]} {evaluated_on} images on {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}", flush=True)
    results: dict[str, dict] = {}
    for name in s.experiments:
        if s.time_limit and time.perf_counter() - t_start > s.time_limit:
            print(f"\n{name}: skipped (the run's time limit of {s.time_limit:.0f} s is spent)", flush=True)
            continue
        t = time.perf_counter()
        print(f"\n== {name} ==", flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            r = _experiment(name, s, train_data, test, device)
        except Exception:  # one failed experiment must not cost the others (a GPU run has one try)
            traceback.print_exc()
            continue
        r["wall_seconds"] = time.perf_counter() - t
        r["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        if device.type == "cuda":
            r["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        (out / f"{name}.json").write_text(json.dumps(r, indent=1, default=str))
        (print_structured if name == "structured" else print_connect)(r)
        print(f"({name}: {r['wall_seconds']:.0f} s)", flush=True)
        results[name] = r
    return results


def _seed_pair(text: str) -> tuple[int, int]:
    """``--seeds A,B``: two distinct non-negative integers (argparse reports the error with the option's name)."""
    try:
        pair = tuple(int(x) for x in text.split(","))
    except ValueError:
        pair = ()
    if len(pair) != 2 or pair[0] == pair[1] or min(pair) < 0:
        raise argparse.ArgumentTypeError(
            f"--seeds must be two distinct non-negative integers such as 2,3 (got {text!r})")
    return pair


def parse(argv: list[str]) -> Settings:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    ap.add_argument("--experiments", default=None, help=f"comma-separated, of {', '.join(EXPERIMENTS)}")
    ap.add_argument("--seeds", type=_seed_pair, default=None,
                    help="two distinct comma-separated integers (default 0,1)")
    for f in Settings.__dataclass_fields__.values():
        if f.name in ("experiments", "seeds"):
            continue
        if str(f.type) == "bool":
            ap.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None)
            continue
        kind = {"int | None": int, "float | None": float, "str | None": str, "int": int, "float": float,
                "str": str}[str(f.type)]
        ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    args = vars(ap.parse_args(argv))
    s = PROFILES[args.pop("profile")]
    exps, seeds = args.pop("experiments"), args.pop("seeds")
    if exps:
        s = replace(s, experiments=tuple(e.strip() for e in exps.split(",")))
    if seeds is not None:
        s = replace(s, seeds=seeds)
    return replace(s, **{k: v for k, v in args.items() if v is not None})


if __name__ == "__main__":
    settings = parse(sys.argv[1:])
    print(json.dumps(asdict(settings), default=str))
    run(settings)
