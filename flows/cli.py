"""The ``geodesic`` command line.

Options are generated from the typed configs: a top-level field ``refresh_every`` is ``--refresh-every``, a
nested one ``geo.eta`` is ``--geo.eta``; the same names are the flow parameters and the MLflow params.
Every input is checked before any work starts; a bad one exits with status 2 and a message naming it.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Sequence

from pydantic import BaseModel, ValidationError

from geodesic_core import InputError, check_data_files, check_dataset_name
from geodesic_core.config import TrainConfig
from geodesic_core.connect import ConnectConfig
from geodesic_core.continual import ContinualConfig
from geodesic_core.sparsify import SparsifyConfig
from geodesic_core.data import DATA_DIR_ENV

QUIET_ENV = {  # telemetry off; analytics off (it caused "database is locked" at server start)
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
# Prefect's ephemeral server gets 20 s to start by default; its first start (database migrations) takes 14-16 s
# on an idle 2-core machine and more on a busy one, where the run then failed before any work. Unless the user
# sets PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (environment or profile), a run waits this long.
EPHEMERAL_STARTUP_SECONDS = 120


def _base_type(ann) -> type:
    for t in (int, float, str):
        try:
            if issubclass(ann, t):
                return t
        except TypeError:
            pass
    return str


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_options(parser: argparse.ArgumentParser, cls: type[BaseModel], prefix: str = "",
                       skip: Sequence[str] = ()) -> None:
    """One option per config field; nested configs become ``--<field>.<subfield>`` options."""
    group = parser.add_argument_group(cls.__name__)
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        dest = f"{prefix}{name}"
        ann = field.annotation
        args = typing.get_args(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            add_config_options(parser, ann, prefix=f"{dest}.", skip=("seed",))  # one --seed for everything
            continue
        if type(None) in args and len(args) == 2:  # optional (None: the application fills it in): the inner type
            ann = next(a for a in args if a is not type(None))
            args = typing.get_args(ann)
        default = field.default if field.default_factory is None else field.default_factory()
        text = " ".join((field.description or "").split()).replace("%", "%%")  # the field's docstring
        kwargs: dict = {"dest": dest, "default": None, "help": f"{text} (default: {default})".lstrip()}
        if typing.get_origin(ann) is Literal:
            kwargs["choices"] = list(args)
        elif ann is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(ann) is list:
            kwargs.update(action="append", type=str,
                          help=f"{text.rstrip('.')}; repeat the option or separate by commas for several "
                               f"(default: {default})")
        else:
            kwargs["type"] = _base_type(next((a for a in args if a is not type(None)), ann) if args else ann)
        group.add_argument(_option(dest) if "." not in dest else "--" + dest.replace("_", "-"), **kwargs)


def _raw_values(cls: type[BaseModel], args: argparse.Namespace, prefix: str = "") -> dict:
    values: dict = {}
    for name, field in cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            sub = _raw_values(ann, args, prefix=f"{prefix}{name}.")
            if sub:
                default = field.default_factory() if field.default_factory else field.default
                values[name] = {**default.model_dump(), **sub}
            continue
        v = getattr(args, f"{prefix}{name}", None)
        if isinstance(v, list):  # a list option, repeated or comma-separated: --methods geodesic,ewc
            v = [part.strip() for given in v for part in given.split(",") if part.strip()]
        if v is not None:
            values[name] = v
    return values


def config_from_args(cls: type[BaseModel], args: argparse.Namespace, **extra):
    """Build ``cls`` from the parsed options (unset options keep the config's defaults); pydantic validates
    the whole tree at once, so an error names its full option (``--geo.eta``)."""
    return cls(**{**_raw_values(cls, args), **extra})


def _fail(msg: str) -> int:
    print(f"geodesic: error: {msg}", file=sys.stderr)
    return 2


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"] if not isinstance(x, int))
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{_option(loc) if '.' not in loc else '--' + loc.replace('_', '-')}: {msg} "
                     f"(got {err.get('input')!r})")
    return "; ".join(parts)


def cmd_train(args: argparse.Namespace) -> int:
    from geodesic_core.train import train_and_save

    cfg = config_from_args(TrainConfig, args)
    meta = train_and_save(args.model, args.dataset, cfg, args.out, args.data_dir, task=args.task, width=args.width,
                          depth=args.depth, init=args.init, keep_zeros=args.keep_zeros, teacher=args.teacher,
                          teacher_temperature=args.teacher_temperature,
                          callbacks=[lambda e: print(f"epoch {e.epoch + 1}/{cfg.epochs}  loss {e.train_loss:.4f}",
                                                     flush=True)])
    kept = f"  {100 * meta['zero_fraction']:.2f}% of the parameters held at zero" if meta.get("keep_zeros") else ""
    print(f"test accuracy {meta['test_accuracy']:.2f}%  loss {meta['test_loss']:.4f}{kept}  -> {args.out}")
    return 0


def preflight(params: SparsifyConfig, data_dir: str | None) -> None:
    """Checks that can fail, before any work: data files, the given checkpoint, the structured layer.
    (The tracking server is checked in `run_local`.)"""
    from geodesic_core import FilterTarget, build_model, load_model
    from geodesic_core.data import get_spec

    check_data_files(params.dataset, data_dir)
    spec = get_spec(params.dataset)
    model = None
    if params.checkpoint:
        model, _ = load_model(params.checkpoint, expect_model=params.model, expect_num_classes=spec.num_classes,
                              expect_arch=params.arch())
    if params.structured:
        model = model or build_model(params.model, spec.num_classes, spec.in_channels, spec.image_size,
                                     **params.arch())
        FilterTarget(model, params.layer, params.n_filters)


def run_local(flow_fn, params, *, data_dir: str | None, experiment: str, runner=None, report=None,
              return_state: bool = False):
    """Run a flow on the embedded defaults: Prefect's ephemeral mode unless PREFECT_API_URL is set, MLflow
    on ./mlflow.db unless MLFLOW_TRACKING_URI is set, results persisted under the output directory, tasks on
    ``runner`` (a `RunnerConfig`; default: the environment's settings, else a 2-thread pool), progress and live
    metrics as ``report`` says (a `ReportConfig`; default: the environment's settings)."""
    from prefect.settings import (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  temporary_settings)

    from flows.common import RunnerConfig
    from tasks.common import output_dir
    from tasks.tracking import check_tracking_reachable

    task_runner = (runner or RunnerConfig.from_env()).build()  # a missing prefect-dask fails here, first
    env = {k: os.environ.get(k, v) for k, v in QUIET_ENV.items()}
    with _environ(env):
        check_tracking_reachable()  # before anything is written
    env.update(local_roots(params, data_dir))
    if report is not None:
        env.update(report.env())
    env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = (os.environ.get("PREFECT_RESULTS_LOCAL_STORAGE_PATH")
                                                 or str(output_dir() / "prefect-results"))
    # set for the run (task threads and Dask worker processes read them), then restored: a process that runs
    # several flows (tests, benchmarks) does not carry one run's folders into the next
    settings = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    # the user's own value, from the environment or a Prefect profile, wins
    if timeout.name not in os.environ and timeout.value() == timeout.default():
        settings[timeout] = EPHEMERAL_STARTUP_SECONDS
    with _environ(env), temporary_settings(settings):
        return flow_fn.with_options(task_runner=task_runner)(
            params, data_dir=data_dir, experiment=experiment, return_state=return_state)


@contextmanager
def _environ(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def local_roots(params, data_dir: str | None) -> dict[str, str]:
    """The local user's own paths are the configured roots of a local run: ``--data-dir`` is the data root
    and the folders of the checkpoints named on the command line may be read (see `confine_paths`)."""
    from flows.common import ALLOWED_ROOTS_ENV
    from geodesic_core.data import resolve_data_dir

    env = {DATA_DIR_ENV: str(resolve_data_dir(data_dir))} if data_dir else {}
    folders = [str(Path(p).expanduser().resolve().parent) for p in
               (getattr(params, k, None) for k in ("checkpoint", "checkpoint_a", "checkpoint_b")) if p]
    if folders:
        env[ALLOWED_ROOTS_ENV] = os.pathsep.join(filter(None, [os.environ.get(ALLOWED_ROOTS_ENV), *folders]))
    return env


def runner_from_args(args: argparse.Namespace):
    from flows.common import RunnerConfig

    return RunnerConfig.from_env(task_runner=args.task_runner, workers=args.workers, dask_address=args.dask_address)


def report_from_args(args: argparse.Namespace):
    from tasks.live import ReportConfig

    return ReportConfig.from_env(progress=args.progress, live_metrics=args.live_metrics)


def _run_flow(flow_fn, params, args, experiment: str):
    return run_local(flow_fn, params, data_dir=args.data_dir, experiment=args.experiment or experiment,
                     runner=runner_from_args(args), report=report_from_args(args))


def print_table(rows: list[dict], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return "" if v is None else str(v)


def cmd_sparsify(args: argparse.Namespace) -> int:
    params = config_from_args(SparsifyConfig, args)
    from flows.common import in_fresh_thread

    in_fresh_thread(preflight, params, args.data_dir)  # (see in_fresh_thread: no PyTorch thread team left behind)
    from flows.sparsify import EXPERIMENT, sparsify_flow

    summary = _run_flow(sparsify_flow, params, args, EXPERIMENT)
    print()
    print_table(summary, ["method", "level", "test_accuracy", "sparsity", "wall_seconds", "steps",
                          "path_min_test_accuracy", "path_length"])
    return 0


def cmd_continual(args: argparse.Namespace) -> int:
    from geodesic_core.continual import check_scenario_data, get_scenario

    params = config_from_args(ContinualConfig, args)
    check_scenario_data(get_scenario(params.scenario), args.data_dir)
    from flows.common import in_fresh_thread
    from tasks.continual import alignment_plan

    in_fresh_thread(alignment_plan, params)  # --align activations on a network it cannot align: refused first
    from flows.continual import EXPERIMENT, continual_flow

    summary = _run_flow(continual_flow, params, args, EXPERIMENT)
    print()
    k = params.n_tasks()
    print_table(summary, ["method", *[f"acc_task_{j + 1}" for j in range(k)], "avg_accuracy", "bwt", "wall_seconds"])
    return 0


def check_endpoints_given(params: ConnectConfig) -> None:
    """Both given endpoints load safely, are the requested model, and match each other."""
    from geodesic_core import load_model
    from geodesic_core.connect import check_same_architecture
    from geodesic_core.data import get_spec

    if params.checkpoint_a:
        n = get_spec(params.dataset).num_classes
        metas = [load_model(p, expect_model=params.model, expect_num_classes=n)[1]
                 for p in (params.checkpoint_a, params.checkpoint_b)]
        check_same_architecture(*metas, params.checkpoint_a, params.checkpoint_b)


def cmd_connect(args: argparse.Namespace) -> int:
    from flows.common import in_fresh_thread

    params = config_from_args(ConnectConfig, args)
    check_data_files(params.dataset, args.data_dir)
    in_fresh_thread(check_endpoints_given, params)
    from tasks.connect import alignment_plan

    in_fresh_thread(alignment_plan, params, args.data_dir)  # --align activations on a network it cannot align
    from flows.connect import EXPERIMENT, connect_flow

    summary = _run_flow(connect_flow, params, args, EXPERIMENT)
    print()
    print_table(summary, ["method", "endpoint_a_accuracy", "endpoint_b_accuracy", "path_min_test_accuracy",
                          "path_mean_test_accuracy", "path_length", "path_length_euclidean", "final_distance_ratio",
                          "wall_seconds"])
    geo = next((r for r in summary if r["method"] == "geodesic"), None)
    if geo and geo["final_distance_ratio"] > 0:
        print(f"\nthe geodesic did not reach w_2: it stopped {100 * geo['final_distance_ratio']:.1f}% of the distance "
              f"short ({geo['stop_reasons']}). Rerun with --complete (the looser completion step) or a larger "
              f"--max-segments to finish the connection.")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """``geodesic runs``: the child runs of an experiment as a table, from `mlflow.search_runs`."""
    from tasks.tracking import runs_table

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    frame = runs_table(args.experiment, latest_only=not args.all)
    if args.csv:
        sys.stdout.write(frame.to_csv(index=False))
    elif frame.empty:
        print(f"no runs in experiment {args.experiment!r}")
    else:
        print(frame.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_data_updated(args: argparse.Namespace) -> int:
    from tasks.data import announce_data_update

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    names = [check_dataset_name(d) for d in args.dataset]  # every name checked before any event is sent
    for name in names:
        check_data_files(name, args.data_dir)
    for name in names:
        r = announce_data_update.fn(name, args.data_dir, args.force)
        state = ("changed: event sent" if r["emitted"] else "unchanged: no event" if r["previous"]
                 else "first check: fingerprint recorded, no event (--force sends one)")
        print(f"{name}: {state} (fingerprint {r['fingerprint'][:12]})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a sparsified checkpoint compactly (`geodesic_core.export`); print sizes, their ratio, the largest
    output difference from the masked network and CPU inference times side by side."""
    from flows.common import ALLOWED_ROOTS_ENV, _inside
    from geodesic_core import load_model
    from geodesic_core.data import get_spec
    from geodesic_core.export import export_and_compare
    from tasks.common import output_dir

    out = Path(args.out).expanduser().resolve()
    roots = [Path.cwd().resolve(), output_dir()] + [Path(p).expanduser().resolve() for p in
                                                    os.environ.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep) if p]
    if not any(_inside(out, r) for r in roots):
        return _fail(f"export target {args.out} is outside the folders an export may write ({', '.join(map(str, roots))}); "
                     f"write under the working directory or the output root, or add the folder to ${ALLOWED_ROOTS_ENV}")
    if out.suffix != ".safetensors":
        return _fail(f"export target {args.out} should end in .safetensors (the file is safetensors)")
    model, meta = load_model(args.checkpoint)
    if meta.get("dataset") and (":" in str(meta["dataset"]) or args.data_dir):
        shape = get_spec(meta["dataset"], args.data_dir).input_shape
    else:
        shape = (int(meta["in_channels"]), int(meta["image_size"]), int(meta["image_size"]))
    m = export_and_compare(model, meta, out, shape, layer=args.layer, batch=args.batch)
    report, diff, t_dense, t_export = m["report"], m["max_abs_diff"], m["dense_ms"], m["export_ms"]
    counts = {e: list(report.encodings.values()).count(e) for e in ("csr", "bitmask", "dense")}
    what = (f"{report.removed_filters} filters of {report.compact_layer} removed" if report.compact_layer
            else f"{report.sparsity:.2f}% zeros")
    print(f"{args.checkpoint}: {meta.get('model')} on {meta.get('dataset', '?')}, {what}")
    print(f"{'':<18}{'dense':>12}{'export':>12}{'ratio':>9}")
    print(f"{'size (bytes)':<18}{report.dense_bytes:>12,}{report.export_bytes:>12,}{report.ratio:>8.2f}x")
    print(f"{'CPU ms / batch ' + str(args.batch):<18}{t_dense:>12.3f}{t_export:>12.3f}{t_dense / t_export:>8.2f}x")
    print(f"tensors: {counts['csr']} CSR, {counts['bitmask']} bit-mask, {counts['dense']} dense; linear layers on "
          f"sparse kernels when loaded: {', '.join(m['sparse_layers']) or 'none'}; largest output difference from the "
          f"masked network {diff:.2e}")
    print(f"-> {out}")
    if diff > 1e-5 * max(1.0, m["output_scale"]):
        return _fail(f"the export's outputs differ from the network's by {diff:.2e}; please report this")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geodesic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data_help = f"data root (default: ${DATA_DIR_ENV}, else ./data)"

    p = sub.add_parser("train", help="train a network and save a checkpoint")
    p.add_argument("--model", default=None, help="registered model (lenet300, cnn, vgg11, vgg16, resnet164), "
                   "torchvision:<name> (e.g. torchvision:resnet18) or an import path module:callable to your builder "
                   "(required unless --init gives it)")
    p.add_argument("--dataset", required=True, help="registered dataset (mnist, fashion_mnist, permuted_mnist, ...) or "
                   "an import path module:callable to your data loader")
    p.add_argument("--task", type=int, default=0, help="permuted-MNIST task index (0 = plain MNIST)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--width", type=float, default=None, help="channel multiplier of vgg11, vgg16, resnet164 "
                   "(default: 1, or --init's)")
    p.add_argument("--depth", type=int, default=None, help="depth of resnet164's family, 9n + 2 (default: 164, or "
                   "--init's)")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights instead of random ones (same model, width, depth and "
                        "classes; e.g. a sparsified network from `geodesic sparsify`'s outputs/checkpoints)")
    p.add_argument("--keep-zeros", action="store_true",
                   help="with --init: weights that are exactly zero there stay zero (masked fine-tuning keeps the "
                        "sparsity, and a structured network's removed filters)")
    p.add_argument("--teacher", default=None, metavar="CHECKPOINT",
                   help="label-free: learn to match this network's outputs, ½‖f(x; w) − f(x; w_teacher)‖² over the "
                        "training inputs, instead of the labels (e.g. the dense network a sparse --init came from)")
    p.add_argument("--teacher-temperature", type=float, default=0.0, metavar="T",
                   help="with --teacher: match its softmax at temperature T instead of its logits, T² KL (Hinton et al. "
                        "2015; the sparsify flow's closing correction uses T = 2 at --lr 0.1); 0: the logits")
    p.add_argument("--data-dir", default=None, help=data_help)
    add_config_options(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    flows = [("sparsify", "Algorithm 1: sparsify a network along geodesics", SparsifyConfig, cmd_sparsify,
              "levels run concurrently"),
             ("continual", "Algorithm 2: learn k tasks in sequence along geodesics", ContinualConfig, cmd_continual,
              "per-task networks and methods run concurrently"),
             ("connect", "Algorithm 3: connect two trained networks by a geodesic", ConnectConfig, cmd_connect,
              "the endpoints train concurrently")]
    for name, what, cfg, func, concurrency in flows:
        p = sub.add_parser(name, help=f"{what} (Prefect flow + MLflow)")
        p.add_argument("--data-dir", default=None, help=data_help)
        p.add_argument("--experiment", default=None, help=f"MLflow experiment (default: geodesic-{name})")
        p.add_argument("--task-runner", choices=["thread", "dask"], default=None,
                       help="where tasks run: Prefect's thread pool (default) or Dask worker processes "
                            "(needs prefect-dask); env GEODESIC_TASK_RUNNER")
        p.add_argument("--workers", type=int, default=None,
                       help=f"threads, or local Dask worker processes (default 2; {concurrency}); env GEODESIC_WORKERS")
        p.add_argument("--dask-address", default=None,
                       help="scheduler of an existing Dask cluster, tcp://host:8786 (default: start a local one); "
                            "env GEODESIC_DASK_ADDRESS")
        p.add_argument("--progress", choices=["auto", "bar", "log", "off"], default=None,
                       help="live progress of running tasks: a bar display on a terminal, plain log lines, or "
                            "off (default auto: bar on a terminal, else log); env GEODESIC_PROGRESS")
        p.add_argument("--live-metrics", action=argparse.BooleanOptionalAction, default=None,
                       help="send metric histories to MLflow while tasks run (default on); env "
                            "GEODESIC_LIVE_METRICS")
        add_config_options(p, cfg)
        p.set_defaults(func=func)

    p = sub.add_parser("runs", help="list the runs of an MLflow experiment: one line per child run (method, "
                                     "level or scenario, headline metrics, wall time, status)")
    p.add_argument("--experiment", default="geodesic-sparsify",
                   help="MLflow experiment (default: geodesic-sparsify; also geodesic-continual, geodesic-connect)")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table (for scripts)")
    p.add_argument("--all", action="store_true", help="every flow run's children (default: the latest flow run's)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("export", help="write a sparsified checkpoint compactly (safetensors: CSR or bit-mask per "
                                      "tensor; structured results physically smaller) and compare sizes and speed")
    p.add_argument("checkpoint", help="a checkpoint written by `geodesic sparsify` (its outputs/checkpoints/final-*.pt)")
    p.add_argument("--out", required=True, help="the .safetensors file to write (under the working directory, the "
                                                "output root or $GEODESIC_ALLOWED_ROOTS)")
    p.add_argument("--layer", default=None, help="structured: the conv layer whose removed filters go (default: "
                                                 "the one found)")
    p.add_argument("--batch", type=int, default=256, help="inputs per forward pass in the CPU timing (default 256)")
    p.add_argument("--data-dir", default=None, help=data_help)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("data-updated", help="emit geodesic.dataset.updated for datasets whose files changed "
                                            "(for cron; the deployments' triggers rerun the flows)")
    p.add_argument("--dataset", action="append", required=True, help="dataset to check (repeat for several)")
    p.add_argument("--data-dir", default=None, help=data_help)
    p.add_argument("--force", action="store_true", help="emit even if the fingerprint did not change")
    p.set_defaults(func=cmd_data_updated)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as exc:
        return _fail(_format_validation(exc))
    except InputError as exc:
        return _fail(str(exc))
    except RuntimeError as exc:
        if "cannot be reached" in str(exc):
            return _fail(str(exc))
        raise


if __name__ == "__main__":
    sys.exit(main())
