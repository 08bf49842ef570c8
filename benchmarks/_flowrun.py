"""Run one of the project's flows on the embedded defaults in a fresh temporary working directory (nothing
cached, so every time is measured) and return its summary rows."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_fresh(command: str, argv: list[str], config_cls, flow_module: str, flow_name: str):
    """Parse ``argv`` as `geodesic <command>` options, run the flow, return (params, summary, seconds)."""
    import importlib

    from flows.cli import build_parser, config_from_args, run_local, runner_from_args

    args = build_parser().parse_args([command, *argv])
    params = config_from_args(config_cls, args)
    module = importlib.import_module(flow_module)
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["GEODESIC_OUTPUT_DIR"] = str(Path(tmp) / "outputs")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        t0 = time.perf_counter()
        try:
            summary = run_local(getattr(module, flow_name), params, data_dir=data_dir, experiment=module.EXPERIMENT,
                                runner=runner_from_args(args))
        finally:
            os.chdir(cwd)
    return params, summary, time.perf_counter() - t0


def with_default(argv: list[str], flag: str) -> list[str]:
    """``argv`` with the boolean option ``--flag`` turned on unless it already says ``--flag`` or ``--no-flag``."""
    return argv if any(a in (f"--{flag}", f"--no-{flag}") for a in argv) else [f"--{flag}", *argv]


LEVEL = 0.4  # points within which two accuracies are "level": about two standard errors on 10,000 images at 96%


def versus(geodesic: float, peer: float, tolerance: float = LEVEL) -> str:
    """'ahead (+d)', 'level (d)' or 'behind (-d)': the geodesic's number against a peer's, level within
    ``tolerance`` points."""
    d = geodesic - peer
    return f"{'ahead' if d > tolerance else 'behind' if d < -tolerance else 'level'} ({d:+.2f})"
