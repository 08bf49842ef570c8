"""Tasks of Algorithm 2 and its baselines: per-task networks, one geodesic stage, one linear-path stage, one
sequential-SGD stage (plain, L2 pull, EWC), EWC's Fisher consolidation, and evaluation on every task.

Each returns a checkpoint reference with small results (accuracies on every task, wall time, path tables);
the flow chains them. Stage i only reads task i's training data; test sets are read for evaluation only.
"""

from __future__ import annotations

import copy
import functools
import time

import torch
from prefect import task

from geodesic_core import (cumulative_lengths, flat_params, linear_path, load_tensors, save_checkpoint, save_tensors,
                           set_flat_params, train)
from geodesic_core.continual import ContinualConfig
from geodesic_core.continual import (QuadraticPull, build_scenario_model, completed_heads, continual_geodesic,
                                     distill_head, fisher_diagonal, get_scenario, linear_scan, load_task, mixed_start,
                                     pca_2d, polish_stage, task_accuracies, task_view)
from geodesic_core.align import ALIGN_INPUTS, align_to
from geodesic_core.align import alignment_plan as core_alignment_plan
from geodesic_core.data import Split
from geodesic_core.metric import tempered
from geodesic_core.train import epochs_run

from .common import CACHED, checkpoint_path, default_device, finished, open_ref, ref, save_result
from .live import Live


@functools.lru_cache(maxsize=24)
def task_split(scenario: str, index: int, train_split: bool, data_dir: str | None, permutation_seed: int) -> Split:
    """Task ``index`` (0-based) of the scenario, loaded once per process."""
    spec = get_scenario(scenario).tasks(max(index + 1, 2))[index]
    return load_task(spec, train_split, data_dir, permutation_seed)


def _specs(cfg: ContinualConfig):
    return get_scenario(cfg.scenario).tasks(cfg.n_tasks())


def _tests(cfg: ContinualConfig, data_dir: str | None) -> list[Split]:
    return [task_split(cfg.scenario, j, False, data_dir, cfg.permutation_seed) for j in range(cfg.n_tasks())]


def _train_split(cfg: ContinualConfig, index: int, data_dir: str | None) -> Split:
    return task_split(cfg.scenario, index, True, data_dir, cfg.permutation_seed)


def _accs(model, cfg: ContinualConfig, data_dir: str | None) -> list[float]:
    return task_accuracies(model, _tests(cfg, data_dir), _specs(cfg))


def _meta(cfg: ContinualConfig, **extra) -> dict:
    s = get_scenario(cfg.scenario)
    return {"model": cfg.model_name(), "num_classes": s.num_classes, "in_channels": s.in_channels,
            "image_size": s.image_size, "dataset": s.name, **extra}


def alignment_plan(cfg: ContinualConfig) -> str | None:
    """Whether the geodesic and linear stages align w_i to w_{1:i-1} (`geodesic_core.align.alignment_plan` on the
    scenario's network): None when they do, else the reason they do not. With ``align`` activations an architecture
    it cannot align is an `InputError` here, before any work."""
    scenario = get_scenario(cfg.scenario)
    model = build_scenario_model(scenario, cfg.model, 0)
    x = torch.randn(4, scenario.in_channels, scenario.image_size, scenario.image_size)
    return core_alignment_plan(model, cfg.resolved().align, x)


def _align_start(model, prev, pool: torch.Tensor, index: int, cfg: ContinualConfig) -> dict:
    """Stage i's start: w_i (``model``, in place) with its hidden units permuted to match w_{1:i-1}'s
    (``prev``) by activation matching on ``ALIGN_INPUTS`` of task i's training inputs ``pool`` (the stage reads
    no other task's data); the same function. Returns the result fields: ``aligned`` and the units moved."""
    if alignment_plan(cfg) is not None:
        return {"aligned": False}
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + index)
    x = pool[torch.randperm(pool.shape[0], generator=gen)[:ALIGN_INPUTS]]
    info = align_to(prev, model, x.to(flat_params(model).device))
    return {"aligned": True, "aligned_units_moved": info["moved"]}


