import os
import pickle

import pytest
import torch

from geodesic_core import InputError, build_model, flat_params, load_checkpoint, load_model, save_checkpoint

META = {"model": "lenet300", "num_classes": 10, "in_channels": 1, "image_size": 28, "dataset": "mnist"}


def _saved(tmp_path, name="net.pt", model=None):
    model = model or build_model("lenet300", 10, 1, 28)
    path = tmp_path / name
    save_checkpoint(path, model, META)
    return path, model


def test_roundtrip_is_exact_and_atomic(tmp_path):
    path, model = _saved(tmp_path)
    loaded, meta = load_model(path, expect_model="lenet300", expect_num_classes=10)
    assert torch.equal(flat_params(loaded), flat_params(model))
    assert meta["dataset"] == "mnist"
    assert [p.name for p in tmp_path.iterdir()] == ["net.pt"]  # no temporary file left behind


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path, model = _saved(tmp_path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, build_model("lenet300", 10, 1, 28), META)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net.pt"]


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    path, _ = _saved(tmp_path)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match="truncated, corrupt"):
        load_checkpoint(trunc)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(InputError):
        load_checkpoint(text)
    plain = tmp_path / "plain.pt"
    torch.save(build_model("lenet300", 10, 1, 28).state_dict(), plain)
    with pytest.raises(InputError, match="not a checkpoint of this project"):
        load_checkpoint(plain)


def test_nonfinite_weights_are_rejected(tmp_path):
    model = build_model("lenet300", 10, 1, 28)
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN/Inf"):
        save_checkpoint(tmp_path / "x.pt", model, META)
    path, _ = _saved(tmp_path)
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["1.weight"][0, 0] = float("nan")
    torch.save(blob, path)
    with pytest.raises(InputError, match="content hash|NaN"):
        load_checkpoint(path)


def test_content_hash_detects_silent_corruption(tmp_path):
    path, _ = _saved(tmp_path)
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["1.weight"][0, 0] += 1.0
    torch.save(blob, path)
    with pytest.raises(InputError, match="content hash"):
        load_checkpoint(path)


def test_other_architecture_or_class_count(tmp_path):
    path, _ = _saved(tmp_path)
    with pytest.raises(InputError, match="'lenet300' network but 'cnn'"):
        load_model(path, expect_model="cnn")
    with pytest.raises(InputError, match="classes"):
        load_model(path, expect_num_classes=100)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "geodesic-checkpoint/1", "state_dict": Evil()}, fh)
    with pytest.raises(InputError, match="could not be loaded safely"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_finished_tasks_checkpoint_is_reused_and_a_damaged_one_is_not(tmp_path):
    """`tasks.common.finished`: the result stored with a task's checkpoint comes back (a run killed after the
    write resumes without recomputing); a truncated file or one without a result is not taken for finished."""
    from tasks.common import finished, save_result

    model = build_model("lenet300", 10, 1, 28)
    out = tmp_path / "geodesic-abc.pt"
    assert finished(out) is None
    ref = save_result(out, model, {"model": "lenet300", "num_classes": 10, "in_channels": 1, "image_size": 28},
                      {"test_accuracy": 97.5, "steps": 12, "rows": [{"step": 0, "distance": float("nan")}]})
    again = finished(out)
    assert again["sha256"] == ref["sha256"] and again["steps"] == 12 and again["test_accuracy"] == 97.5
    out.write_bytes(out.read_bytes()[:1000])
    assert finished(out) is None
    save_checkpoint(out, model, {"model": "lenet300", "num_classes": 10, "in_channels": 1, "image_size": 28})
    assert finished(out) is None  # a checkpoint, but no task recorded a result in it
