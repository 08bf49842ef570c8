"""The flows from Python: `run_flow` is what ``geodesic sparsify|continual|connect`` does, for a notebook or a
script (Prefect's ephemeral mode and MLflow on ./mlflow.db unless servers are configured, see `run_local`)."""

from __future__ import annotations

from geodesic_core.connect import ConnectConfig

from geodesic_core.continual import ContinualConfig

from geodesic_core.sparsify import SparsifyConfig


def run_flow(params: SparsifyConfig | ContinualConfig | ConnectConfig, *, data_dir: str | None = None,
             experiment: str | None = None) -> list[dict]:
    """Run the flow that ``params`` configures (by its type) and return its summary rows, one per method (and
    level): what the CLI prints as its table. Cached tasks are reused as in the CLI."""
    from flows.cli import run_local

    if isinstance(params, SparsifyConfig):
        from flows.sparsify import EXPERIMENT, sparsify_flow as flow
    elif isinstance(params, ContinualConfig):
        from flows.continual import EXPERIMENT, continual_flow as flow
    elif isinstance(params, ConnectConfig):
        from flows.connect import EXPERIMENT, connect_flow as flow
    else:
        raise TypeError(f"params must be a SparsifyConfig, ContinualConfig or ConnectConfig, got {type(params).__name__}")
    return run_local(flow, params, data_dir=data_dir, experiment=experiment or EXPERIMENT)
