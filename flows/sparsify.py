"""Sparsification (paper Algorithm 1) as a Prefect flow tracked in MLflow.

Recipe: fingerprint the data -> train (or load) the dense network -> for every sparsity level, the stages
of Algorithm 1 as cached segment tasks, then the final hard projection -> baselines on the same dense
network (one-shot projection; prune + masked fine-tune for a fixed budget and for the geodesic's wall time)
-> log one MLflow child run per (method, level) and a summary on the parent run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from geodesic_core.config import FinetuneConfig, SparsifyConfig, TrainConfig
from geodesic_core.data import get_spec, resolve_data_dir
from geodesic_core.sparsify import stage_sparsities
from tasks.baselines import finetune_baseline, oneshot_baseline
from tasks.common import code_version
from tasks.data import fingerprint_data
from tasks.geodesic import final_projection, geodesic_segment
from tasks.plots import accuracy_along_path, accuracy_vs_level
from tasks.tracking import finish_parent_run, log_child_run, start_parent_run
from tasks.training import given_checkpoint, train_network

EXPERIMENT = "geodesic-sparsify"


def _for_level(params: SparsifyConfig, level: float, finetune: bool = False) -> SparsifyConfig:
    """The settings one level's tasks depend on (their cache key): adding a level to the list, or changing the
    dense network's training (its checkpoint hash is a separate input), does not invalidate other levels."""
    update = {"sparsity": [level] if not params.structured else params.sparsity, "train": TrainConfig(),
              "checkpoint": None}
    if not finetune:
        update["finetune"] = FinetuneConfig()
    return params.model_copy(update=update)


def _stage_levels(params: SparsifyConfig, level: float) -> list[float]:
    if params.structured:  # zero the filters a few at a time
        n = int(level)
        return [max(1, round(n * k / params.stages)) for k in range(1, params.stages + 1)]
    return stage_sparsities(level, params.stages)


@flow(name="sparsify", task_runner=ThreadPoolTaskRunner(max_workers=2))
def sparsify_flow(params: SparsifyConfig = SparsifyConfig(), data_dir: str | None = None,
                  experiment: str = EXPERIMENT) -> list[dict]:
    """Sparsify one dense network at every level of ``params.sparsity`` by traversing geodesics (Alg. 1)."""
    log = get_run_logger()
    data_dir = str(resolve_data_dir(data_dir))
    spec = get_spec(params.dataset)
    version = code_version()

    # --- Extract ----------------------------------------------------------------------------------------
    fingerprint = fingerprint_data(params.dataset, data_dir)
    parent = start_parent_run(experiment, params.model_dump(), fingerprint, version, str(flow_run.get_id()),
                              f"sparsify-{params.model}-{params.dataset}")
    if params.checkpoint:
        dense = given_checkpoint(params.checkpoint, params.model, spec.num_classes)
    else:
        dense = train_network(params.model, params.dataset, params.train.model_copy(update={"seed": params.seed}),
                              data_dir, fingerprint, version)
    log.info("dense network: %.2f%% test accuracy", dense["test_accuracy"])

    # --- Compute: stage k of every level, then stage k+1 (levels run concurrently) --------------------------
    levels = params.levels()
    chains = {level: dense for level in levels}
    segments: dict[float, list] = {level: [] for level in levels}
    for k in range(params.stages):
        for level in levels:
            chains[level] = geodesic_segment.submit(chains[level], dense, level, k, _stage_levels(params, level)[k],
                                                    _for_level(params, level), data_dir, fingerprint, version)
            segments[level].append(chains[level])
    finals = {lv: final_projection.submit(chains[lv], lv, _for_level(params, lv), data_dir, fingerprint, version)
              for lv in levels}
    oneshots = {lv: oneshot_baseline.submit(dense, lv, _for_level(params, lv), data_dir, fingerprint, version)
                for lv in levels}
    finetunes = {lv: finetune_baseline.submit(dense, lv, _for_level(params, lv, True), None, data_dir, fingerprint,
                                              version) for lv in levels}

    # --- Evaluate and track ---------------------------------------------------------------------------------
    summary, dense_row = [], {"step": 0, "distance": None, "test_accuracy": dense["test_accuracy"],
                              "test_loss": dense["test_loss"], "sparsity": 0.0, "path_length": 0.0}
    for level in levels:
        segs = [s.result() for s in segments[level]]
        final = finals[level].result()
        rows, offset = [dense_row], 0.0
        for seg in segs:
            rows += [{**r, "path_length": offset + r["path_length"]} for r in seg["rows"]]
            offset += seg["path_length"]
        geo_wall = sum(s["wall_seconds"] for s in segs)
        equal = (finetune_baseline.submit(dense, level, _for_level(params, level, True), geo_wall, data_dir,
                                          fingerprint, version).result()
                 if params.finetune.equal_time else None)
        geo = {"method": "geodesic", "level": level, "test_accuracy": final["test_accuracy"],
               "test_loss": final["test_loss"], "sparsity": final["sparsity"], "wall_seconds": geo_wall,
               "steps": segs[-1]["end_step"], "path_min_test_accuracy": min(r["test_accuracy"] for r in rows),
               "path_length": offset, "stop_reasons": ",".join(s["stop_reason"] for s in segs)}
        results = [(geo, final, rows)]
        for res in (oneshots[level].result(), finetunes[level].result(), equal):
            if res is not None:
                results.append(({k: res[k] for k in ("method", "level", "test_accuracy", "test_loss", "sparsity",
                                                       "wall_seconds", "steps")}, res, None))
        for row, ckpt, path_rows in results:
            method, budget = _method_budget(row["method"], params)
            metrics = {k: row.get(k) for k in ("test_accuracy", "sparsity", "wall_seconds", "test_loss")}
            if method == "geodesic":
                metrics |= {k: row[k] for k in ("path_min_test_accuracy", "path_length", "steps")}
            key = f"{method}-{level:g}" + ("" if budget == "-" else f"-{budget}")
            log_child_run(parent, key, {"method": method, "budget": budget, _level_param(params): level},
                          metrics, {"path_metrics.parquet": path_rows} if path_rows else {}, [ckpt["path"]],
                          {"accuracy_along_path.png": accuracy_along_path(path_rows, f"geodesic to {level:g}")}
                          if path_rows else None)
            summary.append({**row, "method": f"{method}" + ("" if budget == "-" else f" ({budget})")})
    xlabel = "filters zeroed" if params.structured else "sparsity (%)"
    finish_parent_run(parent, summary, {"accuracy_vs_sparsity.png": accuracy_vs_level(summary, xlabel,
                                                                                        f"{params.model} on {params.dataset}")},
                      f"Sparsification of {params.model} on {params.dataset}")
    return summary


def _method_budget(method: str, params: SparsifyConfig) -> tuple[str, str]:
    if method == "finetune":
        return "finetune", f"{params.finetune.epochs}ep"
    if method == "finetune_equal_time":
        return "finetune", "equal_time"
    return method, "-"


def _level_param(params: SparsifyConfig) -> str:
    return "target_filters" if params.structured else "target_sparsity"


if __name__ == "__main__":
    sparsify_flow()
