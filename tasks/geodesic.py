"""Tasks of Algorithm 1: one geodesic stage (a coarse segment of many Geo steps), the final projection and the
closing correction."""

from __future__ import annotations

import math
import time

from prefect import task

from geodesic_core import evaluate, flat_params, param_slices
from geodesic_core.sparsify import SparsifyConfig
from geodesic_core.sparsify import (fidelity_probe, geodesic_stage, polish, prediction_agreement, project_to_level,
                                    structured_stage)

from .common import CACHED, checkpoint_path, finished, open_ref, percent_sparse, save_result, spec, split
from .live import Live


PROBE_KEYS = ("test_accuracy", "test_loss", "sparsity")


def _path_recorder(model, slices, test, every: int, rows: list, live: Live):
    """Callback: evaluate the test set every ``every`` steps into ``rows`` and the live metrics; returns
    (callback, seconds spent evaluating, the last row not yet sent).

    A row goes to the live metrics when the next one is recorded: the stage's last step has two rows (before
    and after the closing projection) and its metric history keeps the one after, whatever the flush timing."""
    spent, held = [0.0], []

    def record(info):
        if info.step % every and info.distance > 0:
            return
        t = time.perf_counter()
        acc, loss = evaluate(model, test)
        row = {"step": info.step, "distance": info.distance, "test_accuracy": acc, "test_loss": loss,
               "sparsity": percent_sparse(info.weights, slices), "path_length": info.path_length}
        rows.append(row)
        for r in held:
            live.log(r["step"], {k: r[k] for k in PROBE_KEYS})
        held[:] = [row]
        live.advance(live.completed, probe=f"probe {acc:.2f}%")
        spent[0] += time.perf_counter() - t

    return record, spent, held


