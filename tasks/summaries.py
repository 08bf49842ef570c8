"""Plain functions that turn task results (small dicts) into the rows the flow reports and tracks."""

from __future__ import annotations

from geodesic_core.sparsify import SparsifyConfig

METRIC_KEYS = ("test_accuracy", "sparsity", "wall_seconds", "test_loss")
GEODESIC_KEYS = ("path_min_test_accuracy", "path_length", "steps", "stages", "rejected_stages",
                 "projected_test_accuracy", "polish_seconds")


def geodesic_row(dense: dict, segments: list[dict], final: dict, level: float,
                 rejected: list[dict] = ()) -> tuple[dict, list[dict]]:
    """The geodesic's summary row and its path table (dense network first; path length cumulative over the
    accepted stages, each stage's closing projection not counted). The time of ``rejected`` stages (of an
    adaptive schedule; not on the path) and of the closing correction (``final`` from `closing_correction`;
    its accuracy is the result, ``projected_test_accuracy`` the projection's before it) counts in the wall time."""
    rows = [{"step": 0, "distance": float("nan"), "test_accuracy": dense["test_accuracy"],
             "test_loss": dense["test_loss"], "sparsity": 0.0, "path_length": 0.0}]
    offset = 0.0
    for seg in segments:
        rows += [{**r, "path_length": offset + r["path_length"]} for r in seg["rows"]]
        offset += seg["path_length"]
    row = {"method": "geodesic", "budget": "-", "level": level, "test_accuracy": final["test_accuracy"],
           "test_loss": final["test_loss"], "sparsity": final["sparsity"],
           "wall_seconds": sum(s["wall_seconds"] for s in [*segments, *rejected]) + final.get("polish_seconds", 0.0),
           "projected_test_accuracy": final.get("projected_test_accuracy", final["test_accuracy"]),
           "polish_seconds": final.get("polish_seconds", 0.0), "steps": segments[-1]["end_step"],
           "stages": len(segments), "rejected_stages": len(rejected),
           "path_min_test_accuracy": min(r["test_accuracy"] for r in rows), "path_length": offset,
           "stop_reasons": ",".join(s["stop_reason"] for s in segments)}
    return row, rows


def baseline_row(result: dict, params: SparsifyConfig) -> dict:
    """Summary row of a baseline result; fine-tuning (and distillation) is one method with two budgets."""
    method, budget = result["method"], "-"
    if method in ("finetune", "distill"):
        budget = f"{params.finetune.epochs}ep"
    elif method in ("finetune_equal_time", "distill_equal_time"):
        method, budget = method.removesuffix("_equal_time"), "equal_time"
    elif method == "prune_train":
        budget = f"{params.prune_train_epochs:g}ep_per_filter"
    return {"method": method, "budget": budget, **{k: result[k] for k in ("level", "steps", *METRIC_KEYS)}}


def child_key(method: str, level: float, budget: str = "-") -> str:
    """The MLflow child run of a sparsification method at one level (and budget)."""
    return f"{method}-{level:g}" + ("" if budget == "-" else f"-{budget}")


def run_key(row: dict) -> str:
    return child_key(row["method"], row["level"], row["budget"])


def label(row: dict) -> str:
    return row["method"] + ("" if row["budget"] == "-" else f" ({row['budget']})")


