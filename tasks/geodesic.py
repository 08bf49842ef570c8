"""Tasks of Algorithm 1: one geodesic stage (a coarse segment of many Geo steps) and the final projection."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from geodesic_core import evaluate, flat_params, param_slices, sparsity
from geodesic_core.config import SparsifyConfig
from geodesic_core.sparsify import geodesic_stage, project_to_level, structured_stage

from .common import PERSIST, checkpoint_path, finished, open_ref, save_result, split


def _path_recorder(model, slices, test, every: int, rows: list):
    """Callback: evaluate the test set every ``every`` steps; returns (callback, seconds spent evaluating)."""
    spent = [0.0]

    def record(info):
        if info.step % every and info.distance > 0:
            return
        t = time.perf_counter()
        acc, loss = evaluate(model, test)
        rows.append({"step": info.step, "distance": info.distance, "test_accuracy": acc, "test_loss": loss,
                     "sparsity": sparsity(info.weights, slices), "path_length": info.path_length})
        spent[0] += time.perf_counter() - t

    return record, spent


@task(cache_policy=INPUTS + TASK_SOURCE - "data_dir", **PERSIST)
def geodesic_segment(start: dict, anchor: dict, level: float, stage: int, stage_level: float, cfg: SparsifyConfig,
                     data_dir: str | None, data_fingerprint: str, code_version: str) -> dict:
    """One stage of Algorithm 1 from checkpoint ``start`` toward H_{stage_level} (or the filter target),
    ending on it. The outputs of ``anchor`` (the dense network) anchor the path.

    Returns a reference to the stage's end checkpoint with its steps, stop reason, wall time (without the
    evaluation along the path) and the evaluated path points.
    """
    out = checkpoint_path("geodesic", start["sha256"], level, stage, stage_level, cfg.model_dump(), data_fingerprint,
                          code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(start)
    start_step = int(start.get("end_step", 0))  # steps taken by the earlier stages of this path
    dense, _ = open_ref(anchor)
    dense.requires_grad_(False)
    slices = param_slices(model)
    train_x = split(cfg.dataset, True, data_dir).x
    test = split(cfg.dataset, False, data_dir)
    rows: list[dict] = []
    record, spent = _path_recorder(model, slices, test, cfg.eval_every, rows)
    t0 = time.perf_counter()
    geo_cfg = cfg.geo.model_copy(update={"seed": cfg.seed})
    if cfg.structured:
        res = structured_stage(model, cfg.layer, int(stage_level), train_x, geo_cfg, refresh_every=cfg.refresh_every,
                               anchor=dense, callbacks=[record], start_step=start_step, stage=stage)
    else:
        res = geodesic_stage(model, slices, stage_level, train_x, geo_cfg, refresh_every=cfg.refresh_every,
                             scope=cfg.scope, anchor=dense, callbacks=[record], start_step=start_step, stage=stage)
    wall = time.perf_counter() - t0 - spent[0]
    acc, loss = evaluate(model, test)
    end_step = start_step + res.steps
    rows.append({"step": end_step, "distance": 0.0, "test_accuracy": acc, "test_loss": loss,
                 "sparsity": sparsity(flat_params(model), slices), "path_length": res.path_length})
    return save_result(out, model, meta, dict(
        stage=stage, stage_level=stage_level, steps=res.steps, end_step=end_step, stop_reason=res.stop_reason,
        projection_distance=res.distance_before_projection, path_length=res.path_length, wall_seconds=wall,
        test_accuracy=acc, test_loss=loss, rows=rows))


@task(cache_policy=INPUTS + TASK_SOURCE - "data_dir", **PERSIST)
def final_projection(end: dict, level: float, cfg: SparsifyConfig, data_dir: str | None, data_fingerprint: str,
                     code_version: str) -> dict:
    """Hard projection onto H_p (or the filter target) of the path's end; the reported network has exactly
    the requested zeros. Returns its reference with test accuracy, loss and measured sparsity."""
    out = checkpoint_path("final", end["sha256"], level, cfg.scope, cfg.structured, code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(end)
    project_to_level(model, level, structured=cfg.structured, layer=cfg.layer, scope=cfg.scope)
    acc, loss = evaluate(model, split(cfg.dataset, False, data_dir))
    return save_result(out, model, meta, dict(test_accuracy=acc, test_loss=loss,
                                              sparsity=sparsity(flat_params(model), param_slices(model))))
