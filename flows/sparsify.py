"""Sparsification (paper Algorithm 1) as a Prefect flow tracked in MLflow.

Recipe: fingerprint the data -> train (or load) the dense network -> for every sparsity level, the stages
of Algorithm 1 as cached segment tasks, then the final hard projection and the closing correction (masked
distillation toward the dense outputs, no labels) -> baselines on the same dense
network (one-shot projection; prune + masked fine-tune on the labels and prune + distillation without them,
each for a fixed budget and for the geodesic's wall time)
-> log one MLflow child run per (method, level) and a summary on the parent run.
"""

from __future__ import annotations

import math

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from geodesic_core.sparsify import FinetuneConfig, SparsifyConfig
from geodesic_core.data import get_spec
from tasks.baselines import finetune_baseline, oneshot_baseline, prune_train_baseline
from flows.common import closing_parent_on_failure, confine_paths, default_task_runner
from tasks.common import code_version
from tasks.data import fingerprint_data
from tasks.geodesic import closing_correction, final_projection, geodesic_segment
from tasks.plots import accuracy_vs_level
from tasks.summaries import baseline_row, child_key, geodesic_row, label
from tasks.tracking import (child_track, finish_parent_run, log_level_runs, recording_system_metrics,
                            start_parent_run)
from tasks.training import given_checkpoint, train_network

EXPERIMENT = "geodesic-sparsify"


def _for_level(params: SparsifyConfig, level: float, finetune: bool = False) -> SparsifyConfig:
    """The settings one level's tasks depend on (their cache key): adding a level to the list, or changing the
    dense network's training (its checkpoint hash is a separate input), does not invalidate other levels."""
    update = {"sparsity": [level] if not params.structured else params.sparsity, "train": type(params.train)(),
              "checkpoint": None}
    if not finetune:
        update["finetune"] = FinetuneConfig()
        update["prune_train_epochs"] = SparsifyConfig.model_fields["prune_train_epochs"].default
    return params.model_copy(update=update)


def _tracks(params: SparsifyConfig, parent: dict, level: float) -> dict[str, dict]:
    """The MLflow child run of every method at ``level``: its key and params (every setting of the flow, with
    the level in place of the list of levels)."""
    settings = params.model_dump(exclude={"sparsity"})
    budgets = {"geodesic": ("geodesic", "-"), "oneshot": ("oneshot", "-"),
               "finetune": ("finetune", f"{params.finetune.epochs}ep"),
               "finetune_equal_time": ("finetune", "equal_time"),
               "distill": ("distill", f"{params.finetune.epochs}ep"), "distill_equal_time": ("distill", "equal_time"),
               "prune_train": ("prune_train", f"{params.prune_train_epochs:g}ep_per_filter")}
    return {name: child_track(parent, child_key(method, level, budget), settings, method=method, budget=budget,
                              **{_level_param(params): level})
            for name, (method, budget) in budgets.items()}


@flow(name="sparsify", task_runner=default_task_runner())
def sparsify_flow(params: SparsifyConfig = SparsifyConfig(), data_dir: str | None = None,
                  experiment: str = EXPERIMENT) -> list[dict]:
    """Sparsify one dense network at every level of ``params.sparsity`` by traversing geodesics (Alg. 1)."""
    data_dir = confine_paths(data_dir, [params.checkpoint])  # first: inside the roots
    log = get_run_logger()
    spec = get_spec(params.dataset, data_dir)
    version = code_version(params.model)

    # --- Extract ----------------------------------------------------------------------------------------
    fingerprint = fingerprint_data(params.dataset, data_dir)
    parent = start_parent_run(experiment, params.model_dump(), fingerprint, version, str(flow_run.get_id()),
                              f"sparsify-{params.model}-{params.dataset}")
    with closing_parent_on_failure(parent), recording_system_metrics(parent):
        if params.checkpoint:
            dense = given_checkpoint.submit(params.checkpoint, params.model, spec.num_classes, params.arch()).result()
        else:  # every compute task is submitted: it runs in a task-runner thread, never in the flow's own
            train = params.train.model_copy(update={"seed": params.seed})
            track = child_track(parent, "train-dense", {"train": train.model_dump()}, finish=True, method="train",
                                model=params.model, dataset=params.dataset, **params.arch())
            dense = train_network.submit(params.model, params.dataset, train, data_dir, fingerprint, version,
                                         arch=params.arch(), track=track).result()
        log.info("dense network: %.2f%% test accuracy", dense["test_accuracy"])
        return _sparsify_levels(params, parent, dense, data_dir, fingerprint, version)


