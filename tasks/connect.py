"""Tasks of Algorithm 3: one segment of the geodesic between two networks, the straight line between them, and
the peer baseline, a trained quadratic Bezier curve between the same endpoints.

All evaluate their points on the test set (batch-norm statistics re-estimated per point), measure the length
under g on one fixed probe batch of the task's inputs (the same batch for every path) and the Euclidean
length, and place every point in the 2-D chord view (along w_2 - w_1, distance from the line).
"""

from __future__ import annotations

import copy
import time

import torch
from prefect import task

from geodesic_core import build_model, cumulative_lengths, flat_params, linear_path, set_flat_params
from geodesic_core.align import ALIGN_INPUTS, align_to
from geodesic_core.align import alignment_plan as core_alignment_plan
from geodesic_core.metric import tempered
from geodesic_core.connect import ConnectConfig
from geodesic_core.connect import (BezierCurve, InterpolatedOutputs, PolyChain, bn_batch, chord_coordinates,
                                   connect_segment, distance_ratio, evaluate_point, relax_path, train_bezier)
from geodesic_core.checkpoint import load_tensors, save_tensors
from geodesic_core.data import get_spec
from geodesic_core.train import epochs_run

from .common import CACHED, checkpoint_path, finished, finished_with_content, open_ref, ref, save_result, split
from .live import Live
PROBE = 1024  # inputs of the fixed probe batch the path lengths are measured on


def alignment_plan(cfg: ConnectConfig, data_dir: str | None) -> str | None:
    """Whether the run aligns w_2 to w_1 (`geodesic_core.align.alignment_plan` on ``cfg.model``): None when it does,
    else the reason it does not. With ``align`` activations an architecture it cannot align is an `InputError` here,
    before any work."""
    spec = get_spec(cfg.dataset, data_dir)
    model = build_model(cfg.model, spec.num_classes, spec.in_channels, spec.image_size, seed=0, **cfg.arch())
    return core_alignment_plan(model, cfg.align, torch.randn(4, *spec.input_shape))


@task(**CACHED)
def align_endpoint(a: dict, b: dict, cfg: ConnectConfig, data_dir: str | None, data_fingerprint: str,
                   code_version: str) -> dict:
    """Endpoint w_2 with its hidden units permuted to match w_1's (`geodesic_core.align.align_to`, activation
    matching on ``ALIGN_INPUTS`` training inputs drawn from ``cfg.seed``): the same function as w_2, saved as its
    own checkpoint; the reference carries the alignment's summary (units moved, mean unit correlation before and
    after)."""
    out = checkpoint_path("aligned", a["sha256"], b["sha256"], ALIGN_INPUTS, cfg.seed, data_fingerprint, code_version)
    if (done := finished(out)) is not None:
        return done
    net_a, net_b, meta = open_ref(a)[0], *open_ref(b)
    train_x = split(cfg.dataset, True, data_dir).x
    x = train_x[torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(cfg.seed))[:ALIGN_INPUTS]]
    info = align_to(net_a, net_b, x.to(flat_params(net_a).device))
    return save_result(out, net_b, meta, {**info, "aligned_from": b["path"]}, role="endpoint b aligned to a")


def _lengths(model, points, train_x: torch.Tensor, cfg: ConnectConfig) -> list[float]:
    """S(γ) through ``points`` under g (the traversal's output space and temperature) on the fixed probe batch
    of ``PROBE`` training inputs drawn from ``cfg.seed``: the same batch for every path; a batch-norm network's
    statistics re-estimated at every segment's midpoint (on the inputs every point is evaluated with)."""
    probe = train_x[torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(cfg.seed))[:PROBE]]
    return cumulative_lengths(tempered(model, cfg.geo.temperature), points, probe, cfg.geo.output_space,
                              bn_batch(model, train_x))


def _curve_result(curve, model, w_a, w_b, cfg: ConnectConfig, data_dir: str | None) -> dict:
    """A trained curve evaluated like the straight line: ``cfg.linear_points`` points at equally spaced t (test
    accuracy and loss, chord view), its length under g and its Euclidean length."""
    train_x = split(cfg.dataset, True, data_dir).x
    test = split(cfg.dataset, False, data_dir)
    points = [w.cpu() for w in curve.points(cfg.linear_points)]
    bn = bn_batch(model, train_x)
    rows = [_row(model, w, w_a, w_b, test, bn, t=float(t)) for w, t in zip(points, torch.linspace(0, 1, len(points)))]
    lengths = _lengths(model, points, train_x, cfg)
    for r, length in zip(rows, lengths):
        r["path_length"] = length
    return {"rows": rows, "path_length": lengths[-1], "path_length_euclidean": curve.euclidean_length()}