@task(**CACHED)
def train_task_network(index: int, cfg: ContinualConfig, data_dir: str | None, data_fingerprint: str,
                       code_version: str, track: dict | None = None, start: dict | None = None,
                       start_mix: float = 0.0) -> dict:
    """Algorithm 2 line 1/4: a freshly initialized network trained on task ``index`` alone (initialization from
    ``cfg.seed``, shared by all tasks unless ``cfg.shared_init`` is off; data order from ``cfg.seed + index``). With
    ``start`` (the geodesic chain's end w_{1:i-1}) and ``start_mix`` α > 0 the training starts from α w_{1:i-1} +
    (1 − α) w_0 instead (`mixed_start`, w_0 that fresh initialization)."""
    warm = start is not None and start_mix > 0
    out = checkpoint_path("task", index, cfg.model_dump(), data_fingerprint, code_version,
                          *((start["sha256"], start_mix) if warm else ()))
    if (done := finished(out)) is not None:
        return done
    seed = cfg.seed + index
    init = cfg.seed if cfg.shared_init else seed
    model = build_scenario_model(get_scenario(cfg.scenario), cfg.model, init).to(default_device())
    if warm:
        mixed_start(model, open_ref(start)[0], start_mix)
    with Live(f"train task {index + 1}", track=track) as live:
        t0 = time.perf_counter()
        train(task_view(model, _specs(cfg)[index]), _train_split(cfg, index, data_dir),
              cfg.train.model_copy(update={"seed": seed}), step_callbacks=[live.train_step])
        wall = time.perf_counter() - t0
        accs = _accs(model, cfg, data_dir)
        live.log(int(live.completed), {f"acc_task_{j + 1}": a for j, a in enumerate(accs)})
    result = dict(index=index, accuracies=accs, wall_seconds=wall,
                  **({"start": start["sha256"], "start_mix": start_mix} if warm else {}))
    digest = save_checkpoint(out, model.cpu(), _meta(cfg, task=index, test_accuracy=accs[index], result=result))
    return ref(out, digest, **result)