def _sparsify_levels(params: SparsifyConfig, parent: dict, dense: dict, data_dir: str, fingerprint: str,
                     version: str) -> list[dict]:
    """Compute and track every level (the part of the flow after the dense network exists)."""
    # --- Compute: the baselines, then the stages of every level in rounds (levels run concurrently) --------
    levels = params.levels()
    tracks = {level: _tracks(params, parent, level) for level in levels}
    oneshots = {lv: oneshot_baseline.submit(dense, lv, _for_level(params, lv), data_dir, fingerprint, version,
                                            track=tracks[lv]["oneshot"]) for lv in levels}
    peers = ["finetune", "distill"] if params.finetune.distill else ["finetune"]  # on the labels; label-free
    finetunes = {(lv, m): finetune_baseline.submit(dense, lv, _for_level(params, lv, True), None, data_dir, fingerprint,
                                                   version, track=tracks[lv][m], distill=m == "distill")
                 for lv in levels for m in peers}
    cycles = {lv: prune_train_baseline.submit(dense, lv, _for_level(params, lv, True), data_dir, fingerprint, version,
                                              track=tracks[lv]["prune_train"])
              for lv in levels} if params.structured and params.prune_train_epochs > 0 else {}
    chains, segments, rejected = _traverse(params, tracks, dense, data_dir, fingerprint, version)
    finals = {lv: final_projection.submit(chains[lv], lv, _for_level(params, lv), data_dir, fingerprint, version)
              for lv in levels}
    if params.polish_epochs:  # the closing correction toward the dense outputs, mask fixed (no labels)
        finals = {lv: closing_correction.submit(finals[lv], dense, lv, _for_level(params, lv), data_dir, fingerprint,
                                                version) for lv in levels}

    # --- Evaluate and track ---------------------------------------------------------------------------------
    summary = []
    for level in levels:
        final = finals[level].result()
        geo, path = geodesic_row(dense, segments[level], final, level, rejected[level])
        baselines = [oneshots[level].result()] + [finetunes[level, m].result() for m in peers]
        if level in cycles:  # structured: the paper's iterative prune-train cycle
            baselines.append(cycles[level].result())
        if params.finetune.equal_time:  # fine-tuning (and distillation) for as long as the geodesic took
            baselines += [finetune_baseline.submit(  # one after the other: each gets the time, not half the cores
                dense, level, _for_level(params, level, True), geo["wall_seconds"], data_dir, fingerprint, version,
                track=tracks[level][f"{m}_equal_time"], distill=m == "distill").result() for m in peers]
        entries = [(tracks[level]["geodesic"], geo, final["path"], path)] + [
            (tracks[level][b["method"]], baseline_row(b, params), b["path"], None) for b in baselines]
        log_level_runs(entries)
        summary += [{**row, "method": label(row)} for _, row, _, _ in entries]
    finish_parent_run(parent, summary, {"accuracy_vs_sparsity.png": accuracy_vs_level(
        summary, "filters zeroed" if params.structured else "sparsity (%)", f"{params.model} on {params.dataset}")},
        f"Sparsification of {params.model} on {params.dataset}")
    return summary


def _traverse(params: SparsifyConfig, tracks: dict, dense: dict, data_dir: str, fingerprint: str, version: str):
    """Every level's stages (`SparsifyConfig.stage_schedule`), one round at a time: each round submits the next
    stage of every unfinished level, then reports each stage's fidelity to its schedule, which accepts it (the
    path continues from its end) or rejects it (from the previous end, with a shorter stage). Returns, per
    level, the path's end, its accepted stages and its rejected ones (their time counts as the geodesic's)."""
    levels = params.levels()
    plans = {level: params.stage_schedule(level) for level in levels}
    chains: dict[float, dict] = {level: dense for level in levels}
    segments: dict[float, list[dict]] = {level: [] for level in levels}
    rejected: dict[float, list[dict]] = {level: [] for level in levels}
    while running := {lv: p for lv in levels if (p := plans[lv].propose()) is not None}:
        futures = {lv: geodesic_segment.submit(chains[lv], dense, lv, len(plans[lv].history), p, _for_level(params, lv),
                                               data_dir, fingerprint, version, _finite(plans[lv].max_drop()),
                                               track=tracks[lv]["geodesic"])
                   for lv, p in running.items()}
        for lv, future in futures.items():
            seg = future.result()  # a failed stage raises its own error here
            if plans[lv].report(seg["fidelity"]):  # the same test the task made (`accepted`), on the same numbers
                chains[lv] = seg
                segments[lv].append(seg)
            else:
                rejected[lv].append(seg)
    return chains, segments, rejected


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _level_param(params: SparsifyConfig) -> str:
    return "target_filters" if params.structured else "target_sparsity"


if __name__ == "__main__":
    sparsify_flow()
