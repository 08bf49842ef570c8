"""Core math of weight-space geodesics (pure PyTorch: no orchestration or tracking imports).

References:
    Raghavan & Thomson, "Solving hybrid machine learning tasks by traversing weight space geodesics"
    (the paper in ../shared/paper), sections 3-4.
"""

from .align import align_to
from .checkpoint import load_checkpoint, load_model, load_tensors, save_checkpoint, save_tensors, state_hash
from .config import GeoConfig, TrainConfig
from .data import DATASETS, check_data_files, check_dataset_name, dataset_fingerprint, load_split, resolve_data_dir
from .errors import InputError, NonFiniteError
from .geo import GeoResult, StepInfo, geo
from .metric import (MetricOperator, cumulative_lengths, flat_params, gram_matrix, linear_path,
                     metric_vector_product, path_length, segment_lengths, set_flat_params)
from .models import MODELS, build_model, check_model_name
from .solve import GeoQPSolution, GramFactor, solve_geo_qp
from .targets import (FilterTarget, FixedTarget, SparseTarget, param_slices, project_sparse, prunable_mask,
                      sparsity)
from .train import evaluate, recompute_bn, train

__all__ = [
    "DATASETS", "MODELS", "FilterTarget", "FixedTarget", "GeoConfig", "GeoQPSolution", "GeoResult", "GramFactor",
    "InputError", "MetricOperator", "NonFiniteError", "SparseTarget", "StepInfo", "TrainConfig", "align_to",
    "build_model",
    "check_data_files", "check_dataset_name", "check_model_name", "cumulative_lengths", "dataset_fingerprint",
    "evaluate", "flat_params", "geo", "gram_matrix", "linear_path", "load_checkpoint", "load_model", "load_split",
    "load_tensors", "metric_vector_product", "param_slices", "path_length", "project_sparse", "prunable_mask",
    "recompute_bn", "resolve_data_dir", "save_checkpoint", "save_tensors", "segment_lengths", "set_flat_params",
    "solve_geo_qp", "sparsity", "state_hash", "train",
]
