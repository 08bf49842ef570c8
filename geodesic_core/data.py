"""Dataset registry: MNIST, Fashion-MNIST, permuted MNIST, CIFAR-10 and CIFAR-100 as in-memory tensors.

Images are read with torchvision's own dataset classes (``download=False``; machines may have no internet)
and kept as normalized float tensors ``x: (N, C, H, W)`` with labels ``y: (N,)`` int64, so training and
metric batches are plain tensor slices. CIFAR is read from the pickled "python version" files with a
restricted unpickler (numpy arrays, lists, dicts only) and without checksum checks, because the copy on
these machines is a reconstruction whose checksums differ from the originals.

The data root comes from ``--data-dir`` or the ``GEODESIC_DATA_DIR`` environment variable.

Wherever a dataset name is accepted, an import path ``package.module:callable`` to the user's own data is too
(see `user_dataset` for what the callable returns and what is checked before any work).
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
from .plugins import accepts, check_signature, colon_hint, is_import_path, load_callable, source_hash

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
    sample_shape: tuple[int, ...] | None = None  # one input's shape where it is not (C, H, W) images (user data)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input: ``(C, H, W)``, or the user data's own (e.g. ``(D,)`` for feature vectors)."""
        return self.sample_shape or (self.in_channels, self.image_size, self.image_size)


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
    """Canonical dataset name, or an import path to the user's data loader (checked to import and to be
    callable without arguments); an unknown name raises an error that lists the valid ones."""
    if not isinstance(name, str) or not name:
        raise InputError(f"a dataset name is a string, got {name!r}; valid datasets: {', '.join(sorted(DATASETS))}")
    if is_import_path(name):
        _user_loader(name)
        return name
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(DATASETS))}, or an import "
                         f"path module:callable to your own data (e.g. mypkg.data:load){colon_hint(name)}")
    return key


def get_spec(name: str, data_dir: str | os.PathLike | None = None) -> DatasetSpec:
    """The dataset's `DatasetSpec`; for the user's data (an import path) this loads and checks it once."""
    if is_import_path(name):
        return user_dataset(name, data_dir).spec
    return DATASETS[check_dataset_name(name)]


# --- the user's own data --------------------------------------------------------------------------------------

_LOADER_SIGNATURE = ("a callable taking no arguments (or data_dir=) and returning (x_train, y_train, x_test, y_test, "
                     "num_classes), a dict with those keys, or (train Dataset, test Dataset[, num_classes])")


def _user_loader(path: str) -> Callable:
    fn = load_callable(path, "dataset")
    check_signature(fn, path, "dataset", _LOADER_SIGNATURE, **({"data_dir": "."} if accepts(fn, "data_dir") else {}))
    return fn


@dataclass(frozen=True)
class UserData:
    """The user's data, loaded by an import path and checked: both splits, its spec and its fingerprint."""

    train: Split
    test: Split
    spec: DatasetSpec
    fingerprint: str


