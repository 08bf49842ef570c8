"""Dataset registry: MNIST, Fashion-MNIST, permuted MNIST, CIFAR-10 and CIFAR-100 as in-memory tensors.

Images are read with torchvision's own dataset classes (``download=False``; machines may have no internet)
and kept as normalized float tensors ``x: (N, C, H, W)`` with labels ``y: (N,)`` int64, so training and
metric batches are plain tensor slices. CIFAR is read from the pickled "python version" files with a
restricted unpickler (numpy arrays, lists, dicts only) and without checksum checks, because the copy on
these machines is a reconstruction whose checksums differ from the originals.

The data root comes from ``--data-dir`` or the ``GEODESIC_DATA_DIR`` environment variable.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from .errors import InputError

DATA_DIR_ENV = "GEODESIC_DATA_DIR"


class Split(NamedTuple):
    """One split of a dataset: ``x (N, C, H, W)`` float32 normalized, ``y (N,)`` int64."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset, and where its files are (relative to the data root)."""

    num_classes: int
    in_channels: int
    image_size: int
    files: tuple[str, ...]
    loader: Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False  # random crop + horizontal flip during training (CIFAR)
    check: Callable[[Path], None] | None = None  # validates one file before any work (truncated, corrupt, foreign)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: the argument if given, else ``$GEODESIC_DATA_DIR``, else ``./data``."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or "data"
    return Path(chosen).expanduser().resolve()


