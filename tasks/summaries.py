"""Plain functions that turn task results (small dicts) into the rows the flow reports and tracks."""

from __future__ import annotations

from geodesic_core.config import SparsifyConfig

METRIC_KEYS = ("test_accuracy", "sparsity", "wall_seconds", "test_loss")
GEODESIC_KEYS = ("path_min_test_accuracy", "path_length", "steps")


def geodesic_row(dense: dict, segments: list[dict], final: dict, level: float) -> tuple[dict, list[dict]]:
    """The geodesic's summary row and its path table (dense network first; path length cumulative over the
    stages, each stage's closing projection not counted)."""
    rows = [{"step": 0, "distance": float("nan"), "test_accuracy": dense["test_accuracy"],
             "test_loss": dense["test_loss"], "sparsity": 0.0, "path_length": 0.0}]
    offset = 0.0
    for seg in segments:
        rows += [{**r, "path_length": offset + r["path_length"]} for r in seg["rows"]]
        offset += seg["path_length"]
    row = {"method": "geodesic", "budget": "-", "level": level, "test_accuracy": final["test_accuracy"],
           "test_loss": final["test_loss"], "sparsity": final["sparsity"],
           "wall_seconds": sum(s["wall_seconds"] for s in segments), "steps": segments[-1]["end_step"],
           "path_min_test_accuracy": min(r["test_accuracy"] for r in rows), "path_length": offset,
           "stop_reasons": ",".join(s["stop_reason"] for s in segments)}
    return row, rows


def baseline_row(result: dict, params: SparsifyConfig) -> dict:
    """Summary row of a baseline result; fine-tuning is one method with two budgets."""
    method, budget = result["method"], "-"
    if method == "finetune":
        budget = f"{params.finetune.epochs}ep"
    elif method == "finetune_equal_time":
        method, budget = "finetune", "equal_time"
    return {"method": method, "budget": budget, **{k: result[k] for k in ("level", "steps", *METRIC_KEYS)}}


def run_key(row: dict) -> str:
    return f"{row['method']}-{row['level']:g}" + ("" if row["budget"] == "-" else f"-{row['budget']}")


def label(row: dict) -> str:
    return row["method"] + ("" if row["budget"] == "-" else f" ({row['budget']})")
