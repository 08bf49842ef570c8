"""What the anchor's output table (`geodesic_core.geo.AnchorCache`) saves a traversal, measured side by side.

The correctors read the anchor's outputs y*(x) at every Geo step (the output anchor's correction) and at every
distillation step (a fresh batch each): without the table that is one forward pass of the anchor per batch, two for
the connect anchor f_t = (1 - t) f_a + t f_b. With it each pool input goes through each network once per traversal.
This script runs the same traversal (by default the CIFAR connect geodesic's settings in `benchmarks/cifar.py`'s cpu
profile, 120 steps with 10 distillation batches each) with the table and with the anchor run on every batch,
alternating the two, and prints the median wall time of each, their ratio and how far the two paths end apart. A
traversal draws its batches from the whole pool, so the table only pays once inputs come back: time whole
traversals (``--steps`` as long as the real one), not a few steps.

    python benchmarks/anchor_cache.py --data-dir ../shared/data                                    # ResNet d11 w1/2
    python benchmarks/anchor_cache.py --data-dir ../shared/data --model vgg16 --width 0.125
    python benchmarks/anchor_cache.py --data-dir ../shared/data --model lenet300 --dataset mnist --distill-steps 0

The endpoints are two untrained networks of the registry (seeds 0 and 1; a traversal's cost does not depend on
what the weights have learned) unless ``--checkpoint-a/--checkpoint-b`` give trained ones (a state dict, or a
``{"state": ...}`` file as `benchmarks/cifar.py`'s cache writes).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a bare checkout too (a GPU machine)

from geodesic_core import GeoConfig, build_model, flat_params, load_split  # noqa: E402
from geodesic_core.connect import InterpolatedOutputs, connect_segment  # noqa: E402
from geodesic_core.data import get_spec  # noqa: E402

geo_mod = importlib.import_module("geodesic_core.geo")  # the module (the package's `geo` is the function)
warnings.filterwarnings("ignore")


def _endpoint(args, seed: int, path: str | None, spec) -> torch.nn.Module:
    arch = {k: v for k, v in (("width", args.width), ("depth", args.depth)) if v is not None}
    model = build_model(args.model, spec.num_classes, spec.in_channels, spec.image_size, seed=seed, **arch)
    if path:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob.get("state", blob))
    return model.to(args.device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default="resnet164")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--depth", type=int, default=11)
    ap.add_argument("--checkpoint-a", default=None)
    ap.add_argument("--checkpoint-b", default=None)
    ap.add_argument("--steps", type=int, default=120, help="Geo steps per timed traversal (a whole one: the table "
                    "fills as the pool's inputs are drawn, so a short run saves less than a long one)")
    ap.add_argument("--repeats", type=int, default=1, help="timed traversals of each kind, alternating")
    ap.add_argument("--pool", type=int, default=50000, help="training inputs the batches are drawn from")
    ap.add_argument("--metric-batch", type=int, default=64)
    ap.add_argument("--distill-steps", type=int, default=10)
    ap.add_argument("--distill-batch", type=int, default=128)
    ap.add_argument("--geo-steps", type=int, default=120, help="eta = distance / geo_steps, as cifar.py sizes it")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.model not in ("vgg11", "vgg16", "resnet164"):  # the networks with a width multiplier
        args.width = None
    if args.model != "resnet164":
        args.depth = None
    spec = get_spec(args.dataset)
    pool = load_split(args.dataset, True, args.data_dir).x[: args.pool].to(args.device)
    net_a, net_b = (_endpoint(args, s, p, spec) for s, p in ((0, args.checkpoint_a), (1, args.checkpoint_b)))
    w_b = flat_params(net_b)
    dist = float((flat_params(net_a) - w_b).norm())
    cfg = GeoConfig(eta=dist / args.geo_steps, anchor=1.0, max_steps=args.steps, patience=10 * args.steps,
                    metric_batch=args.metric_batch, solver="cg", cg_iters=10, bn_every=10,
                    distill_steps=args.distill_steps, distill_lr=0.003, distill_batch=args.distill_batch,
                    keep_progress=args.distill_steps > 0)
    real = geo_mod.AnchorCache

    def run(cached: bool, steps: int = args.steps) -> tuple[float, torch.Tensor]:
        geo_mod.AnchorCache = real if cached else (lambda anchor, pool: real(anchor, pool, max_floats=0))
        model = copy.deepcopy(net_a).requires_grad_(True)
        anchor = InterpolatedOutputs(copy.deepcopy(net_a), copy.deepcopy(net_b))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        connect_segment(model, w_b, pool, cfg.model_copy(update={"max_steps": steps}), anchor=anchor,
                        total_distance=dist, generator=torch.Generator().manual_seed(0))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t, flat_params(model)

    run(True, 2)  # warm-up (first-call costs: tracing, allocator)
    times: dict[bool, list[float]] = {True: [], False: []}
    ends = {}
    for _ in range(args.repeats):
        for cached in (False, True):
            wall, ends[cached] = run(cached)
            times[cached].append(wall)
    geo_mod.AnchorCache = real
    off, on = statistics.median(times[False]), statistics.median(times[True])
    moved = float((ends[False] - flat_params(net_a)).norm())
    print(f"{args.model} {args.dataset} width {args.width} depth {args.depth} on {args.device}: {args.steps} Geo "
          f"steps, metric batch {args.metric_batch}, {args.distill_steps} distillation steps of {args.distill_batch} "
          f"per step, pool {pool.shape[0]}, {torch.get_num_threads()} threads")
    print(f"anchor run on every batch: {off:.2f} s (median of {args.repeats}: "
          f"{', '.join(f'{t:.2f}' for t in times[False])})")
    print(f"anchor's output table:     {on:.2f} s ({', '.join(f'{t:.2f}' for t in times[True])})")
    print(f"ratio (table / every batch): {on / off:.3f}; the two ends apart by "
          f"{float((ends[True] - ends[False]).norm()) / max(moved, 1e-30):.2e} of the distance moved")


if __name__ == "__main__":
    main()