def _torchvision_idx(cls_name: str) -> Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]]:
    def load(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        import torchvision.datasets as tvd

        ds = getattr(tvd, cls_name)(str(root), train=train, download=False)
        return ds.data.unsqueeze(1), ds.targets.long()  # (N, 1, 28, 28) uint8, (N,)

    return load


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and builtin containers: a data file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR "python version" file: ``(x (N, 3, 32, 32) uint8, y (N,) int64)``.

    Raises:
        InputError: the file is truncated, not a pickle of arrays, or not a CIFAR batch (no ``data`` of
            N x 3072 bytes, or labels that do not match it).
    """
    fix = "copy it again from the source (see ../shared/data/README.md)"
    try:
        with open(path, "rb") as fh:
            entry = _ArrayUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    except Exception as exc:
        raise InputError(f"CIFAR file {path} is truncated or not a pickle of arrays ({type(exc).__name__}: "
                         f"{str(exc)[:120]}); {fix}") from exc
    labels = next((entry[k] for k in (b"labels", b"fine_labels") if isinstance(entry, dict) and k in entry), None)
    data = entry.get(b"data") if isinstance(entry, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or labels is None or len(labels) != data.shape[0]:
        raise InputError(f"CIFAR file {path} is not a CIFAR batch (a dict with 'data' uint8 (N, 3072) and N "
                         f"labels expected); {fix}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


_CHECKED: dict[tuple[str, int, int], bool] = {}


def _check_cifar(path: Path) -> None:
    """Read a CIFAR file once per (path, size, mtime): a truncated or foreign file fails before any work."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _CHECKED:
        read_cifar_batch(path)
        _CHECKED[key] = True


def _cifar(folder: str, train_files: tuple[str, ...], test_files: tuple[str, ...], label_key: bytes):
    def load(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name in train_files if train else test_files:
            x, y = read_cifar_batch(root / folder / name)
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    return load


def _check_idx(path: Path) -> None:
    """An idx file (MNIST family) is 4 magic bytes (0, 0, type 0x08 = uint8, ndim), ndim big-endian uint32
    sizes, then prod(sizes) bytes: anything else is truncated or corrupt."""
    with open(path, "rb") as fh:
        head = fh.read(4)
        ndim = head[3] if len(head) == 4 and head[:3] == b"\x00\x00\x08" else 0
        dims = np.frombuffer(fh.read(4 * ndim), dtype=">u4") if 0 < ndim <= 4 else np.array([])
    expected = 4 + 4 * ndim + int(np.prod(dims.astype(np.int64))) if len(dims) == ndim and ndim else -1
    if path.stat().st_size != expected:
        raise InputError(f"dataset file {path} is truncated or corrupt ({path.stat().st_size} bytes, its header "
                         f"says {expected if expected > 0 else 'nothing readable'}); copy it again from the source")


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_C10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(10, 1, 28, tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES), _torchvision_idx("MNIST"),
                         (0.1307,), (0.3081,), check=_check_idx),
    "fashion_mnist": DatasetSpec(10, 1, 28, tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
                                 _torchvision_idx("FashionMNIST"), (0.2860,), (0.3530,), check=_check_idx),
    "cifar10": DatasetSpec(10, 3, 32, tuple(f"cifar-10-batches-py/{f}" for f in (*_C10_TRAIN, "test_batch")),
                           _cifar("cifar-10-batches-py", _C10_TRAIN, ("test_batch",), b"labels"),
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment=True, check=_check_cifar),
    "cifar100": DatasetSpec(100, 3, 32, ("cifar-100-python/train", "cifar-100-python/test"),
                            _cifar("cifar-100-python", ("train",), ("test",), b"fine_labels"),
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), augment=True, check=_check_cifar),
}
# Permuted MNIST: task t applies one fixed pixel permutation (task 0 is plain MNIST), see `load_split`.
DATASETS["permuted_mnist"] = DATASETS["mnist"]
ALIASES = {"fashionmnist": "fashion_mnist", "fmnist": "fashion_mnist", "permuted-mnist": "permuted_mnist",
           "fashion-mnist": "fashion_mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def check_dataset_name(name: str) -> str:
    """Canonical dataset name; an unknown name raises an error that lists the valid ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(DATASETS))}")
    return key


def get_spec(name: str) -> DatasetSpec:
    return DATASETS[check_dataset_name(name)]


def check_data_files(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Check that every file of the dataset exists under the data root; return their paths.

    Raises:
        InputError: naming the missing files, where they were looked for, and how to point at the data.
    """
    spec = get_spec(name)
    root = resolve_data_dir(data_dir)
    paths = [root / f for f in spec.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(
            f"dataset {name!r} not found under data root {root} (missing: {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}). Datasets cannot be downloaded here: point at a folder "
            f"holding them in torchvision's layout with --data-dir or the {DATA_DIR_ENV} environment variable "
            f"(e.g. {DATA_DIR_ENV}=../shared/data)."
        )
    if spec.check is not None:  # a truncated, padded or foreign file is caught before any work
        for path in paths:
            spec.check(path)
    return paths


def permutation(task: int, seed: int = 0, size: int = 784) -> torch.Tensor:
    """The fixed pixel permutation of permuted-MNIST task ``task`` (identity for task 0), from one seed."""
    if task == 0:
        return torch.arange(size)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(task))
    return torch.randperm(size, generator=gen)


def load_split(name: str, train: bool, data_dir: str | os.PathLike | None = None, task: int = 0,
               permutation_seed: int = 0) -> Split:
    """Load one split as normalized tensors.

    Args:
        name: registered dataset name.
        train: training split if True, else the test split.
        data_dir: data root (see `resolve_data_dir`).
        task: permuted-MNIST task index (ignored for other datasets).
        permutation_seed: seed from which all permuted-MNIST permutations are drawn.

    Returns:
        ``Split(x (N, C, H, W) float32, y (N,) int64)``.
    """
    key = check_dataset_name(name)
    spec = DATASETS[key]
    check_data_files(key, data_dir)
    root = resolve_data_dir(data_dir)
    try:
        raw_x, y = spec.loader(root, train)
    except Exception as exc:  # truncated, corrupt or unreadable files
        raise InputError(f"could not read dataset {name!r} from {root}: {exc}. The files may be truncated or "
                         f"corrupt; replace them with intact copies.") from exc
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    x = (raw_x.float() / 255.0 - mean) / std
    if key == "permuted_mnist" and task:
        n = x.shape[0]
        x = x.reshape(n, -1)[:, permutation(task, permutation_seed)].reshape(n, 1, 28, 28)
    return Split(x.contiguous(), y.long())


def dataset_fingerprint(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 over the contents of every file the dataset reads (a data change changes it)."""
    h = hashlib.sha256()
    for path in check_data_files(name, data_dir):
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()
