"""Run the sparsify flow (Prefect + MLflow, cached tasks, the baselines) on a model from your own module.

    cd examples && python flow_own_model.py          # MNIST from $GEODESIC_DATA_DIR (or ./data)

The same as ``geodesic sparsify --model my_models:small_mlp --dataset mnist --sparsity 90 ...`` from this folder.
Editing my_models.py changes the cache keys: the next run recomputes what depends on the model.
"""

from flows.api import run_flow
from geodesic_core.sparsify import SparsifyConfig

params = SparsifyConfig(model="my_models:small_mlp", dataset="mnist", sparsity=[90], schedule="cubic", stages=2,
                        train={"epochs": 1},
                        geo={"max_steps": 30}, finetune={"epochs": 1, "equal_time": False, "distill": False})
for row in run_flow(params):
    print(f"{row['method']:<22} {row['level']:>5.0f}%  test accuracy {row['test_accuracy']:6.2f}  "
          f"sparsity {row['sparsity']:6.2f}  {row['wall_seconds']:.1f} s")
