"""Cost of the geodesic primitives relative to one SGD step, measured side by side on the same batch.

For ``lenet300`` on MNIST (a trained network, a real batch): one SGD step (forward, backward, momentum
update), one metric-vector product g v (one-shot and per product on a `MetricOperator` that reuses one forward pass at w, as the cg solver's iterations do), and one Geo step
(eq. 6-7) with each solver; plus the exact solver's KKT residual and its agreement with a dense reference
solve on the same sub-problem restricted to the Gram matrix. Timings are medians over interleaved repeats.

    python benchmarks/metric_cost.py --data-dir ../shared/data [--batch 64] [--device cpu|cuda]

Target (issue 2): metric-vector product <= 1.5x an SGD step.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from geodesic_core import (GeoConfig, GramFactor, SparseTarget, TrainConfig, build_model, flat_params,
                           load_split, metric_vector_product, param_slices, solve_geo_qp, train)
from geodesic_core.metric import MetricOperator
from geodesic_core.solve import _solve_exact

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
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    tr = load_split("mnist", True, args.data_dir)
    model = build_model("lenet300", 10, 1, 28)
    train(model, type(tr)(tr.x[:20000], tr.y[:20000]), TrainConfig(epochs=1), device=device)
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
    cfg = GeoConfig()
    cases = {
        "sgd_step": sgd_step,
        "metric_vector_product": lambda: metric_vector_product(model, x, v),
        "metric_vector_product_cached": lambda: op(v),
        "gram_matrix_eigh": lambda: GramFactor.compute(model, x),
        "geo_step_exact": lambda: solve_geo_qp(model, x, d, cfg.beta, cfg.eps, "exact"),
        f"geo_step_cg{args.cg_iters}": lambda: solve_geo_qp(model, x, d, cfg.beta, cfg.eps, "cg",
                                                              cg_iters=args.cg_iters),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in cases.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["sgd_step"])
    print(f"lenet300 / MNIST, batch {args.batch}, device {device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"{'operation':36s} {'median ms':>10s} {'x SGD step':>11s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:36s} {1e3 * med:10.3f} {med / base:11.2f}")

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
    main()
