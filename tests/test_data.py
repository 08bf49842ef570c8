import shutil
from pathlib import Path

import pytest
import torch

from geodesic_core import InputError, check_dataset_name, dataset_fingerprint, load_split
from geodesic_core.data import permutation


def test_mnist_and_fashion_load_from_shared_data(data_dir):
    for name in ("mnist", "fashion_mnist"):
        tr, te = load_split(name, True, data_dir), load_split(name, False, data_dir)
        assert tr.x.shape == (60000, 1, 28, 28) and te.x.shape == (10000, 1, 28, 28)
        assert tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64
        assert set(tr.y.unique().tolist()) == set(range(10))
        assert abs(float(tr.x.mean())) < 0.05 and abs(float(tr.x.std()) - 1) < 0.05  # normalized


def test_permuted_mnist_tasks_are_fixed_and_distinct(data_dir):
    base = load_split("mnist", False, data_dir)
    t0 = load_split("permuted_mnist", False, data_dir, task=0)
    t1 = load_split("permuted_mnist", False, data_dir, task=1)
    t1b = load_split("permuted_mnist", False, data_dir, task=1)
    assert torch.equal(t0.x, base.x)
    assert torch.equal(t1.x, t1b.x) and not torch.equal(t1.x, base.x)
    perm = permutation(1)
    assert torch.equal(t1.x.reshape(10000, -1), base.x.reshape(10000, -1)[:, perm])
    assert not torch.equal(permutation(1), permutation(2))
    assert not torch.equal(permutation(1, seed=0), permutation(1, seed=1))
    assert torch.equal(t1.y, base.y)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(InputError, match="valid datasets: .*mnist"):
        check_dataset_name("imagenet")


def test_missing_data_says_where_and_how(tmp_path):
    with pytest.raises(InputError, match="GEODESIC_DATA_DIR") as exc:
        load_split("mnist", True, tmp_path)
    assert str(tmp_path) in str(exc.value)
    with pytest.raises(InputError, match="cifar-10-batches-py"):
        load_split("cifar10", True, tmp_path)


@pytest.fixture
def mnist_copy(tmp_path, data_dir) -> Path:
    """A writable copy of MNIST's raw files under tmp_path (the shared data is read-only)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (Path(data_dir) / "MNIST" / "raw").iterdir():
        shutil.copy(f, raw / f.name)
    return raw


def test_truncated_dataset_file_is_a_clear_error(tmp_path, mnist_copy):
    p = mnist_copy / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_split("mnist", False, tmp_path)


def test_fingerprint_changes_with_content(tmp_path, data_dir, mnist_copy):
    a = dataset_fingerprint("mnist", tmp_path)
    assert a == dataset_fingerprint("mnist", data_dir)
    p = mnist_copy / "t10k-labels-idx1-ubyte"
    b = bytearray(p.read_bytes())
    b[-1] = (b[-1] + 1) % 10
    p.write_bytes(bytes(b))
    assert dataset_fingerprint("mnist", tmp_path) != a


def _write_fake_cifar(root: Path, n_per_batch: int = 20):
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n_per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    return folder


def test_cifar_python_format_loads_without_checksums(tmp_path):
    _write_fake_cifar(tmp_path)
    tr, te = load_split("cifar10", True, tmp_path), load_split("cifar10", False, tmp_path)
    assert tr.x.shape == (100, 3, 32, 32) and te.x.shape == (20, 3, 32, 32)


def test_cifar_file_that_would_run_code_is_refused(tmp_path):
    import os
    import pickle

    folder = _write_fake_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(InputError, match="refusing"):
        load_split("cifar10", False, tmp_path)
    assert not marker.exists()


def test_the_validation_loader_holds_out_training_images_for_choosing_settings(data_dir, monkeypatch):
    """`benchmarks/heldout.py`, named as a --dataset import path: 55,000 training images to learn from and
    5,000 other training images (never test images) to choose settings on, the same draw every time."""
    from geodesic_core.data import user_dataset

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    data = user_dataset("heldout:mnist", data_dir)
    full = load_split("mnist", True, data_dir)
    assert data.train.x.shape[0] == 55_000 and data.test.x.shape[0] == 5_000 and data.spec.num_classes == 10
    pool = {hash(x.numpy().tobytes()): int(y) for x, y in zip(full.x, full.y)}
    keys = [hash(x.numpy().tobytes()) for x in data.test.x]
    assert all(k in pool for k in keys) and [pool[k] for k in keys] == data.test.y.tolist()
    train_keys = {hash(x.numpy().tobytes()) for x in data.train.x[:5000]}
    assert not train_keys & set(keys)  # disjoint from what the run learns from
    import heldout

    assert torch.equal(heldout.mnist(data_dir)[2], data.test.x)  # the same draw again
