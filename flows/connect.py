"""Mode connectivity (paper Algorithm 3) as a Prefect flow tracked in MLflow.

Recipe: fingerprint the data -> train the two endpoint networks concurrently (or take two checkpoints) ->
evaluate the straight line between them -> traverse Geo(w_1, g, w_2) in cached segments until it reaches
w_2 (continuing a stalled traversal with the looser completion step if ``complete``), and train the peer
baselines, a quadratic Bezier curve on the labels (if ``bezier``) and its label-free counterpart (if
``bezier_distill``) -> (if ``relax_epochs``) the geodesic's closing correction, the chain through its points fit
toward f_t -> (if ``bezier_equal_time``) each curve again for the geodesic's wall time -> one MLflow child run per
path (geodesic, geodesic_relaxed, linear, bezier, bezier_distill and their equal-time runs) and a summary on the
parent run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from geodesic_core.connect import ConnectConfig
from geodesic_core.data import get_spec
from flows.common import closing_parent_on_failure, confine_paths, default_task_runner
from tasks.common import code_version
from tasks.connect import (align_endpoint, alignment_plan, bezier_curve_task, connect_segment_task,
                           evaluate_endpoint, linear_path_task, relax_path_task)
from tasks.data import fingerprint_data
from tasks.plots import chord_view, connect_accuracy_plot
from tasks.summaries import connect_rows
from tasks.tracking import (child_track, finish_parent_run, log_connect_runs, recording_system_metrics,
                            start_parent_run)
from tasks.training import check_endpoints, given_checkpoint, train_network

EXPERIMENT = "geodesic-connect"


@flow(name="connect", task_runner=default_task_runner())
def connect_flow(params: ConnectConfig = ConnectConfig(), data_dir: str | None = None,
                 experiment: str = EXPERIMENT) -> list[dict]:
    """Connect two networks of ``params.model`` on ``params.dataset`` by a geodesic (Alg. 3)."""
    data_dir = confine_paths(data_dir, [params.checkpoint_a, params.checkpoint_b])  # first: inside the roots
    log = get_run_logger()
    version = code_version(params.model)
    fingerprint = fingerprint_data(params.dataset, data_dir)
    not_aligned = alignment_plan(params, data_dir)  # before any work: --align activations on a ResNet is an error
    parent = start_parent_run(experiment, params.model_dump(), fingerprint, version, str(flow_run.get_id()),
                              f"connect-{params.model}-{params.dataset}")
    with closing_parent_on_failure(parent), recording_system_metrics(parent):
        return _connect(params, parent, data_dir, fingerprint, version, log, not_aligned)


def _connect(params: ConnectConfig, parent: dict, data_dir: str, fingerprint: str, version: str, log,
             not_aligned: str | None) -> list[dict]:
    common = (data_dir, fingerprint, version)
    settings = params.model_dump()
    tracks = {m: child_track(parent, f"{m}-{params.model}-{params.dataset}", settings, method=m)
              for m in ("geodesic", *(["geodesic_relaxed"] if params.relax_epochs else []), "linear",
                        *params.curves())}
    # --- the endpoints: trained concurrently, or given (every compute task is submitted: it runs in a
    # task-runner thread, never in the flow's own) -------------------------------------------------------------
    if params.checkpoint_a:
        n = get_spec(params.dataset, data_dir).num_classes
        a, b = (given_checkpoint.submit(p, params.model, n, params.arch()).result() for p in (params.checkpoint_a, params.checkpoint_b))
        check_endpoints.submit(a, b).result()
    else:
        futures = [train_network.submit(params.model, params.dataset, params.train.model_copy(update={"seed": s}),
                                        data_dir, fingerprint, version, arch=params.arch(),
                                        track=child_track(parent, f"train-{name}", settings, finish=True,
                                                          method="train", endpoint=name))
                   for name, s in (("a", params.seed), ("b", params.seed_b))]
        a, b = (f.result() for f in futures)
    if not_aligned is None:  # w_2's hidden units in w_1's order (the same function): every path ends there
        b = align_endpoint.submit(a, b, params, *common).result()
        log.info("aligned w_2 to w_1: %d of %d hidden units moved, mean unit correlation %.3f -> %.3f", b["moved"],
                 b["units"], b["mean_correlation_before"], b["mean_correlation_after"])
    else:
        log.info("w_2 not aligned to w_1 (%s)", not_aligned)
    ends = [evaluate_endpoint.submit(w, a, b, params, *common) for w in (a, b)]
    line = linear_path_task.submit(a, b, params, *common, track=tracks["linear"])
    curves = {m: bezier_curve_task.submit(a, b, params, *common, track=tracks[m], distill=m == "bezier_distill")
              for m in params.curves()}  # the peer baselines: on the labels, label-free

    # --- the geodesic, segment after segment, until it reaches w_2 ----------------------------------------
    segments, start, loose = [], a, False
    for s in range(params.max_segments):
        seg = connect_segment_task.submit(start, a, b, s, loose, params, *common, track=tracks["geodesic"]).result()
        segments.append(seg)
        log.info("segment %d%s: %d steps, %s, %.1f%% of the way left", s, " (completion)" if loose else "",
                 seg["steps"], seg["stop_reason"], 100 * seg["rows"][-1]["distance_ratio"])
        if seg["stop_reason"] == "reached":
            break
        if seg["stop_reason"] == "oscillation":
            if not params.complete:
                log.warning("the geodesic stalled %.1f%% of the way short of w_2; rerun with --complete to continue "
                            "with the looser completion step", 100 * seg["rows"][-1]["distance_ratio"])
                break
            loose = True
        start = seg
    else:
        log.warning("the geodesic did not reach w_2 in %d segments; raise --max-segments", params.max_segments)

    # --- the closing correction: the chain through the geodesic's points, fit toward f_t ------------------------
    budget = sum(seg["wall_seconds"] for seg in segments)
    relaxed = {}
    if params.relax_epochs:
        relaxed["geodesic_relaxed"] = relax_path_task.submit(segments, a, b, params, *common,
                                                             track=tracks["geodesic_relaxed"]).result()
        budget = relaxed["geodesic_relaxed"]["wall_seconds"]  # the traversal's and the fit's
        log.info("relaxed the geodesic: %d epochs of the chain's fit in %.0f s",
                 params.relax_epochs, relaxed["geodesic_relaxed"]["fit_seconds"])

    # --- the peers at the geodesic's wall time: each curve trained for that time, one curve after the other ----
    peers = {**relaxed, "linear": line.result(), **{m: c.result() for m, c in curves.items()}}
    if params.bezier_equal_time:
        for m in params.curves():
            tracks[f"{m}_equal_time"] = child_track(parent, f"{m}-equal_time-{params.model}-{params.dataset}",
                                                    settings, method=m, budget="equal_time")
            log.info("%s curve at the geodesic's wall time (%.0f s)", m, budget)
            peers[f"{m}_equal_time"] = bezier_curve_task.submit(
                a, b, params, *common, track=tracks[f"{m}_equal_time"], budget_seconds=budget,
                distill=m == "bezier_distill").result()

    # --- evaluate and track ---------------------------------------------------------------------------------
    endpoints = [e.result() for e in ends]
    summary, tables = connect_rows(endpoints, segments, peers, b if not_aligned is None else None)
    log_connect_runs(tracks, params, summary, tables, segments[-1]["path"])
    finish_parent_run(parent, summary, {"accuracy_along_paths.png": connect_accuracy_plot(tables, params),
                                        "paths_2d.png": chord_view(tables)},
                      f"Mode connectivity: {params.model} on {params.dataset}")
    return summary


if __name__ == "__main__":
    connect_flow()