def continual_row(method: str, params, trained: list[dict], results: list[dict],
                  extra_seconds: float = 0.0) -> tuple[dict, list[list[float]]]:
    """A continual method's summary row and accuracy matrix R (R[i][j]: accuracy on task j+1 after learning
    task i+1; row 1 is the task-1 network, shared by every method).

    ``wall_seconds``: the method's own compute after task 1: the per-task networks w_2..w_k and the traversals
    (geodesic) or scans (linear); the sequential training (sgd, l2, ewc); plus ``extra_seconds``: the Fisher that EWC
    keeps, and the geodesic with fisher_weight > 0 or polish_epochs > 0.
    ``epochs`` (the sequential baselines): their training epochs summed over the stages. ``head_kl_before`` /
    ``head_kl_after`` (the geodesic with refit_head): the KL of task i's head to w_i's outputs before and after its
    refit, summed over the stages.
    """
    from geodesic_core.continual import average_accuracy, backward_transfer

    matrix = [list(trained[0]["accuracies"])] + [list(r["accuracies"]) for r in results]
    final = matrix[-1]
    wall = sum(r["wall_seconds"] for r in results) + extra_seconds
    if method in ("geodesic", "linear"):
        wall += sum(t["wall_seconds"] for t in trained[1:])
    row = {"method": method, "scenario": params.scenario,
           **{f"acc_task_{j + 1}": a for j, a in enumerate(final)},
           "avg_accuracy": average_accuracy(final), "min_accuracy": min(final), "bwt": backward_transfer(matrix),
           "wall_seconds": wall}
    if results and "epochs" in results[0]:  # the sequential baselines: their epochs over all stages
        row["epochs"] = sum(r["epochs"] for r in results)
    if method in ("geodesic", "linear"):  # w_i aligned to w_{1:i-1} before each stage (ContinualConfig.align)
        row["aligned"] = bool(results) and all(r.get("aligned", False) for r in results)
        if row["aligned"]:
            row["aligned_units_moved"] = sum(r["aligned_units_moved"] for r in results)
    if method == "geodesic":
        row.update(steps=sum(r["steps"] for r in results), stop_reasons=",".join(r["stop_reason"] for r in results),
                   **{key: sum(r[key] for r in results) for key in ("path_length", "path_length_euclidean",
                                                                     "line_path_length", "line_path_length_euclidean")})
        if results and "head_kl_before" in results[0]:  # task i's head refit after each traversal (refit_head)
            row.update({key: sum(r[key] for r in results) for key in ("head_kl_before", "head_kl_after")})
    return row, matrix


def connect_rows(endpoints: list[dict], segments: list[dict], peers: dict[str, dict],
                 alignment: dict | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """Summary rows (the geodesic, then every path of ``peers``, by name: ``linear``, and the trained curves
    ``bezier``, ``bezier_distill`` and their ``*_equal_time`` runs) and path tables of a mode-connectivity run;
    every row says whether w_2 was aligned to w_1 (``alignment``: the `align_endpoint` reference, None when not;
    then also how many hidden units moved). The geodesic's table starts
    at w_1; its path length is cumulative over the segments. Path minimum and mean are over the evaluated
    points, endpoints included."""
    start = {**endpoints[0], "path_length": 0.0}
    start.pop("segment_path_length", None)
    geo_rows, offset = [start], 0.0
    for seg in segments:
        geo_rows += [{k: v for k, v in {**r, "path_length": offset + r["segment_path_length"]}.items()
                      if k != "segment_path_length"} for r in seg["rows"]]
        offset += seg["path_length"]
    ends = {"endpoint_a_accuracy": endpoints[0]["test_accuracy"], "endpoint_b_accuracy": endpoints[1]["test_accuracy"],
            "aligned": alignment is not None, **({"aligned_units_moved": alignment["moved"]} if alignment else {})}

    def stats(rows):
        accs = [r["test_accuracy"] for r in rows]
        return {"path_min_test_accuracy": min(accs), "path_mean_test_accuracy": sum(accs) / len(accs)}

    geo = {"method": "geodesic", **ends, **stats(geo_rows), "path_length": offset,
           "path_length_euclidean": sum(s["path_length_euclidean"] for s in segments),
           "final_distance_ratio": geo_rows[-1]["distance_ratio"],
           "wall_seconds": sum(s["wall_seconds"] for s in segments), "steps": segments[-1]["end_step"],
           "completion_steps": sum(s["steps"] for s in segments if s["loose"]),
           "stop_reasons": ",".join(s["stop_reason"] for s in segments)}
    summary, tables = [geo], {"geodesic": geo_rows}
    for name, other in peers.items():
        summary.append({"method": name, **ends, **stats(other["rows"]), "path_length": other["path_length"],
                        "path_length_euclidean": other["path_length_euclidean"], "final_distance_ratio": 0.0,
                        "wall_seconds": other["wall_seconds"],
                        **({"epochs": other["epochs"]} if "epochs" in other else {})})
        tables[name] = other["rows"]
    return summary, tables
