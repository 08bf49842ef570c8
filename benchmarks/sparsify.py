"""LeNet-300-100 on MNIST: geodesic sparsification (Algorithm 1) against its baselines, side by side.

For every sparsity level, on the same dense network and in one process (no orchestration overhead):
  geodesic        the flow's Algorithm 1 (staged, anchored, exact Geo steps), then the hard projection
  oneshot         magnitude projection
  finetune_2ep    magnitude pruning + 2 epochs of masked SGD fine-tuning (lr 0.01, momentum 0.9)
  finetune_eq     the same fine-tuning for the geodesic's wall time (equal compute; under the default
                  ``finetune.schedule`` cosine each peer anneals to 0 inside its budget, one run per budget; with
                  ``--set finetune.schedule=constant`` one constant-rate run read along its curve)
  distill_2ep     the label-free peer: magnitude pruning + 2 epochs of masked SGD toward the dense network's
                  outputs (by default the closing correction's loss, the softmax at ``finetune.distill_temperature``
                  2, at lr ``finetune.distill_lr`` 0.1; with ``--set finetune.distill_temperature=0`` ½ |f(x; w) -
                  f(x; w_dense)|² on the logits), no labels read
  distill_eq      the same distillation for the geodesic's wall time
and, at a constant rate, the wall time masked fine-tuning needs to reach the geodesic's accuracy (test set
evaluated every 100 steps, evaluation time excluded), as the ratio geodesic time / fine-tune time at equal accuracy.
A line per level gives the machine's CPU use and this process's while the geodesic and each equal-time peer ran (`_load.MachineLoad`):
the peers' budget is the geodesic's wall time, so a load that differs between the two shows there.

    python benchmarks/sparsify.py --data-dir ../shared/data --sparsity 90 --sparsity 98 --sparsity 99

Choosing settings: ``--validation 5000`` holds out 5,000 training images (a seeded draw) and reports every
accuracy on them instead of the test set (the dense network, the geodesic's pool and the peers then see the
other 55,000); ``--set geo.temperature=4 --set stages=10`` overrides any `SparsifyConfig` field (dotted for
nested ones); ``--no-peers`` runs the geodesic alone; ``--seed`` the dense network's and the traversal's seed.

The geodesic's result includes the closing correction (``polish_epochs``, `geodesic_core.sparsify.polish`);
its projected end before it is printed too. ``--polish-epochs E`` (repeatable) also fine-tunes the projected end
for E epochs with its zeros kept, on the labels and label-free toward the dense outputs (what ``geodesic train
--init END --keep-zeros [--teacher DENSE]`` runs), and reads each peer's curve at that total time (with
``--set polish_epochs=0`` the label-free variant at E is the closing correction of E epochs); ``--save DIR``
writes the dense network and each result as checkpoints for ``geodesic train --init`` and ``geodesic export``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import time
import warnings

import torch

from geodesic_core import evaluate, flat_params, load_split, param_slices, sparsity, train
from geodesic_core.data import Split
from geodesic_core.sparsify import SparsifyConfig
from geodesic_core.models import build_model
from geodesic_core.sparsify import (fidelity_probe, geodesic_stage, masks_from_zeros, oneshot_prune, prune_finetune,
                                    run_schedule)
from geodesic_core.sparsify import polish as closing_correction
from _load import MachineLoad, load_text
from heldout import heldout

warnings.filterwarnings("ignore")


def _copy(model):
    m = build_model("lenet300", 10, 1, 28)
    m.load_state_dict(model.state_dict())
    return m.to(next(model.parameters()).device)


def geodesic(dense, slices, level, cfg: SparsifyConfig, pool, test):
    """The flow's stages (`SparsifyConfig.stage_schedule`: fixed, or adaptive with rejected stages retried
    from the previous end; their time counts), the closing projection and the closing correction
    (``polish_epochs``); path min over the stages' ends. Returns (model, wall seconds, steps, path min,
    accepted stages, rejected stages, the projected end before the correction)."""
    model, anchor = _copy(dense), _copy(dense).requires_grad_(False)
    plan, probe = cfg.stage_schedule(level), fidelity_probe(pool, seed=cfg.seed)
    seen = {"path_min": 100.0, "eval_time": 0.0}

    def run_stage(p_k, start, attempt):
        return geodesic_stage(model, slices, p_k, pool, cfg.geo.model_copy(update={"seed": cfg.seed}),
                              refresh_every=cfg.refresh_every, scope=cfg.scope, anchor=anchor, start_step=start,
                              stage=attempt)

    def accept(res):
        t = time.perf_counter()
        seen["path_min"] = min(seen["path_min"], evaluate(model, test)[0])
        seen["eval_time"] += time.perf_counter() - t

    t0 = time.perf_counter()
    stages = run_schedule(model, plan, run_stage, anchor, probe, on_accept=accept)
    wall = time.perf_counter() - t0 - seen["eval_time"]
    oneshot_prune(model, slices, level, cfg.scope)
    projected = _copy(model)
    wall += closing_correction(model, anchor, pool, level, cfg.geo.model_copy(update={"seed": cfg.seed}),
                               cfg.polish_epochs, lr=cfg.polish_lr, temperature=cfg.polish_temperature)
    return (model, wall, sum(r.steps for r in stages), seen["path_min"], len(stages),
            len(plan.history) - len(stages), projected)


def finetune_curve(dense, slices, level, cfg: SparsifyConfig, data, test, budget, every=100, distill=False):
    """Masked fine-tuning (on the labels, or ``distill``: toward the dense network's outputs) for ``budget``
    seconds; returns [(seconds, accuracy)] every ``every`` steps."""
    model = _copy(dense)
    oneshot_prune(model, slices, level, cfg.scope)
    masks = masks_from_zeros(model, slices)
    curve, clock = [], {"t": 0.0, "last": time.perf_counter()}

    def on_step(n):
        now = time.perf_counter()
        clock["t"] += now - clock["last"]
        if n % every == 0:
            curve.append((clock["t"], evaluate(model, test)[0]))
        clock["last"] = time.perf_counter()
        return clock["t"] >= budget

    train(model, data, cfg.finetune.train_config(cfg.seed, 10_000, distill), masks=masks, on_step=on_step,
          device=next(model.parameters()).device, teacher=_copy(dense).requires_grad_(False) if distill else None,
          teacher_temperature=cfg.finetune.distill_temperature)
    curve.append((clock["t"], evaluate(model, test)[0]))
    return model, curve


def annealed_peer(dense, level, cfg: SparsifyConfig, data, test, *, epochs=None, seconds=None, distill=False):
    """The peer under ``finetune.schedule`` cosine (the default): `prune_finetune` (or ``distill``), whose cosine
    anneals to 0 over ``epochs`` epochs, or over a budget of ``seconds`` of wall time (the equal-time run), evaluated
    once at its end (a cosine run has no curve to read at other times). Returns its accuracy."""
    model = _copy(dense)
    prune_finetune(model, level, data, cfg.finetune.train_config(cfg.seed, epochs, distill),
                   scope=cfg.scope, wall_seconds=seconds, device=next(model.parameters()).device,
                   teacher=_copy(dense).requires_grad_(False) if distill else None,
                   teacher_temperature=cfg.finetune.distill_temperature)
    return evaluate(model, test)[0]


def _acc_at(curve, seconds) -> float:
    """The accuracy of a (seconds, accuracy) curve at its last point within ``seconds`` (2% slack)."""
    eq = [a for t, a in curve if t <= seconds * 1.02]
    return eq[-1] if eq else curve[0][1]


def _at(curve, seconds) -> str:
    """`_acc_at`, formatted, saying so where the curve ends before ``seconds``."""
    if curve[-1][0] < seconds * 0.98:
        return f"{curve[-1][1]:.2f} (curve ends at {curve[-1][0]:.0f} s; raise --match-budget)"
    return f"{_acc_at(curve, seconds):.2f}"


def polish_variant(geo_model, slices, cfg: SparsifyConfig, data, test, epochs, dense, distill=False):
    """The projected end, fine-tuned with its zeros kept (what `geodesic train --init END --keep-zeros
    [--teacher DENSE] --epochs E --lr 0.01 --schedule cosine` runs): masked SGD on the labels at
    ``finetune.lr``, or ``distill`` toward the dense network's outputs at ``finetune.distill_lr``, under a
    cosine schedule. Returns (accuracy, seconds)."""
    model = _copy(geo_model)
    tc = cfg.finetune.train_config(cfg.seed, epochs, distill).model_copy(update={"schedule": "cosine"})
    t = time.perf_counter()
    train(model, data, tc, masks=masks_from_zeros(model, slices), device=next(model.parameters()).device,
          teacher=_copy(dense).requires_grad_(False) if distill else None,
          teacher_temperature=cfg.finetune.distill_temperature)
    return evaluate(model, test)[0], time.perf_counter() - t


def _save(model, path, accuracy) -> None:
    from geodesic_core import save_checkpoint

    save_checkpoint(path, model.cpu(), {"model": "lenet300", "dataset": "mnist", "num_classes": 10, "in_channels": 1,
                                        "image_size": 28, "test_accuracy": accuracy})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--sparsity", type=float, action="append")
    ap.add_argument("--dense-epochs", type=int, default=15)
    ap.add_argument("--match-budget", type=float, default=4.0, help="fine-tune up to this x the geodesic time")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--validation", type=int, default=0, help="hold out this many training images and report "
                    "accuracies on them instead of the test set (for choosing settings)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a SparsifyConfig field")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-peers", action="store_true", help="the geodesic only (no one-shot, fine-tuning, distill)")
    ap.add_argument("--polish-epochs", type=int, action="append", default=[], help="also fine-tune the geodesic's end "
                    "this many epochs (repeat for several) "
                    "with its zeros kept, on the labels and label-free, and compare with the peers at that total time")
    ap.add_argument("--save", default=None, metavar="DIR", help="write dense.pt and geodesic-<level>.pt there "
                    "(checkpoints `geodesic train --init` and `geodesic export` read)")
    args = ap.parse_args()
    overrides: dict = {"seed": args.seed}
    for item in args.set:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = overrides
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    cfg = SparsifyConfig(sparsity=args.sparsity or [90.0, 98.0, 99.0], **overrides)
    cosine = cfg.finetune.schedule == "cosine"
    if cosine and args.polish_epochs and not args.no_peers:
        ap.error("--polish-epochs reads the peers' curves at other times, which a cosine run (finetune.schedule "
                 "cosine, the default) does not have; add --set finetune.schedule=constant")
    if args.validation:  # the draw `heldout:mnist` gives the flows
        x_tr, y_tr, x_val, y_val, _ = heldout("mnist", args.data_dir, args.validation)
        tr, te = Split(x_tr, y_tr), Split(x_val, y_val)
        print(f"validation: {args.validation} held-out training images (accuracies below are on them)")
    else:
        tr, te = load_split("mnist", True, args.data_dir), load_split("mnist", False, args.data_dir)
    print("settings:", {k: v for k, v in overrides.items()})
    torch.manual_seed(cfg.seed)
    dense = build_model("lenet300", 10, 1, 28)
    t0 = time.perf_counter()
    device = torch.device(args.device)
    train(dense, tr, cfg.train.model_copy(update={"epochs": args.dense_epochs, "seed": cfg.seed}), device=device)
    print(f"dense lenet300: {evaluate(dense, te)[0]:.2f}% ({time.perf_counter() - t0:.1f} s), device {device}, "
          f"{torch.get_num_threads()} threads; geodesic: {cfg.stages} stages, eta {cfg.geo.eta}, "
          f"anchor {cfg.geo.anchor}, distill {cfg.geo.distill_steps}x lr {cfg.geo.distill_lr} "
          f"T {cfg.geo.distill_temperature:g} radius {cfg.geo.distill_radius:g}, "
          f"metric batch {cfg.geo.metric_batch}, solver {cfg.geo.solver}")
    slices = param_slices(dense)
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        _save(_copy(dense), Path(args.save) / "dense.pt", evaluate(dense, te)[0])
    rows, polished = [], []
    for level in cfg.sparsity:
        meter = MachineLoad()
        geo_model, geo_wall, steps, path_min, stages, rejected, projected = geodesic(dense, slices, level, cfg, tr.x, te)
        load = {"geodesic": meter.reading()}
        geo_acc, proj_acc = evaluate(geo_model, te)[0], evaluate(projected, te)[0]
        if args.save:
            _save(_copy(geo_model), Path(args.save) / f"geodesic-{level:g}.pt", geo_acc)
        for ep in args.polish_epochs:
            ft, dl = (polish_variant(projected, slices, cfg, tr, te, ep, dense, distill=d) for d in (False, True))
            polished.append([level, ep, proj_acc, geo_wall, ft, dl])
            print(f"  {level:g}%: projected end {proj_acc:.2f} (geodesic {geo_wall:.1f} s), + {ep} epoch(s) masked "
                  f"fine-tuning {ft[0]:.2f} (+{ft[1]:.1f} s), + masked distillation {dl[0]:.2f} (+{dl[1]:.1f} s)",
                  flush=True)
        if args.no_peers:
            print(f"| {level:g} | {geo_acc:.2f} | projected {proj_acc:.2f} | path min {path_min:.2f} | {geo_wall:.1f} s "
                  f"| {steps} steps | {stages} stages, {rejected} undone |", flush=True)
            continue
        one = _copy(dense)
        oneshot_prune(one, slices, level, cfg.scope)
        two_ep = 2 * -(-tr.x.shape[0] // cfg.finetune.batch_size)
        peers, curves = {}, {}
        for distill in (False, True):
            if cosine:  # one run per budget, each annealed inside it
                meter.restart()
                eq = annealed_peer(dense, level, cfg, tr, te, seconds=geo_wall, distill=distill)
                load[f"{'distill' if distill else 'finetune'} equal time"] = meter.reading()
                at2 = annealed_peer(dense, level, cfg, tr, te, epochs=2, distill=distill)
                peers[distill] = (at2, eq, None)
                continue
            meter.restart()
            _, curve = finetune_curve(dense, slices, level, cfg, tr, te, args.match_budget * geo_wall,
                                      distill=distill)
            load[f"{'distill' if distill else 'finetune'} curve"] = meter.reading()
            at2 = next((a for (t, a), n in zip(curve, range(1, 10**9)) if n * 100 >= two_ep), curve[-1][1])
            peers[distill] = (at2, _acc_at(curve, geo_wall), next((t for t, a in curve if a >= geo_acc), None))
            curves[distill] = curve
        for row in polished[len(polished) - len(args.polish_epochs):]:  # each peer's curve at the total time
            row += [_at(curves[d], geo_wall + row[4 + d][1]) for d in (False, True)]
        print(f"  {level:g}%: CPU use while each ran (% of {os.cpu_count()} cores): "
              + ", ".join(f"{k} {load_text(v)}" for k, v in load.items()), flush=True)
        rows.append((level, geo_acc, path_min, geo_wall, steps, evaluate(one, te)[0], *peers[False], *peers[True][:2],
                     sparsity(flat_params(geo_model), slices)))
    if args.polish_epochs and not args.no_peers:
        print()
        print("| sparsity | epochs | geodesic | + fine-tuning (labels) | total s | finetune at that time "
              "| + distillation (no labels) | total s | distill at that time |")
        print("|---|---|---|---|---|---|---|---|---|")
        for lv, ep, ga, gw, (fa, fs), (da, ds), fe, de in polished:
            print(f"| {lv:g} | {ep} | {ga:.2f} | {fa:.2f} | {gw + fs:.1f} | {fe} | {da:.2f} | {gw + ds:.1f} | {de} |")
    if args.no_peers:
        return
    print()
    print("| sparsity | geodesic | path min | geo s | steps | oneshot | finetune 2ep | finetune equal time "
          "| ft s to match geo | geo/ft time at equal acc | distill 2ep | distill equal time | measured sparsity |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for lv, ga, pm, gw, st, oa, f2, fe, m, d2, de, sp in rows:
        ratio = f"{gw / m:.2f}" if m else ("not measured (cosine: no curve)" if cosine else
                                           f"> {args.match_budget:.0f}x: ft never matched")
        print(f"| {lv:g} | {ga:.2f} | {pm:.2f} | {gw:.1f} | {st} | {oa:.2f} | {f2:.2f} | {fe:.2f} | "
              f"{m if m is None else round(m, 1)} | {ratio} | {d2:.2f} | {de:.2f} | {sp:.4f} |")


if __name__ == "__main__":
    main()