@task(**CACHED)
def geodesic_stage(current: dict, previous: dict, index: int, cfg: ContinualConfig, data_dir: str | None,
                   data_fingerprint: str, code_version: str, track: dict | None = None,
                   fisher: dict | None = None) -> dict:
    """Algorithm 2 line 7: Geo(w_i, g^i, w_{1:i-1}, s) under task i's metric; the end point is w_{1:i}. With
    ``cfg.fisher_weight`` > 0 each step aims along (1 + ω F / mean F) ⊙ (w_{1:i-1} − w), F the earlier tasks'
    diagonal Fisher held in ``fisher`` (`consolidate_fisher` over this chain's networks). With ``cfg.polish_epochs``
    > 0 the traversal's end is then settled between w_i's outputs and that same pull (`polish_stage`; a row of the path
    with ``polished`` true). With ``cfg.refit_head`` (a head per task) task i's head is then refit to w_i's outputs
    (`distill_head`; the path's last row, ``head_refit`` true). Each closing row is at the traversal's last ``step``
    and a ``global_step`` of its own, after the traversal's.

    Along the way the test accuracy on tasks 1..i is recorded every ``cfg.eval_every`` steps; the straight
    line between the same endpoints is scanned for comparison; both paths are projected on their first two
    principal components (paper Fig. 5A/B). Live metrics (``distance``, ``step_length``, ``path_length``,
    ``acc_task_j``) go to the child run ``track`` at the geodesic step counted over all stages.
    """
    resolved = cfg.resolved()
    weight, refit, polish = resolved.fisher_weight, resolved.refit_head, resolved.polish_epochs
    reads_fisher = resolved.geodesic_reads_fisher()
    if reads_fisher and fisher is None:
        raise ValueError("fisher_weight > 0 or polish_epochs > 0: the geodesic stage needs the earlier tasks' Fisher "
                         "(consolidate_fisher)")
    fisher = fisher if reads_fisher else None
    polish_key = (polish, cfg.polish_strength, cfg.polish_lr, cfg.polish_temperature) if polish else ()
    out = checkpoint_path("continual-geodesic", current["sha256"], previous["sha256"], index, cfg.geo.model_dump(),
                          cfg.seed, cfg.align, data_fingerprint, code_version,
                          *((weight, fisher["sha256"]) if fisher else ()), *(("refit_head",) if refit else ()),
                          *polish_key)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(current)
    prev, _ = open_ref(previous)
    pull = load_tensors(fisher["path"])[0] if fisher else None  # Σ_j F_j and the stage ends they pull toward
    f_sum = pull["a"] if weight > 0 else None
    pool = _train_split(cfg, index, data_dir).x
    t_align = time.perf_counter()
    aligned = _align_start(model, prev, pool, index, cfg)
    t_align = time.perf_counter() - t_align
    w_start, w_prev = flat_params(model), flat_params(prev)
    teacher = copy.deepcopy(model) if refit or polish else None  # w_i (aligned: the same function), their target
    tests = _tests(cfg, data_dir)[: index + 1]
    specs = _specs(cfg)[: index + 1]
    rows, points, spent = [], [w_start.cpu()], [0.0]
    euclid = {"length": 0.0, "last": w_start.clone()}
    # the stage's steps counted after those of the earlier stages (its start, w_i, is a point of its own)
    first = int(previous["end_step"]) + 1 if "end_step" in previous else 0
    offset = float(previous.get("end_path_length", 0.0))

    def row(step: int, distance: float, refit: bool = False, polished: bool = False) -> dict:
        accs = {f"acc_task_{j + 1}": a for j, a in enumerate(task_accuracies(model, tests, specs))}
        # a closing row (the correction, the head refit): the global step after the row before it
        at = rows[-1]["global_step"] + 1 if polished or refit else first + step
        live.log(at, accs)
        live.advance(live.completed, probe=f"tasks {', '.join(f'{a:.1f}' for a in accs.values())}%")
        return {"stage": index + 1, "step": step, "global_step": at, "distance": distance, **accs,
                "polished": polished, "head_refit": refit}

    def end_row(step: int, distance: float, refit: bool = False, polished: bool = False) -> None:
        t = time.perf_counter()  # a row at the end, its time not counted
        rows.append(row(step, distance, refit, polished))
        points.append(flat_params(model).cpu().clone())
        spent[0] += time.perf_counter() - t

    def record(info):
        euclid["length"] += float((info.weights - euclid["last"]).norm())
        euclid["last"] = info.weights.detach().clone()
        if info.step % cfg.eval_every:
            return
        t = time.perf_counter()
        rows.append(row(info.step, info.distance))
        points.append(info.weights.detach().cpu().clone())
        spent[0] += time.perf_counter() - t

    gen = torch.Generator().manual_seed(cfg.seed * 7919 + index)
    with Live(f"geodesic to task {index + 1}", cfg.geo.max_steps, track, upper_bound=True) as live:
        rows.append(row(0, float((w_prev - w_start).norm())))
        t0 = time.perf_counter()
        res = continual_geodesic(model, prev, pool, cfg.geo.model_copy(update={"seed": cfg.seed}), task=specs[index],
                                 callbacks=[lambda info: live.geo_step(
                                     info._replace(step=first + info.step), offset), record], generator=gen,
                                 fisher=f_sum, fisher_weight=weight)
        if rows[-1]["step"] != res.steps:
            end_row(res.steps, res.distance)
        if polish:
            polish_stage(model, teacher, pool, QuadraticPull.from_state(cfg.polish_strength, pull), polish,
                         lr=cfg.polish_lr, temperature=cfg.polish_temperature, seed=cfg.seed * 7919 + index,
                         task=specs[index])
            end_row(res.steps, float((flat_params(model) - w_prev).norm()), polished=True)
        fit = distill_head(model, teacher, pool, specs[index].head) if refit else None
        wall = time.perf_counter() - t0 - spent[0] + t_align
        if fit is not None:
            end_row(res.steps, res.distance, refit=True)

    # the straight line between the same endpoints, for the plots and the length comparison
    scan_model = prev  # its weights were only needed as the target

    def measure(w):
        set_flat_params(scan_model, w.to(flat_params(scan_model)))
        return task_accuracies(scan_model, tests, specs)

    line_points = [w.cpu() for w in linear_path(w_start, w_prev, cfg.linear_points)]
    line_values, _ = linear_scan(line_points, measure)
    alphas = torch.linspace(0, 1, cfg.linear_points)
    probe = pool[torch.randperm(pool.shape[0], generator=gen)[: cfg.geo.metric_batch * 4]]
    # both paths measured the same way: S(γ) on one fixed probe batch through the recorded points (the
    # per-step lengths on each step's own batch overstate it: the anchor concentrates its change there)
    view = tempered(task_view(model, specs[index]), cfg.geo.temperature)  # lengths under g^i: task i's outputs
    geo_len = cumulative_lengths(view, points, probe, cfg.geo.output_space)
    lin_len = cumulative_lengths(view, line_points, probe, cfg.geo.output_space)
    coords = pca_2d(torch.stack(points + line_points))
    for r, c, length in zip(rows, coords[: len(points)], geo_len):
        r["pc1"], r["pc2"], r["path_length"] = float(c[0]), float(c[1]), length
    line_rows = [{"stage": index + 1, "alpha": float(a), **{f"acc_task_{j + 1}": v for j, v in enumerate(vals)},
                  "path_length": length, "pc1": float(c[0]), "pc2": float(c[1])}
                 for a, vals, c, length in zip(alphas, line_values, coords[len(points):], lin_len)]
    accs = _accs(model, cfg, data_dir)  # cumulative_lengths restored the end weights
    return save_result(out, model, meta, dict(
        index=index, accuracies=accs, wall_seconds=wall, steps=res.steps, stop_reason=res.stop_reason,
        end_step=rows[-1]["global_step"], end_path_length=offset + res.path_length,
        distance=res.distance, path_rows=rows, line_rows=line_rows, path_length=geo_len[-1],
        path_length_euclidean=euclid["length"], line_path_length=lin_len[-1],
        line_path_length_euclidean=float((w_prev - w_start).norm()), fisher_weight=weight, **aligned,
        **({"head_kl_before": fit.kl_before, "head_kl_after": fit.kl_after} if fit else {})), task=index,
        test_accuracy=accs[index])


