"""Plot builders (matplotlib, Agg): each returns ``draw(path)`` for `log_child_run` / `finish_parent_run`."""

from __future__ import annotations

from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_along_path(rows: list[dict], title: str) -> Callable:
    """Test accuracy (left) and sparsity (right) against the geodesic step (paper Figure 4B)."""

    def draw(path):
        fig, ax = plt.subplots(figsize=(6, 4))
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["test_accuracy"] for r in rows], "o-", color="tab:orange", ms=3, label="test accuracy")
        ax.set_xlabel("geodesic step")
        ax.set_ylabel("test accuracy (%)")
        ax2 = ax.twinx()
        ax2.plot(steps, [100 * r["sparsity"] for r in rows], "--", color="tab:gray", label="sparsity")
        ax2.set_ylabel("sparsity (%)")
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

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
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return draw
