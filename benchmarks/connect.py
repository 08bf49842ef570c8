"""Mode connectivity: the geodesic (Algorithm 3) against the straight line between the same two networks and
the trained quadratic Bezier curve (Garipov et al. 2018), the peer baseline, on the labels and label-free
(fit to the endpoints' interpolated outputs, reading only the inputs, as the geodesic does).

Runs the connect flow on the embedded defaults in a fresh temporary working directory (nothing cached) and
prints a Markdown table: endpoint accuracies, the minimum and mean test accuracy along each path, the
length under g and the Euclidean length, how far the path ends from w_2, and wall time (for the Bezier
curve: its training time), with the ratio of the geodesic's time to each curve's training. Each curve is
trained twice, for `--bezier-train.epochs` and for the geodesic's wall time (`--bezier-equal-time`, on here
unless `--no-bezier-equal-time` or both `--no-bezier` and `--no-bezier-distill` are given), and the last lines
say, at equal wall time, where the geodesic's path minimum is against each curve's (level: within 0.4 point).
Every `geodesic connect` option is accepted:

    python benchmarks/connect.py --data-dir ../shared/data --model lenet300 --dataset mnist
    python benchmarks/connect.py --data-dir ../shared/data --model cnn --dataset fashion_mnist
    python benchmarks/connect.py --data-dir DATA --model vgg16 --dataset cifar10 --train.epochs 200   # GPU
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _flowrun import print_load, run_fresh, versus, with_default  # noqa: E402
from geodesic_core.connect import ConnectConfig  # noqa: E402


def main(argv: list[str]) -> None:
    if not {"--no-bezier", "--no-bezier-distill"} <= set(argv):
        argv = with_default(argv, "bezier-equal-time")
    params, summary, total, load = run_fresh("connect", argv, ConnectConfig, "flows.connect", "connect_flow")
    print(f"\n{params.model} on {params.dataset}, endpoints trained {params.train.epochs} epochs from seeds "
          f"{params.seed} and {params.seed_b}; flow wall time {total:.0f} s\n")
    head = ["path", "w_1 acc", "w_2 acc", "path min", "path mean", "length under g", "Euclidean length",
            "end distance ratio", "wall s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in summary:
        name = r["method"] + (f" ({r['epochs']:.3g} epochs)" if "epochs" in r else "")
        cells = [name, *(f"{r[k]:.2f}" for k in ("endpoint_a_accuracy", "endpoint_b_accuracy", "path_min_test_accuracy",
                                                 "path_mean_test_accuracy", "path_length", "path_length_euclidean",
                                                 "final_distance_ratio")), f"{r['wall_seconds']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    geo = summary[0]
    print(f"\ngeodesic: {geo['steps']} Geo steps ({geo['stop_reasons']}), {geo['completion_steps']} of them "
          f"completion steps")
    print(f"w_2 aligned to w_1 (--align {params.align}): "
          + (f"yes, {geo['aligned_units_moved']} hidden units moved" if geo.get("aligned") else "no"))
    print("\n".join(curve_lines(summary)))
    print_load(load)


def curve_lines(summary: list[dict]) -> list[str]:
    """The lines comparing the geodesic with each curve: at the curve's fixed epochs, and at equal wall time. The
    curves' equal-time budget is the relaxed path's time when the flow relaxes the geodesic (`--relax-epochs`: the
    traversal's time plus the fit's), so the relaxed path is what they are compared with there."""
    rows = {r["method"]: r for r in summary}
    geo = summary[0]
    timed, label = (rows["geodesic_relaxed"], "relaxed geodesic") if "geodesic_relaxed" in rows else (geo, "geodesic")
    lines = []
    for curve, what in (("bezier", "Bezier curve"), ("bezier_distill", "label-free Bezier curve")):
        if (fixed := rows.get(curve)) is not None:
            lines.append(f"{what} ({fixed['epochs']:.3g} epochs): path minimum "
                         f"{fixed['path_min_test_accuracy']:.2f} vs the geodesic's "
                         f"{geo['path_min_test_accuracy']:.2f}; "
                         f"geodesic time / curve's training time {geo['wall_seconds'] / fixed['wall_seconds']:.2f}")
        if (equal := rows.get(f"{curve}_equal_time")) is not None:
            lines.append(f"at equal wall time ({timed['wall_seconds']:.0f} s; the curve {equal['epochs']:.3g} "
                         f"epochs in {equal['wall_seconds']:.0f} s), the {label}'s path minimum vs the {what}'s: "
                         f"{versus(timed['path_min_test_accuracy'], equal['path_min_test_accuracy'])}")
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
