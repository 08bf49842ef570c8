"""Validation splits for choosing settings with the flows themselves: a dataset loader (the ``--dataset
module:callable`` form every flow accepts) that returns a registry dataset's training split without ``HELD`` images of a
seeded draw as the training data, and those held-out images as the "test" data. Every
accuracy a flow or benchmark then reports is on the held-out images, so settings are chosen without reading
the test set::

    python benchmarks/connect.py --data-dir ../shared/data --model cnn --dataset heldout:fashion_mnist \\
        --geo.metric-batch 512

(a script in ``benchmarks/`` finds this module by itself; elsewhere put ``benchmarks`` on PYTHONPATH).

The draw (seed 1234, 5,000 images) is also what ``benchmarks/sparsify.py --validation 5000`` holds out.
"""

from __future__ import annotations

import torch

from geodesic_core.data import get_spec, load_split

HELD = 5000
SEED = 1234


def heldout(name: str, data_dir: str | None = None, held: int = HELD) -> tuple:
    """``(x_train, y_train, x_val, y_val, num_classes)``: ``name``'s training split ``(N, C, H, W)``, normalized as
    the registry loads it, split by one seeded permutation into ``N - held`` training and ``held`` validation
    images."""
    tr = load_split(name, True, data_dir)
    order = torch.randperm(tr.x.shape[0], generator=torch.Generator().manual_seed(SEED))
    val, kept = order[:held], order[held:]
    return tr.x[kept], tr.y[kept], tr.x[val], tr.y[val], get_spec(name, data_dir).num_classes


def mnist(data_dir: str | None = None) -> tuple:
    return heldout("mnist", data_dir)


def fashion_mnist(data_dir: str | None = None) -> tuple:
    return heldout("fashion_mnist", data_dir)
