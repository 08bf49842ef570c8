"""Plot builders (matplotlib, Agg): each returns ``draw(path)`` for `log_child_run` / `finish_parent_run`."""

from __future__ import annotations

from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_along_path(rows: list[dict], title: str) -> Callable:
    """Test accuracy (left) and sparsity (right) against the geodesic step (paper Figure 4B)."""

    def draw(path):
        fig, ax = plt.subplots(figsize=(6, 4))
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["test_accuracy"] for r in rows], "o-", color="tab:orange", ms=3, label="test accuracy")
        ax.set_xlabel("geodesic step")
        ax.set_ylabel("test accuracy (%)")
        ax2 = ax.twinx()
        ax2.plot(steps, [r["sparsity"] for r in rows], "--", color="tab:gray", label="sparsity")
        ax2.set_ylabel("sparsity (%)")
        ax.set_title(title)
        _save(fig, path)

    return draw


def accuracy_vs_level(summary: list[dict], xlabel: str, title: str) -> Callable:
    """Final test accuracy against the sparsity level for every method (paper Figure 4A)."""

    def draw(path):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in sorted({r["method"] for r in summary}):
            pts = sorted((r["level"], r["test_accuracy"]) for r in summary if r["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
        _save(fig, path)

    return draw


def _task_columns(rows: list[dict]) -> list[str]:
    return sorted({k for r in rows for k in r if k.startswith("acc_task_")}, key=lambda c: int(c.rsplit("_", 1)[1]))


def accuracy_along_paths(path_rows: list[dict], line_rows: list[dict], title: str) -> Callable:
    """Accuracy on every task so far along the geodesic (solid, against its progress: the fraction of the
    distance to w_{1:i-1} covered) and along the straight line (dashed, against α) (paper Figure 5A/F)."""

    def draw(path):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        d0 = path_rows[0]["distance"] or 1.0
        progress = [1 - r["distance"] / d0 for r in path_rows]
        for i, col in enumerate(_task_columns(path_rows)):
            color = f"C{i}"
            ax.plot(progress, [r[col] for r in path_rows], "o-", ms=3, color=color, label=f"geodesic, task {i + 1}")
            ax.plot([r["alpha"] for r in line_rows], [r[col] for r in line_rows], "--", color=color,
                    label=f"straight line, task {i + 1}")
        ax.set_xlabel("fraction of the way to w_1:i-1 (geodesic: 1 - distance/initial; line: α)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        _save(fig, path)

    return draw


def pca_paths(path_rows: list[dict], line_rows: list[dict], title: str) -> Callable:
    """Both paths projected on their first two principal components (paper Figure 5B)."""

    def draw(path):
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([r["pc1"] for r in path_rows], [r["pc2"] for r in path_rows], "o-", ms=3, color="m", label="geodesic")
        ax.plot([r["pc1"] for r in line_rows], [r["pc2"] for r in line_rows], "-", color="tab:blue",
                label="straight line")
        ax.plot(line_rows[0]["pc1"], line_rows[0]["pc2"], "o", color="r", ms=8, label="w_i (start)")
        ax.plot(line_rows[-1]["pc1"], line_rows[-1]["pc2"], "^", color="r", ms=8, label="w_1:i-1 (target)")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        _save(fig, path)

    return draw


def accuracy_matrix_plot(summary: list[dict], k: int) -> Callable:
    """Final test accuracy on every task, one group of bars per method."""

    def draw(path):
        fig, ax = plt.subplots(figsize=(1.2 * k * len(summary) / 2 + 3, 4))
        width = 0.8 / k
        for j in range(k):
            ax.bar([i + j * width for i in range(len(summary))], [r[f"acc_task_{j + 1}"] for r in summary], width,
                   label=f"task {j + 1}")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(summary))], [r["method"] for r in summary])
        ax.set_ylabel("test accuracy after the last task (%)")
        ax.legend(fontsize=7)
        _save(fig, path)

    return draw


CONNECT_PATHS = {"geodesic": "o-", "geodesic_relaxed": "*-", "linear": "s--", "bezier": "^:",  # path -> line style
                 "bezier_equal_time": "v-.", "bezier_distill": "d:", "bezier_distill_equal_time": "x-."}


def connect_accuracy_plot(tables: dict[str, list[dict]], params) -> Callable:
    """Test accuracy along the geodesic, the straight line (and the Bezier curves, if trained), against the position along the chord
    w_1 -> w_2 (0 at w_1, 1 at w_2) (paper Figure 7)."""

    def draw(path):
        fig, ax = plt.subplots(figsize=(6, 4))
        chord = tables["linear"][-1]["chord_x"] or 1.0
        for name, style in CONNECT_PATHS.items():
            rows = tables.get(name)
            if rows is None:
                continue
            ax.plot([r["chord_x"] / chord for r in rows], [r["test_accuracy"] for r in rows], style, ms=3, label=name)
        ax.set_xlabel("position along the chord w_1 -> w_2")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{params.model} on {params.dataset}: paths between two modes", fontsize=9)
        ax.legend()
        ax.grid(alpha=0.3)
        _save(fig, path)

    return draw


def chord_view(tables: dict[str, list[dict]]) -> Callable:
    """The paths in the plane of (coordinate along w_2 - w_1, distance from the straight line)."""

    def draw(path):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, style in CONNECT_PATHS.items():
            rows = tables.get(name)
            if rows is None:
                continue
            sc = ax.scatter([r["chord_x"] for r in rows], [r["chord_y"] for r in rows],
                            c=[r["test_accuracy"] for r in rows], cmap="viridis", s=14, zorder=3)
            ax.plot([r["chord_x"] for r in rows], [r["chord_y"] for r in rows], style[1:], lw=1, label=name)
        fig.colorbar(sc, ax=ax, label="test accuracy (%)")
        ax.set_xlabel("along w_2 - w_1")
        ax.set_ylabel("distance from the straight line")
        ax.legend(fontsize=8)
        _save(fig, path)

    return draw