def _row(model, w, w_a, w_b, test, bn, **extra) -> dict:
    acc, loss = evaluate_point(model, w, test, bn)
    x, y = chord_coordinates(w, w_a, w_b)
    return {**extra, "test_accuracy": acc, "test_loss": loss, "chord_x": x, "chord_y": y,
            "distance_ratio": distance_ratio(w, w_a, w_b)}


@task(**CACHED)
def connect_segment_task(start: dict, a: dict, b: dict, segment: int, loose: bool, cfg: ConnectConfig,
                         data_dir: str | None, data_fingerprint: str, code_version: str,
                         track: dict | None = None) -> dict:
    """Segment ``segment`` of Geo(w_1, g, w_2) from checkpoint ``start``: up to ``cfg.geo.max_steps`` steps
    (with ``loose``: the completion settings, anchor off and a ``cfg.complete_eps_factor`` times larger trust
    region). Returns the end checkpoint with its stop reason, the evaluated points and the segment's lengths.
    Live metrics go to the child run ``track`` at the geodesic step counted over all segments."""
    out = checkpoint_path("connect", start["sha256"], a["sha256"], b["sha256"], segment, loose, cfg.geo.model_dump(),
                          cfg.complete_eps_factor, cfg.seed, data_fingerprint, code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(start)
    net_a, net_b = open_ref(a)[0], open_ref(b)[0]
    w_a, w_b = flat_params(net_a).cpu(), flat_params(net_b).cpu()
    anchor = InterpolatedOutputs(net_a, net_b) if cfg.geo.anchor > 0 and not loose else None
    geo_cfg = cfg.geo.model_copy(update={"seed": cfg.seed + segment})
    if loose:
        geo_cfg = geo_cfg.completion(cfg.complete_eps_factor)
    train_x = split(cfg.dataset, True, data_dir).x
    test = split(cfg.dataset, False, data_dir)
    probe_model = copy.deepcopy(model)  # evaluates points without disturbing the traversal
    bn = bn_batch(model, train_x)
    w0 = flat_params(model).cpu()
    first = int(start.get("end_step", 0))
    offset = float(start.get("end_path_length", 0.0))
    points, rows, spent, euclid = [w0], [], [0.0], {"length": 0.0, "last": w0}

    def probe(row: dict) -> dict:
        live.log(row["step"], {k: row[k] for k in ("test_accuracy", "test_loss", "distance_ratio")})
        live.advance(live.completed, probe=f"probe {row['test_accuracy']:.2f}%")
        return row

    def record(info):
        w = info.weights.detach().cpu()
        euclid["length"] += float((w - euclid["last"]).norm())
        euclid["last"] = w.clone()
        if info.step % cfg.eval_every and info.distance > cfg.geo.eta:
            return
        t = time.perf_counter()
        points.append(w.clone())
        rows.append(probe(_row(probe_model, w, w_a, w_b, test, bn, step=info.step, segment=segment, loose=loose)))
        spent[0] += time.perf_counter() - t

    gen = torch.Generator().manual_seed(cfg.seed * 7919 + segment)
    title = f"geodesic {cfg.model} segment {segment + 1}" + (" (completion)" if loose else "")
    with Live(title, cfg.geo.max_steps, track, upper_bound=True) as live:
        t0 = time.perf_counter()
        res = connect_segment(model, w_b, train_x, geo_cfg, anchor=anchor, total_distance=float((w_b - w_a).norm()),
                              callbacks=[lambda info: live.geo_step(info, offset), record], generator=gen,
                              start_step=first)
        wall = time.perf_counter() - t0 - spent[0]
        w_end = flat_params(model).cpu()
        if not rows or rows[-1]["step"] != first + res.steps:
            points.append(w_end.clone())
            rows.append(probe(_row(probe_model, w_end, w_a, w_b, test, bn, step=first + res.steps, segment=segment,
                                   loose=loose)))
    lengths = _lengths(probe_model, points, train_x, cfg)
    for r, length in zip(rows, lengths[1:]):
        r["segment_path_length"] = length
    end = rows[-1]
    # the evaluated points, for the path's closing correction (`relax_path_task`): written before the segment's
    # checkpoint, whose existence marks the segment finished
    points_out = out.with_name("points-" + out.name.removeprefix("connect-").removesuffix(".pt") + ".tensors.pt")
    points_ref = ref(points_out, save_tensors(points_out, {"points": torch.stack(points)}, {"segment": segment}))
    return save_result(out, model, meta, dict(
        segment=segment, loose=loose, steps=res.steps, end_step=first + res.steps, stop_reason=res.stop_reason,
        end_path_length=offset + res.path_length, points=points_ref,
        distance=res.distance, wall_seconds=wall, rows=rows, path_length=lengths[-1],
        path_length_euclidean=euclid["length"]), test_accuracy=end["test_accuracy"], test_loss=end["test_loss"])


@task(**CACHED)
def evaluate_endpoint(network: dict, a: dict, b: dict, cfg: ConnectConfig, data_dir: str | None,
                      data_fingerprint: str, code_version: str) -> dict:
    """An endpoint's test accuracy and loss (batch-norm statistics re-estimated like every path point)."""
    model, _ = open_ref(network)
    w_a, w_b = flat_params(open_ref(a)[0]).cpu(), flat_params(open_ref(b)[0]).cpu()
    train_x = split(cfg.dataset, True, data_dir).x
    return _row(model, flat_params(model).cpu(), w_a, w_b, split(cfg.dataset, False, data_dir), bn_batch(model, train_x),
                step=0, segment=0, loose=False)


@task(**CACHED)
def linear_path_task(a: dict, b: dict, cfg: ConnectConfig, data_dir: str | None, data_fingerprint: str,
                     code_version: str, track: dict | None = None) -> dict:
    """The straight line (1 - α) w_1 + α w_2 at ``cfg.linear_points`` points: accuracy, loss, lengths."""
    model, _ = open_ref(a)
    w_a, w_b = flat_params(model).cpu(), flat_params(open_ref(b)[0]).cpu()
    train_x = split(cfg.dataset, True, data_dir).x
    test = split(cfg.dataset, False, data_dir)
    bn = bn_batch(model, train_x)
    with Live(f"straight line {cfg.model}", cfg.linear_points, track) as live:
        t0 = time.perf_counter()
        points = linear_path(w_a, w_b, cfg.linear_points)
        rows = []
        for w, t in zip(points, torch.linspace(0, 1, len(points))):
            rows.append(_row(model, w, w_a, w_b, test, bn, alpha=float(t)))
            live.advance(probe=f"acc {rows[-1]['test_accuracy']:.2f}%")
        wall = time.perf_counter() - t0
    lengths = _lengths(model, points, train_x, cfg)
    for r, length in zip(rows, lengths):
        r["path_length"] = length
    return {"rows": rows, "path_length": lengths[-1], "path_length_euclidean": float((w_b - w_a).norm()),
            "wall_seconds": wall}


@task(**CACHED)
def bezier_curve_task(a: dict, b: dict, cfg: ConnectConfig, data_dir: str | None, data_fingerprint: str,
                      code_version: str, track: dict | None = None, budget_seconds: float | None = None,
                      distill: bool = False) -> dict:
    """Peer baseline (Garipov et al. 2018): train the bend θ of the quadratic Bezier curve between w_1 and w_2
    for ``cfg.bezier_train.epochs`` epochs (or, the equal-time curve, for ``budget_seconds`` of wall time, its
    learning-rate schedule spanning that time: `geodesic_core.train.train`'s ``wall_seconds``) on the task's training
    data, then evaluate the curve at ``cfg.linear_points`` equally spaced t like the straight line. ``distill``:
    the label-free curve, fit to the endpoints' interpolated outputs at ``cfg.bezier_distill_lr`` and
    ``cfg.bezier_distill_temperature`` (`train_bezier` with ``endpoints``). The checkpoint holds θ (a network of
    the endpoints' architecture) and is keyed by the training alone: a rerun with other evaluation settings
    re-evaluates the trained curve. ``wall_seconds`` is the training cost, the evaluation excluded; ``epochs`` the
    epochs it ran."""
    train_cfg = cfg.bezier_train.model_copy(update={"lr": cfg.bezier_distill_lr} if distill else {})
    kind = "bezier_distill" if distill else "bezier"
    temperature = cfg.bezier_distill_temperature if distill else 0.0
    out = checkpoint_path(kind, a["sha256"], b["sha256"], train_cfg.model_dump(), budget_seconds, temperature,
                          data_fingerprint, code_version)
    (model, meta), net_b = open_ref(a), open_ref(b)[0]
    w_a, w_b = flat_params(model).cpu(), flat_params(net_b).cpu()
    train_data = split(cfg.dataset, True, data_dir)
    probe_model = copy.deepcopy(model)
    if (done := finished_with_content(out)) is None:
        title = (f"train {'label-free ' if distill else ''}Bezier curve {cfg.model}"
                 + ("" if budget_seconds is None else f" ({budget_seconds:.0f} s)"))
        endpoints = (model, net_b) if distill else None  # copied before training
        with Live(title, track=track) as live:
            t0 = time.perf_counter()
            curve = train_bezier(model, w_a, w_b, train_data, train_cfg, augment=get_spec(cfg.dataset).augment,
                                 step_callbacks=[live.train_step], wall_seconds=budget_seconds,
                                 endpoints=endpoints, temperature=temperature)
            wall = time.perf_counter() - t0
        set_flat_params(probe_model, curve.bend.detach().to(flat_params(probe_model)))
        epochs = epochs_run(curve.steps_trained, len(train_data.x), train_cfg.batch_size)
        trained = save_result(out, probe_model, meta, dict(train_seconds=wall, epochs=epochs), role=f"{kind} bend")
    else:  # trained by an earlier run (or attempt): only the evaluation is redone, from the bend read once
        trained, state = done
        probe_model.load_state_dict(state)
        bend = flat_params(probe_model)
        curve = BezierCurve(model, w_a.to(bend), w_b.to(bend))
        with torch.no_grad():
            curve.bend.copy_(bend)
    return {**_curve_result(curve, probe_model, w_a, w_b, cfg, data_dir), "wall_seconds": trained["train_seconds"],
            "epochs": trained["epochs"], "path": trained["path"], "sha256": trained["sha256"]}


@task(**CACHED)
def relax_path_task(segments: list[dict], a: dict, b: dict, cfg: ConnectConfig, data_dir: str | None,
                    data_fingerprint: str, code_version: str, track: dict | None = None) -> dict:
    """The geodesic's closing correction: the polygonal chain through ``cfg.relax_nodes`` of the points the
    ``segments`` evaluated (each at its progress t), its nodes fit without labels toward f_t for
    ``cfg.relax_epochs`` epochs (`relax_path`, ``cfg.bezier_train``'s settings at ``cfg.relax_lr`` and
    ``cfg.relax_temperature``), then evaluated like the curves. The nodes and knots are saved as a tensor file
    keyed by the segments and the fit; ``wall_seconds`` is the path's whole cost, the traversal's and the fit's
    (``fit_seconds``)."""
    fit_cfg = cfg.bezier_train.model_copy(update={"epochs": cfg.relax_epochs, "lr": cfg.relax_lr})
    out = checkpoint_path("relaxed", [seg["sha256"] for seg in segments], a["sha256"], b["sha256"],
                          fit_cfg.model_dump(), cfg.relax_nodes, cfg.relax_temperature, data_fingerprint,
                          code_version)
    out = out.with_suffix(".tensors.pt")
    (model, _), net_b = open_ref(a), open_ref(b)[0]
    w_a, w_b = flat_params(model).cpu(), flat_params(net_b).cpu()
    probe_model = copy.deepcopy(model)
    if (done := finished_with_content(out)) is None:
        points = []
        for seg in segments:
            tensors, meta = load_tensors(seg["points"]["path"])
            if meta["sha256"] != seg["points"]["sha256"]:
                raise RuntimeError(f"the points file {seg['points']['path']} changed since it was written; "
                                   f"rerun the flow")
            points += list(tensors["points"])
        with Live(f"relax the geodesic {cfg.model}", track=track) as live:
            t0 = time.perf_counter()
            chain = relax_path(copy.deepcopy(model), points, w_a, w_b, split(cfg.dataset, True, data_dir), fit_cfg,
                               nodes=cfg.relax_nodes, augment=get_spec(cfg.dataset).augment,
                               step_callbacks=[live.train_step], endpoints=(model, net_b),
                               temperature=cfg.relax_temperature)
            fit = time.perf_counter() - t0
        knots = chain.knots[1:-1]
        nodes = chain.nodes.detach().cpu()
        fitted = ref(out, save_tensors(out, {"nodes": nodes}, {"result": {"knots": knots, "fit_seconds": fit}}),
                     knots=knots, fit_seconds=fit)
    else:  # fit by an earlier run (or attempt): only the evaluation is redone, from the nodes read once
        fitted, tensors = done
        nodes, knots = tensors["nodes"], fitted["knots"]
    like = w_a.to(next(probe_model.parameters()))  # the network's device and dtype
    chain = PolyChain(probe_model, like, w_b.to(like), nodes.to(like), knots).eval()
    traversal = sum(seg["wall_seconds"] for seg in segments)
    return {**_curve_result(chain, probe_model, w_a, w_b, cfg, data_dir),
            "wall_seconds": traversal + fitted["fit_seconds"], "fit_seconds": fitted["fit_seconds"],
            "epochs": cfg.relax_epochs, "knots": knots, "path": str(out), "sha256": fitted["sha256"]}
