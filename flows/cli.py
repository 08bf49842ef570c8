"""The ``geodesic`` command line. Options are generated from the typed configs, so ``--batch-size`` on the
command line is ``batch_size`` in the config, the flow parameters and the MLflow params."""

from __future__ import annotations

import argparse
import sys
import typing
from typing import Literal, Sequence

from pydantic import BaseModel, ValidationError

from geodesic_core import InputError, check_data_files, check_dataset_name, check_model_name
from geodesic_core.config import TrainConfig
from geodesic_core.data import DATA_DIR_ENV


def add_config_options(parser: argparse.ArgumentParser, cls: type[BaseModel], skip: Sequence[str] = ()) -> None:
    """One ``--field-name`` option per config field (default: the config's default)."""
    group = parser.add_argument_group(cls.__name__)
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        ann = field.annotation
        kwargs: dict = {"dest": name, "default": None, "help": f"(default: {field.default})"}
        if typing.get_origin(ann) is Literal:
            kwargs["choices"] = list(typing.get_args(ann))
        elif ann is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _base_type(ann)
        group.add_argument(f"--{name.replace('_', '-')}", **kwargs)


def _base_type(ann) -> type:
    for t in (int, float, str):
        try:
            if issubclass(ann, t):
                return t
        except TypeError:
            pass
    return str


def config_from_args(cls: type[BaseModel], args: argparse.Namespace, **extra):
    values = {k: getattr(args, k) for k in cls.model_fields if getattr(args, k, None) is not None}
    values.update(extra)
    return cls(**values)


def _fail(msg: str) -> int:
    print(f"geodesic: error: {msg}", file=sys.stderr)
    return 2


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"--{loc.replace('_', '-')}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def cmd_train(args: argparse.Namespace) -> int:
    from geodesic_core.train import train_and_save

    cfg = config_from_args(TrainConfig, args)
    check_model_name(args.model)
    dataset = check_dataset_name(args.dataset)
    check_data_files(dataset, args.data_dir)
    meta = train_and_save(args.model, dataset, cfg, args.out, args.data_dir, task=args.task,
                          callbacks=[lambda e: print(f"epoch {e.epoch + 1}/{cfg.epochs}  loss {e.train_loss:.4f}",
                                                     flush=True)])
    print(f"test accuracy {meta['test_accuracy']:.2f}%  loss {meta['test_loss']:.4f}  -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geodesic", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a network and save a checkpoint")
    p.add_argument("--model", required=True, help="registered model (lenet300, cnn, vgg11, vgg16, resnet164)")
    p.add_argument("--dataset", required=True, help="registered dataset (mnist, fashion_mnist, permuted_mnist, ...)")
    p.add_argument("--task", type=int, default=0, help="permuted-MNIST task index (0 = plain MNIST)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--data-dir", default=None, help=f"data root (default: ${DATA_DIR_ENV}, else ./data)")
    add_config_options(p, TrainConfig)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as exc:
        return _fail(_format_validation(exc))
    except InputError as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