@task(**CACHED)
def linear_stage(current: dict, previous: dict, index: int, cfg: ContinualConfig, data_dir: str | None,
                 data_fingerprint: str, code_version: str, track: dict | None = None) -> dict:
    """Baseline: the best point (highest minimum accuracy over tasks 1..i, an oracle on the test sets) on the
    straight line between w_i and the previous linear-baseline network; with a head per task, between the two with
    each one's untrained heads taken from the other (`completed_heads`), so that only the shared layers move."""
    out = checkpoint_path("continual-linear", current["sha256"], previous["sha256"], index, cfg.linear_points,
                          cfg.seed, cfg.align, data_fingerprint, code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(current)
    prev, _ = open_ref(previous)
    t_align = time.perf_counter()
    aligned = _align_start(model, prev, _train_split(cfg, index, data_dir).x, index, cfg)
    t_align = time.perf_counter() - t_align
    tests = _tests(cfg, data_dir)[: index + 1]
    specs = _specs(cfg)[: index + 1]
    w_start, w_prev = completed_heads(model, flat_params(model), flat_params(prev), specs, index)

    with Live(f"linear scan, task {index + 1}", cfg.linear_points, track) as live:
        def measure(w):
            set_flat_params(model, w)
            accs = task_accuracies(model, tests, specs)
            live.advance()
            return accs

        t0 = time.perf_counter()
        values, best = linear_scan(linear_path(w_start, w_prev, cfg.linear_points), measure)
        alpha = best / (cfg.linear_points - 1)
        set_flat_params(model, torch.lerp(w_start, w_prev, alpha))
        wall = time.perf_counter() - t0 + t_align
        accs = _accs(model, cfg, data_dir)
        live.log(index + 1, {f"acc_task_{j + 1}": a for j, a in enumerate(accs)})
    return save_result(out, model, meta, dict(index=index, accuracies=accs, wall_seconds=wall, alpha=alpha, **aligned),
                       task=index, test_accuracy=accs[index])


@task(**CACHED)
def sequential_stage(method: str, previous: dict, index: int, pull: dict | None, cfg: ContinualConfig,
                     data_dir: str | None, data_fingerprint: str, code_version: str, track: dict | None = None,
                     budget_seconds: float | None = None) -> dict:
    """Baselines: SGD on task i from w_{1:i-1} (``sgd``), plus (λ/2)|w - w_{1:i-1}|^2 (``l2``), or plus the
    EWC penalty held in ``pull`` (``ewc``); for ``cfg.train.epochs``, or (the equal-time run) for
    ``budget_seconds`` of wall time, the learning-rate schedule spanning that time (`train`'s ``wall_seconds``).
    The result's ``epochs`` are the epochs run."""
    train_cfg = cfg.train.model_copy(update={"seed": cfg.seed + index})
    out = checkpoint_path(f"continual-{method}", previous["sha256"], pull and pull["sha256"], index,
                          train_cfg.model_dump(), budget_seconds, cfg.l2_strength if method == "l2" else cfg.ewc_strength,
                          cfg.seed, data_fingerprint, code_version)
    if (done := finished(out)) is not None:
        return done
    model, meta = open_ref(previous)
    penalty = None
    if method == "l2":
        penalty = QuadraticPull.empty(cfg.l2_strength, flat_params(model).numel()).add(flat_params(model).cpu())
    elif method == "ewc":
        if pull is None:
            raise ValueError("the ewc stage needs the consolidated Fisher penalty of the earlier tasks")
        penalty = QuadraticPull.from_state(cfg.ewc_strength, load_tensors(pull["path"])[0])
    first = int(previous.get("end_sgd_step", 0))  # SGD steps of the earlier stages
    title = f"{method} on task {index + 1}" + ("" if budget_seconds is None else f" ({budget_seconds:.0f} s)")
    with Live(title, track=track) as live:
        t0 = time.perf_counter()
        data = _train_split(cfg, index, data_dir)
        steps = train(task_view(model, _specs(cfg)[index]), data, train_cfg, penalty=penalty,
                      step_callbacks=[lambda s: live.train_step(s, first)], wall_seconds=budget_seconds)
        wall = time.perf_counter() - t0
        accs = _accs(model, cfg, data_dir)
        live.log(first + steps, {f"acc_task_{j + 1}": a for j, a in enumerate(accs)})
    epochs = epochs_run(steps, len(data.x), train_cfg.batch_size)
    return save_result(out, model, meta, dict(index=index, accuracies=accs, wall_seconds=wall, epochs=epochs,
                                              end_sgd_step=first + steps), task=index, test_accuracy=accs[index])


@task(**CACHED)
def consolidate_fisher(network: dict, index: int, pull: dict | None, cfg: ContinualConfig, data_dir: str | None,
                       data_fingerprint: str, code_version: str) -> dict:
    """EWC at the end of task i: add (w - w*_i)^T diag(F_i) (w - w*_i) to the penalty, F_i the diagonal Fisher
    of the network on ``cfg.fisher_samples`` inputs of task i (task i's data, available at that time)."""
    out = checkpoint_path("ewc-pull", network["sha256"], pull and pull["sha256"], index, cfg.fisher_samples,
                          code_version).with_suffix(".tensors.pt")
    if (done := finished(out)) is not None:
        return done
    model, _ = open_ref(network)
    w = flat_params(model).cpu()
    previous = (QuadraticPull.from_state(cfg.ewc_strength, load_tensors(pull["path"])[0]) if pull
                else QuadraticPull.empty(cfg.ewc_strength, w.numel()))
    x = _train_split(cfg, index, data_dir).x[: cfg.fisher_samples]
    t0 = time.perf_counter()
    fisher = fisher_diagonal(task_view(model, _specs(cfg)[index]), x).cpu()
    wall = time.perf_counter() - t0
    result = dict(index=index, wall_seconds=wall)
    digest = save_tensors(out, previous.add(w, fisher).state(), {"tasks": index + 1, "result": result})
    return ref(out, digest, **result)