def _as_tensor(v, what: str, path: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    raise InputError(f"dataset {path!r}: {what} is a {type(v).__name__}; expected a torch tensor or a numpy array "
                     f"({_LOADER_SIGNATURE})")


def _materialize(ds, what: str, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (input, label) pair of a ``torch.utils.data.Dataset``, stacked."""
    try:
        n = len(ds)
        pairs = [ds[i] for i in range(n)]
        xs = torch.stack([_as_tensor(p[0], f"{what} input", path) for p in pairs])
        ys = torch.tensor([int(p[1]) for p in pairs])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"dataset {path!r}: could not read the {what} Dataset as (input tensor, int label) pairs: "
                         f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    return xs, ys


def _unpack(out, path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    from torch.utils.data import Dataset

    if isinstance(out, dict):
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test", "num_classes") if k not in out]
        if missing:
            raise InputError(f"dataset {path!r} returned a dict without {missing}; expected {_LOADER_SIGNATURE}")
        out = (out["x_train"], out["y_train"], out["x_test"], out["y_test"], out["num_classes"])
    if isinstance(out, (tuple, list)) and len(out) in (2, 3) and all(isinstance(d, Dataset) for d in out[:2]):
        n = out[2] if len(out) == 3 else len(getattr(out[0], "classes", ()) or ()) or None
        if n is None:
            raise InputError(f"dataset {path!r} returned two Datasets without a class count and the train Dataset "
                             f"has no .classes; return (train, test, num_classes)")
        (xa, ya), (xb, yb) = _materialize(out[0], "train", path), _materialize(out[1], "test", path)
        return xa, ya, xb, yb, n
    if not (isinstance(out, (tuple, list)) and len(out) == 5):
        raise InputError(f"dataset {path!r} returned a {type(out).__name__}"
                         f"{f' of {len(out)} items' if isinstance(out, (tuple, list)) else ''}; expected "
                         f"{_LOADER_SIGNATURE}")
    xa, ya, xb, yb, n = out
    return (_as_tensor(xa, "x_train", path), _as_tensor(ya, "y_train", path), _as_tensor(xb, "x_test", path),
            _as_tensor(yb, "y_test", path), n)


def _check_split(x: torch.Tensor, y: torch.Tensor, n: int, which: str, path: str) -> Split:
    if x.ndim < 2 or x.shape[0] == 0:
        raise InputError(f"dataset {path!r}: {which} inputs have shape {tuple(x.shape)}; expected (N, C, H, W), "
                         f"(N, H, W) or (N, D) with N > 0")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"dataset {path!r}: {which} labels have shape {tuple(y.shape)} for {x.shape[0]} inputs; "
                         f"expected ({x.shape[0]},)")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"dataset {path!r}: {which} labels are {y.dtype}; expected integer class indices")
    if not x.dtype.is_floating_point:
        raise InputError(f"dataset {path!r}: {which} inputs are {x.dtype}; expected floating-point inputs, "
                         f"normalized as the model should see them")
    bad = (y < 0) | (y >= n)
    if bad.any():
        raise InputError(f"dataset {path!r}: {which} labels must lie in 0..{n - 1} for num_classes = {n}, found "
                         f"{int(bad.sum())} outside (min {int(y.min())}, max {int(y.max())}); fix the labels or "
                         f"the class count")
    finite = torch.isfinite(x)
    if not finite.all():
        raise InputError(f"dataset {path!r}: {which} inputs hold {int((~finite).sum())} NaN or infinite values "
                         f"(in {int((~finite.reshape(x.shape[0], -1).all(1)).sum())} examples); clean or drop them")
    if x.ndim == 3:  # (N, H, W): one channel
        x = x.unsqueeze(1)
    return Split(x.float().contiguous(), y.long().contiguous())


_USER: dict[tuple, UserData] = {}


def user_dataset(path: str, data_dir: str | os.PathLike | None = None) -> UserData:
    """Load and check the user's data behind an import path (once per process, per source and data root).

    The callable takes no arguments (or ``data_dir``, given the resolved data root) and returns
    ``(x_train, y_train, x_test, y_test, num_classes)`` (tensors or numpy arrays), a dict with those keys, or
    ``(train Dataset, test Dataset[, num_classes])`` of (input, label) pairs. Inputs are taken as given (no
    normalization): floating point, shape ``(N, C, H, W)``, ``(N, H, W)`` (one channel added) or ``(N, D)``;
    labels integer class indices in ``0..num_classes - 1``.

    Raises:
        InputError: before any work, naming the path: the loader raises, returns another structure, labels
            outside the class count, NaN or infinite inputs, train and test inputs of different shapes.
    """
    fn = _user_loader(path)
    key = (path, source_hash(path), str(resolve_data_dir(data_dir)))
    if key in _USER:
        return _USER[key]
    try:
        out = fn(data_dir=str(resolve_data_dir(data_dir))) if accepts(fn, "data_dir") else fn()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"dataset {path!r} raised {type(exc).__name__} while loading: {str(exc)[:200]}") from exc
    xa, ya, xb, yb, n = _unpack(out, path)
    if isinstance(n, torch.Tensor):
        n = int(n)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 2:
        raise InputError(f"dataset {path!r}: num_classes must be an integer >= 2, got {n!r}")
    n = int(n)
    train, test = _check_split(xa, ya, n, "train", path), _check_split(xb, yb, n, "test", path)
    if train.x.shape[1:] != test.x.shape[1:]:
        raise InputError(f"dataset {path!r}: train inputs are {tuple(train.x.shape[1:])} per example but test "
                         f"inputs {tuple(test.x.shape[1:])}; they must match")
    shape = tuple(train.x.shape[1:])
    images = len(shape) == 3 and shape[1] == shape[2]
    spec = DatasetSpec(n, shape[0], shape[-1] if images else 1, (), lambda root, train: (None, None), (0.0,), (1.0,),
                       sample_shape=None if images else shape)
    h = hashlib.sha256(key[1].encode())
    for t in (*train, *test):
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    data = UserData(train, test, spec, h.hexdigest())
    _USER[key] = data
    return data


def check_data_files(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Check that every file of the dataset exists under the data root; return their paths.

    Raises:
        InputError: naming the missing files, where they were looked for, and how to point at the data.
    """
    if is_import_path(name):  # the user's data: loaded and checked (labels, NaN, shapes), no files
        user_dataset(name, data_dir)
        return []
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
        ``Split(x (N, C, H, W) float32, y (N,) int64)`` (the user's data: its inputs as given, see `user_dataset`).
    """
    if is_import_path(name):
        data = user_dataset(name, data_dir)
        return data.train if train else data.test
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
    """SHA-256 over the contents of every file the dataset reads (a data change changes it); for the user's data,
    over the loader's source and the tensors it returned."""
    if is_import_path(name):
        return user_dataset(name, data_dir).fingerprint
    h = hashlib.sha256()
    for path in check_data_files(name, data_dir):
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()
