"""Continual learning (paper Algorithm 2) as a Prefect flow tracked in MLflow.

Recipe: fingerprint the data -> train one network per task (concurrently) -> the geodesic chain
w_{1:i} = Geo(w_i, g^i, w_{1:i-1}) and the baseline chains (best linear-path point, sequential SGD, SGD with
an L2 pull, EWC) -> (if ``equal_time``) the sequential chains again, each stage given the geodesic's stage
time -> the accuracy matrix of every method -> one MLflow child run per method and a summary
on the parent run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from geodesic_core.continual import ContinualConfig
from geodesic_core.continual import get_scenario
from flows.common import closing_parent_on_failure, confine_paths, default_task_runner, raise_first_failure
from tasks.common import code_version
from tasks.continual import (alignment_plan, consolidate_fisher, geodesic_stage, linear_stage, sequential_stage,
                             train_task_network)
from tasks.data import fingerprint_data
from tasks.summaries import continual_row
from tasks.tracking import (child_track, finish_parent_run, log_continual_runs, recording_system_metrics,
                            start_parent_run)
from tasks.plots import accuracy_matrix_plot

EXPERIMENT = "geodesic-continual"


def _for_method(params: ContinualConfig, method: str | None = None) -> ContinualConfig:
    """The settings one method's tasks depend on (their cache key): the per-task networks (``method=None``)
    depend on neither the methods nor their settings, and a method's chain not on the other methods'."""
    keep = {"scenario", "tasks", "model", "permutation_seed", "shared_init", "seed", "train"}
    keep |= {"geodesic": {"geo", "eval_every", "linear_points", "align", "fisher_weight", "fisher_samples",
                           "refit_head", "polish_epochs", "polish_strength", "polish_lr", "polish_temperature",
                           "start_mix"},
             "linear": {"linear_points", "align"},
             "l2": {"l2_strength"}, "ewc": {"ewc_strength", "fisher_samples"}}.get(method, set())
    if method == "geodesic" and not params.geodesic_reads_fisher():
        keep -= {"fisher_samples"}
    if method == "geodesic" and not params.polish_epochs:
        keep -= {"polish_strength", "polish_lr", "polish_temperature"}
    return ContinualConfig(**{k: getattr(params, k) for k in keep}, methods=[method] if method else ["geodesic"])


@flow(name="continual", task_runner=default_task_runner())
def continual_flow(params: ContinualConfig = ContinualConfig(), data_dir: str | None = None,
                   experiment: str = EXPERIMENT) -> list[dict]:
    """Learn ``params.n_tasks()`` tasks of ``params.scenario`` in sequence without forgetting (Alg. 2)."""
    data_dir = confine_paths(data_dir, ())  # first: inside the roots
    params = params.resolved()  # the traversal's settings left None: the scenario's (what is cached and logged)
    log = get_run_logger()
    version = code_version(params.scenario, params.model_name())
    scenario = get_scenario(params.scenario)
    fingerprint = "+".join(fingerprint_data(d, data_dir) for d in scenario.datasets)
    not_aligned = alignment_plan(params)  # before any work: --align activations on a network it cannot align
    if not_aligned is not None and params.align != "none" and {"geodesic", "linear"} & set(params.methods):
        log.info("w_i not aligned to w_{1:i-1} (%s)", not_aligned)
    parent = start_parent_run(experiment, params.model_dump(), fingerprint, version, str(flow_run.get_id()),
                              f"continual-{params.scenario}-{params.n_tasks()}")
    with closing_parent_on_failure(parent), recording_system_metrics(parent):
        return _learn_sequence(params, parent, data_dir, fingerprint, version, log)


def _learn_sequence(params: ContinualConfig, parent: dict, data_dir: str, fingerprint: str, version: str,
                    log) -> list[dict]:
    k = params.n_tasks()
    common = (data_dir, fingerprint, version)
    settings = params.model_dump(exclude={"methods"})
    tracks = {m: child_track(parent, f"{m}-{params.scenario}-{k}", settings, method=m, tasks=k) for m in params.methods}
    # --- the per-task networks w_1..w_k are independent: trained concurrently (w_2..w_k only where a method reads
    # them: with start_mix > 0 the geodesic trains its own from its chain, below, and the straight line reads them) --
    warm = "geodesic" in params.methods and params.start_mix > 0
    shared = k if not warm or "linear" in params.methods else 1
    nets = [train_task_network.submit(i, _for_method(params), *common,
                                      track=child_track(parent, f"train-task{i + 1}", settings, finish=True,
                                                        method="train", task=i + 1)) for i in range(shared)]
    cfg = {m: _for_method(params, m) for m in params.methods}

    # --- the chains: stage i of each method needs stage i-1 of the same method ----------------------------
    stages: dict[str, list] = {m: [] for m in params.methods}
    prev = {m: nets[0] for m in params.methods}
    pull = consolidate_fisher.submit(nets[0], 0, None, cfg["ewc"], *common) if "ewc" in params.methods else None
    pulls = [pull] if pull else []
    # with fisher_weight > 0 or polish_epochs > 0 the geodesic's chain keeps its own Fisher of the earlier tasks, as
    # EWC does (no labels)
    reads_fisher = "geodesic" in params.methods and params.geodesic_reads_fisher()
    fisher = (pull or consolidate_fisher.submit(nets[0], 0, None, cfg["geodesic"], *common)) if reads_fisher else None
    fishers = {"geodesic": [fisher] if reads_fisher else [], "ewc": pulls}
    # the geodesic's w_i: the shared ones, or with start_mix > 0 each started from its chain's end (`mixed_start`)
    geo_nets = list(nets) + [None] * (k - shared)
    for i in range(1, k):
        for m in params.methods:
            if m == "geodesic":
                if warm:
                    geo_nets[i] = train_task_network.submit(
                        i, _for_method(params), *common, start=prev[m], start_mix=params.start_mix,
                        track=child_track(parent, f"train-task{i + 1}-geodesic-start", settings, finish=True,
                                          method="train", task=i + 1))
                prev[m] = geodesic_stage.submit(geo_nets[i], prev[m], i, cfg[m], *common, track=tracks[m],
                                                fisher=fisher)
            elif m == "linear":
                prev[m] = linear_stage.submit(nets[i], prev[m], i, cfg[m], *common, track=tracks[m])
            else:
                prev[m] = sequential_stage.submit(m, prev[m], i, pull if m == "ewc" else None, cfg[m], *common,
                                                  track=tracks[m])
            stages[m].append(prev[m])
        if "ewc" in params.methods and i < k - 1:
            pull = consolidate_fisher.submit(prev["ewc"], i, pull, cfg["ewc"], *common)
            pulls.append(pull)
        if reads_fisher and i < k - 1:
            fisher = consolidate_fisher.submit(prev["geodesic"], i, fisher, cfg["geodesic"], *common)
            fishers["geodesic"].append(fisher)

    # --- the sequential baselines again at the geodesic's wall time, one stage at a time: each in one worker, as
    # the geodesic's stage ran (two side by side would each get a share of the cores for the same wall time) -----
    if params.equal_time:
        sequential = params.sequential_methods()
        for m in sequential:
            tracks[f"{m}_equal_time"] = child_track(parent, f"{m}-equal_time-{params.scenario}-{k}", settings,
                                                    method=m, budget="equal_time", tasks=k)
            stages[f"{m}_equal_time"], prev[f"{m}_equal_time"] = [], nets[0]
        pull = pulls[0] if pulls else None
        fishers["ewc_equal_time"] = pulls[:1]
        for i in range(1, k):
            budget = geo_nets[i].result()["wall_seconds"] + stages["geodesic"][i - 1].result()["wall_seconds"]
            if reads_fisher:  # the Fisher the geodesic's stage read counts in its time
                budget += fishers["geodesic"][i - 1].result()["wall_seconds"]
            for m in sequential:
                own = budget - (pull.result()["wall_seconds"] if m == "ewc" else 0.0)  # EWC's Fisher counts too
                log.info("%s at the geodesic's wall time, task %d: %.0f s", m, i + 1, own)
                name = f"{m}_equal_time"
                prev[name] = sequential_stage.submit(m, prev[name], i, pull if m == "ewc" else None, cfg[m], *common,
                                                     track=tracks[name], budget_seconds=own)
                prev[name].wait()
                stages[name].append(prev[name])
            if "ewc" in sequential and i < k - 1:
                pull = consolidate_fisher.submit(prev["ewc_equal_time"], i, pull, cfg["ewc"], *common)
                pull.wait()
                fishers["ewc_equal_time"].append(pull)

    # --- evaluate and track ---------------------------------------------------------------------------------
    raise_first_failure([*nets, *(geo_nets[1:] if warm else ()), *(p for f in fishers.values() for p in f),
                         *(s for m in stages for s in stages[m])])
    trained = [n.result() for n in nets]
    log.info("per-task networks: %s", ", ".join(f"{t['accuracies'][t['index']]:.2f}%" for t in trained))
    geo_trained = [n.result() for n in geo_nets] if warm else trained
    if warm:
        log.info("the geodesic's per-task networks (start_mix %g): %s", params.start_mix,
                 ", ".join(f"{t['accuracies'][t['index']]:.2f}%" for t in geo_trained))
    summary, entries = [], []
    for m in stages:
        results = [s.result() for s in stages[m]]
        fisher_seconds = sum(p.result()["wall_seconds"] for p in fishers.get(m, ()))
        row, matrix = continual_row(m, params, geo_trained if m == "geodesic" else trained, results, fisher_seconds)
        log.info("%s: %s (avg %.2f%%)", m, ", ".join(f"{a:.2f}" for a in matrix[-1]), row["avg_accuracy"])
        summary.append(row)
        entries.append((row, matrix, results))
    log_continual_runs(tracks, entries)
    finish_parent_run(parent, summary, {"final_accuracy.png": accuracy_matrix_plot(summary, k)},
                      f"Continual learning: {params.scenario}, {k} tasks")
    return summary


if __name__ == "__main__":
    continual_flow()