@task(**CACHED)
def geodesic_segment(start: dict, anchor: dict, level: float, stage: int, stage_level: float, cfg: SparsifyConfig,
                     data_dir: str | None, data_fingerprint: str, code_version: str, max_drop: float | None = None,
                     track: dict | None = None) -> dict:
    """One stage of Algorithm 1 from checkpoint ``start`` toward H_{stage_level} (or the filter target),
    ending on it. The outputs of ``anchor`` (the dense network) anchor the path. Live metrics go to the child
    run ``track``.

    Returns a reference to the stage's end checkpoint with its steps, stop reason, wall time (without the
    evaluation along the path), the evaluated path points and its fidelity (percent agreement with the dense
    network's predictions on a fixed probe of training inputs, `prediction_agreement`: what an adaptive
    stage schedule reads; no labels) and whether it is ``accepted``: its fidelity fell by at most ``max_drop``
    points from the start's (None: always). A stage that may be rejected holds its live metrics until it ends and drops them
    if rejected (the next attempt takes the same steps again).
    """
    out = checkpoint_path("geodesic", start["sha256"], level, stage, stage_level, cfg.model_dump(), data_fingerprint,
                          code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(start)
    start_step = int(start.get("end_step", 0))  # steps taken by the earlier stages of this path
    offset = float(start.get("end_path_length", 0.0))  # and their length
    dense, _ = open_ref(anchor)
    dense.requires_grad_(False)
    slices = param_slices(model)
    train_x = split(cfg.dataset, True, data_dir).x
    test = split(cfg.dataset, False, data_dir)
    rows: list[dict] = []
    what = f"{level:g} filters" if cfg.structured else f"{level:g}%"
    of = f"/{cfg.stages}" if cfg.structured or cfg.schedule == "cubic" else f" (adaptive, {stage_level:.4g}%)"
    with Live(f"geodesic {what}, stage {stage + 1}{of}", cfg.geo.max_steps, track, upper_bound=True,
              hold=max_drop is not None) as live:
        record, spent, held = _path_recorder(model, slices, test, cfg.eval_every, rows, live)
        callbacks = [lambda info: live.geo_step(info, offset), record]
        t0 = time.perf_counter()
        geo_cfg = cfg.geo.model_copy(update={"seed": cfg.seed})
        if cfg.structured:
            res = structured_stage(model, cfg.layer, int(stage_level), train_x, geo_cfg,
                                   refresh_every=cfg.refresh_every, anchor=dense, callbacks=callbacks,
                                   start_step=start_step, stage=stage)
        else:
            res = geodesic_stage(model, slices, stage_level, train_x, geo_cfg, refresh_every=cfg.refresh_every,
                                 scope=cfg.scope, anchor=dense, callbacks=callbacks, start_step=start_step, stage=stage)
        fidelity = prediction_agreement(model, dense, fidelity_probe(train_x, seed=cfg.seed))  # the method's own
        wall = time.perf_counter() - t0 - spent[0]  # test (no labels): it counts in the wall time
        acc, loss = evaluate(model, test)
        end_step = start_step + res.steps
        rows.append({"step": end_step, "distance": 0.0, "test_accuracy": acc, "test_loss": loss,
                     "sparsity": percent_sparse(flat_params(model), slices), "path_length": res.path_length})
        for r in held + rows[-1:]:
            if r["step"] != end_step or r is rows[-1]:
                live.log(r["step"], {k: r[k] for k in PROBE_KEYS})
        drop = float(start.get("fidelity", 100.0)) - fidelity
        accepted = max_drop is None or drop <= max_drop
        if not accepted:
            live.discard(f"agreement with the dense network fell {drop:.2f} points (at most {max_drop:g}), "
                         f"retried shorter")
    return save_result(out, model, meta, dict(
        stage=stage, stage_level=stage_level, steps=res.steps, end_step=end_step, stop_reason=res.stop_reason,
        projection_distance=res.distance_before_projection, path_length=res.path_length,
        end_path_length=offset + res.path_length, wall_seconds=wall, test_accuracy=acc, test_loss=loss, fidelity=fidelity,
        accepted=accepted, rows=rows))


@task(**CACHED)
def final_projection(end: dict, level: float, cfg: SparsifyConfig, data_dir: str | None, data_fingerprint: str,
                     code_version: str) -> dict:
    """Hard projection onto H_p (or the filter target) of the path's end; the reported network has exactly
    the requested zeros. Returns its reference with test accuracy, loss and measured sparsity (percent)."""
    out = checkpoint_path("final", end["sha256"], level, cfg.scope, cfg.structured, code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(end)
    project_to_level(model, level, structured=cfg.structured, layer=cfg.layer, scope=cfg.scope)
    acc, loss = evaluate(model, split(cfg.dataset, False, data_dir))
    return save_result(out, model, meta, dict(test_accuracy=acc, test_loss=loss,
                                              sparsity=percent_sparse(flat_params(model), param_slices(model))))


@task(**CACHED)
def closing_correction(final: dict, anchor: dict, level: float, cfg: SparsifyConfig, data_dir: str | None,
                       data_fingerprint: str, code_version: str) -> dict:
    """The closing correction of the projected end ``final`` (`geodesic_core.sparsify.polish`):
    ``cfg.polish_epochs`` epochs of masked distillation toward the dense network ``anchor``'s outputs over the
    training inputs at ``cfg.polish_lr`` and ``cfg.polish_temperature``, no labels. Returns its reference with test
    accuracy, loss, sparsity (the projection's, kept exactly), the projection's accuracy before it and the wall
    seconds it took (counted as the geodesic's)."""
    out = checkpoint_path("polished", final["sha256"], level, cfg.polish_epochs, cfg.polish_lr, cfg.polish_temperature,
                          cfg.geo.model_dump(), cfg.seed, cfg.structured, cfg.layer, code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(final)
    dense, _ = open_ref(anchor)
    dense.requires_grad_(False)
    train_x = split(cfg.dataset, True, data_dir).x
    steps = cfg.polish_epochs * math.ceil(train_x.shape[0] / cfg.geo.distill_batch)
    what = f"{level:g} filters" if cfg.structured else f"{level:g}%"
    with Live(f"geodesic {what}, closing correction", steps) as live:
        def progress(info):
            if info.step % 20 == 0 or info.last:
                live.advance(info.step, loss=f"distillation loss {float(info.loss):.4f}")

        wall = polish(model, dense, train_x, level, cfg.geo.model_copy(update={"seed": cfg.seed}), cfg.polish_epochs,
                      lr=cfg.polish_lr, temperature=cfg.polish_temperature, structured=cfg.structured,
                      layer=cfg.layer, augment=spec(cfg.dataset, data_dir).augment, step_callbacks=[progress])
    acc, loss = evaluate(model, split(cfg.dataset, False, data_dir))
    return save_result(out, model, meta, dict(test_accuracy=acc, test_loss=loss, sparsity=final["sparsity"],
                                              projected_test_accuracy=final["test_accuracy"], polish_seconds=wall))
