"""Cost of the geodesic primitives relative to one SGD step, measured side by side on the same batch.

For a registered model on a dataset (default ``lenet300`` on MNIST; a briefly trained network, a real batch):
one SGD step (forward, backward, momentum update), one metric-vector product g v (one-shot; per product on a
`MetricOperator` that reuses one forward pass at w, J v as the double vjp; and per product with J v from the
`TracedPushforward` that the traversal's cg solver uses, traced once, plus what pointing it at a new w and batch
costs per step), the exact solver's Gram matrix (its convolutions by the cheaper rule, and all by the direct
rule used until stop 51: `geodesic_core.metric.conv_weight_gram`), and one Geo step (eq. 6-7) with each solver
(cg with each J v); plus the exact solver's KKT residual and its agreement with a dense reference solve on the
same sub-problem restricted to the Gram matrix.
Timings are medians over interleaved repeats.

    python benchmarks/metric_cost.py --data-dir ../shared/data [--batch 64] [--device cpu|cuda]
    python benchmarks/metric_cost.py --model vgg16 --dataset cifar10 [--width 0.25] [--depth 20]

Target (issue 2): metric-vector product <= 1.5x an SGD step. Batch norm runs in eval mode in every case (the
SGD step too, so all cases compute the same function); everything is float32. On a GPU the peak memory of
each case is reported (never an n x n matrix: the exact solver's Gram matrix is N m x N m).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a bare checkout too (a GPU machine)

from geodesic_core import (GeoConfig, GramFactor, SparseTarget, TrainConfig, build_model, flat_params, gram_matrix,
                           load_split, metric_vector_product, param_slices, solve_geo_qp, train)
from geodesic_core.data import get_spec
from geodesic_core.metric import MetricOperator, TracedPushforward
from geodesic_core.solve import _solve_exact, _solve_lanczos
from geodesic_core.train import full_float32

warnings.filterwarnings("ignore")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--cg-iters", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="lenet300")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--train-batches", type=int, default=150, help="SGD steps before measuring (a trained-ish network)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    spec = get_spec(args.dataset)
    tr = load_split(args.dataset, True, args.data_dir)
    model = build_model(args.model, spec.num_classes, spec.in_channels, spec.image_size, seed=0, width=args.width,
                        depth=args.depth)
    train(model, tr, TrainConfig(epochs=1, precision="float32"), device=device, max_batches=args.train_batches,
          augment=spec.augment)
    model.eval()  # batch norm with running statistics, as the metric sees the network
    x, y = tr.x[: args.batch].to(device), tr.y[: args.batch].to(device)
    w = flat_params(model)
    d = SparseTarget(param_slices(model), 90)(w, 0) - w
    v = torch.randn_like(w)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)  # lr 0: weights stay put

    def sgd_step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    op = MetricOperator(model, x)
    op(v)  # forward pass and pushforward graph built once at w
    traced = TracedPushforward(model)
    _sync(device)
    t = time.perf_counter()
    traced_op = MetricOperator(model, x, "logits", traced)  # the trace, once per traversal
    _sync(device)
    trace_s = time.perf_counter() - t
    if traced.failed:
        raise SystemExit(f"J v could not be traced for {args.model}: {traced.failed}")
    stepper = TracedPushforward(model)  # a second trace, re-pointed at every call as the traversal does per step
    MetricOperator(model, x, "logits", stepper)
    cfg = GeoConfig()
    cases = {
        "sgd_step": sgd_step,
        "metric_vector_product": lambda: metric_vector_product(model, x, v),
        "metric_vector_product_cached": lambda: op(v),
        "metric_vector_product_traced": lambda: traced_op(v),
        "traced_point (forward part, per step)": lambda: MetricOperator(model, x, "logits", stepper),
        "gram_matrix": lambda: gram_matrix(model, x),
        "gram_matrix, direct conv rule": lambda: gram_matrix(model, x, conv_rule="direct"),
        "gram_matrix_eigh": lambda: GramFactor.compute(model, x),
        "geo_step_exact": lambda: solve_geo_qp(model, x, d, cfg.beta, cfg.eps, "exact"),
        f"geo_step_cg{args.cg_iters}": lambda: solve_geo_qp(model, x, d, cfg.beta, cfg.eps, "cg",
                                                              cg_iters=args.cg_iters),
        f"geo_step_cg{args.cg_iters}_traced": lambda: _solve_lanczos(MetricOperator(model, x, "logits", stepper), d,
                                                                     cfg.beta, cfg.eps, args.cg_iters),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    peak: dict[str, float] = {}
    for name, fn in cases.items():  # warm-up, and each case's peak memory on a GPU
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base_mem = torch.cuda.memory_allocated(device)
        fn()
        if device.type == "cuda":
            _sync(device)
            peak[name] = (torch.cuda.max_memory_allocated(device) - base_mem) / 2 ** 30
    for _ in range(args.repeats):
        for name, fn in cases.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["sgd_step"])
    n = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"{args.model} (width {args.width}{f', depth {args.depth}' if args.depth else ''}, {n} weights) / "
          f"{args.dataset}, batch {args.batch} (N m = {args.batch * spec.num_classes}), {where}, median of "
          f"{args.repeats}; J v traced once in {trace_s:.2f} s")
    print(f"{'operation':40s} {'median ms':>10s} {'x SGD step':>11s} {'peak GiB':>9s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:40s} {1e3 * med:10.3f} {med / base:11.2f} {peak.get(name, float('nan')):9.2f}")

    # exact solver accuracy: KKT residual of eq. 6 with metric products, and relative step error vs cg
    gf = GramFactor.compute(model, x)
    sol = _solve_exact(gf, d, cfg.beta, cfg.eps)
    th = sol.theta
    stat = (2 * metric_vector_product(model, x, th) + 2 * sol.lam * th - cfg.beta * d).norm() / (cfg.beta * d.norm())
    feas = abs(float(th @ th) - cfg.eps) / cfg.eps
    cg = solve_geo_qp(model, x, d, cfg.beta, cfg.eps, "cg", cg_iters=args.cg_iters, return_info=True)
    print(f"exact solver: KKT stationarity {float(stat):.2e}, constraint |θᵀθ-ε|/ε {feas:.2e}, λ {sol.lam:.4g}")
    print(f"cg ({args.cg_iters} products): residual {cg.residual:.2e}, "
          f"|θ_cg-θ_exact|/|θ_exact| {float((cg.theta - th).norm() / th.norm()):.2e}")


if __name__ == "__main__":
    with full_float32():  # every case in IEEE float32 on a GPU, the SGD step too (no TF32 convolutions)
        main()
