"""Bad input gets a clear error before any work, through the CLI (exit status 2, a message naming the problem,
nothing written) and through each flow's parameter validation (what a deployment run from the UI or the API
goes through)."""

from __future__ import annotations

import pytest

from flows.cli import main

# (flow, CLI options, parameters for the flow's validation, a fragment of the message)
CASES = [
    ("sparsify", ["--sparsity", "0"], {"sparsity": [0]}, "between 0 and 100"),
    ("sparsify", ["--sparsity", "100"], {"sparsity": [100]}, "between 0 and 100"),
    ("sparsify", ["--sparsity", "-5"], {"sparsity": [-5]}, "between 0 and 100"),
    ("sparsify", ["--sparsity", "90", "--sparsity", "90"], {"sparsity": [90, 90]}, "must not repeat"),
    ("sparsify", ["--sparsity", "ninety"], {"sparsity": ["ninety"]}, "valid number"),
    ("sparsify", ["--model", "resnet18"], {"model": "resnet18"}, "valid models: cnn, lenet300"),
    ("sparsify", ["--dataset", "svhn"], {"dataset": "svhn"}, "valid datasets:"),
    ("sparsify", ["--geo.solver", "newton"], {"geo": {"solver": "newton"}}, "'exact' or 'cg'"),
    ("sparsify", ["--geo.eta", "0"], {"geo": {"eta": 0}}, "greater than 0"),
    ("sparsify", ["--geo.eps", "-1"], {"geo": {"eps": -1}}, "greater than 0"),
    ("sparsify", ["--geo.beta", "0"], {"geo": {"beta": 0}}, "greater than 0"),
    ("sparsify", ["--refresh-every", "0"], {"refresh_every": 0}, "greater than 0"),
    ("sparsify", ["--geo.max-steps", "0"], {"geo": {"max_steps": 0}}, "greater than 0"),
    ("sparsify", ["--train.epochs", "0"], {"train": {"epochs": 0}}, "greater than 0"),
    ("sparsify", ["--train.batch-size", "-8"], {"train": {"batch_size": -8}}, "greater than 0"),
    ("sparsify", ["--geo.metric-batch", "0"], {"geo": {"metric_batch": 0}}, "greater than 0"),
    ("sparsify", ["--geo.distill-temperature", "-1"], {"geo": {"distill_temperature": -1}}, "greater than or equal to 0"),
    ("sparsify", ["--geo.distill-radius", "-1"], {"geo": {"distill_radius": -1}}, "greater than or equal to 0"),
    ("sparsify", ["--finetune.schedule", "linear"], {"finetune": {"schedule": "linear"}}, "'constant' or 'cosine'"),
    ("continual", ["--tasks", "1"], {"tasks": 1}, "at least 2 tasks"),
    ("continual", ["--scenario", "split-cifar"], {"scenario": "split-cifar"}, "valid scenarios"),
    ("continual", ["--methods", "foo"], {"methods": ["foo"]}, "valid methods"),
    ("continual", ["--model", "mlp9"], {"model": "mlp9"}, "valid models"),
    ("continual", ["--train.epochs", "0"], {"train": {"epochs": 0}}, "greater than 0"),
    ("continual", ["--geo.eta", "-0.1"], {"geo": {"eta": -0.1}}, "greater than 0"),
    ("connect", ["--model", "resnet18"], {"model": "resnet18"}, "valid models"),
    ("connect", ["--checkpoint-a", "a.pt"], {"checkpoint_a": "a.pt"}, "both"),
    ("connect", ["--seed-b", "0"], {"seed_b": 0}, "different seeds"),
    ("connect", ["--geo.max-steps", "0"], {"geo": {"max_steps": 0}}, "greater than 0"),
    ("connect", ["--max-segments", "0"], {"max_segments": 0}, "greater than 0"),
    ("connect", ["--relax-epochs", "-1"], {"relax_epochs": -1}, "greater than or equal to 0"),
    ("connect", ["--relax-lr", "0"], {"relax_lr": 0}, "greater than 0"),
    ("connect", ["--relax-nodes", "0"], {"relax_nodes": 0}, "greater than 0"),
    ("connect", ["--relax-temperature", "-1"], {"relax_temperature": -1}, "greater than or equal to 0"),
    ("connect", ["--bezier-distill-temperature", "-2"], {"bezier_distill_temperature": -2},
     "greater than or equal to 0"),
    ("connect", ["--relax-temperature", "inf"], {"relax_temperature": float("inf")}, "finite number"),
    ("connect", ["--align", "weights"], {"align": "weights"}, "'activations' or 'none'"),
    ("continual", ["--align", "weights"], {"align": "weights"}, "'activations' or 'none'"),
    # architecture options (width, depth) and the structured filter count at a width
    ("sparsify", ["--width", "0"], {"width": 0}, "greater than 0"),
    ("sparsify", ["--width", "0.5"], {"width": 0.5}, "has no width option"),
    ("sparsify", ["--model", "vgg11", "--dataset", "cifar10", "--width", "0.001"],
     {"model": "vgg11", "dataset": "cifar10", "width": 0.001}, "without any"),
    ("sparsify", ["--model", "vgg16", "--dataset", "cifar10", "--depth", "20"],
     {"model": "vgg16", "dataset": "cifar10", "depth": 20}, "has no depth option"),
    ("sparsify", ["--model", "vgg11", "--dataset", "cifar10", "--width", "0.25", "--structured", "--n-filters", "16"],
     {"model": "vgg11", "dataset": "cifar10", "width": 0.25, "structured": True, "n_filters": 16},
     "between 1 and 15"),
    ("sparsify", ["--model", "vgg11", "--dataset", "cifar10", "--structured", "--layer", "classifier"],
     {"model": "vgg11", "dataset": "cifar10", "structured": True, "layer": "classifier"}, "not a conv layer"),
    ("connect", ["--model", "resnet164", "--dataset", "cifar10", "--depth", "21"],
     {"model": "resnet164", "dataset": "cifar10", "depth": 21}, "depth must be 9n"),
]
IDS = [f"{f}:{' '.join(a)}" for f, a, _, _ in CASES]


def _flow(name: str):
    import importlib

    return getattr(importlib.import_module(f"flows.{name}"), f"{name}_flow")


@pytest.mark.parametrize("flow,args,params,match", CASES, ids=IDS)
def test_cli_refuses_bad_input_before_any_work(tmp_path, monkeypatch, data_dir, capsys, flow, args, params,
                                                match):
    monkeypatch.chdir(tmp_path)
    try:
        code = main([flow, "--data-dir", data_dir, *args])
    except SystemExit as exc:  # argparse's own refusals (a choice outside the list)
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    choices = ("'exact' or 'cg'", "'activations' or 'none'", "'constant' or 'cosine'")  # argparse refuses them first
    assert match in err or (match in choices and "invalid choice" in err), err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("flow,args,params,match", CASES, ids=IDS)
def test_flow_parameter_validation_refuses_bad_input(flow, args, params, match):  # noqa: ARG001
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match=match.replace("(", r"\(")):
        _flow(flow).validate_parameters({"params": params})


def test_unreachable_tracking_server_fails_fast_and_writes_nothing(tmp_path, monkeypatch, data_dir, capsys):
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    assert main(["sparsify", "--data-dir", data_dir]) == 2
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} cannot be reached" in err and "MLFLOW_TRACKING_URI" in err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("damage", ["truncate", "not-a-pickle", "code", "not-cifar"])
def test_corrupt_cifar_files_are_refused_before_any_work(tmp_path, monkeypatch, data_dir, capsys, damage):
    import pickle
    import shutil
    from pathlib import Path

    folder = tmp_path / "data" / "cifar-10-batches-py"
    shutil.copytree(Path(data_dir) / "cifar-10-batches-py", folder)
    f = folder / "data_batch_3"
    blob = f.read_bytes()

    class Evil:  # a pickle that would run code when loaded
        def __reduce__(self):
            return (print, ("pwned",))

    f.write_bytes({"truncate": lambda: blob[: len(blob) // 2], "not-a-pickle": lambda: b"hello" * 100,
                   "code": lambda: pickle.dumps(Evil()),
                   "not-cifar": lambda: pickle.dumps({b"data": [1, 2, 3], b"labels": [0]})}[damage]())
    monkeypatch.chdir(tmp_path)
    code = main(["sparsify", "--model", "vgg11", "--dataset", "cifar10", "--width", "0.125",
                 "--data-dir", str(tmp_path / "data")])
    assert code == 2
    err = capsys.readouterr().err
    assert "data_batch_3" in err and ("truncated or not a pickle of arrays" in err or "not a CIFAR batch" in err), err
    assert "pwned" not in err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("damage", ["truncate", "pad", "header"])
def test_corrupt_dataset_files_are_refused_before_any_work(tmp_path, monkeypatch, data_dir, capsys, damage):
    import shutil
    from pathlib import Path

    raw = tmp_path / "data" / "MNIST" / "raw"
    shutil.copytree(Path(data_dir) / "MNIST" / "raw", raw)
    f = raw / "train-labels-idx1-ubyte"
    blob = f.read_bytes()
    f.write_bytes({"truncate": blob[:-100], "pad": blob + b"\0" * 10, "header": b"\x01\x02" + blob[2:]}[damage])
    monkeypatch.chdir(tmp_path)
    assert main(["sparsify", "--data-dir", str(tmp_path / "data")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_parameters_cannot_point_outside_the_roots(tmp_path, monkeypatch, data_dir):
    """A deployment's parameters come from whoever can reach the UI: a checkpoint outside the data and output
    roots (directly, by ``..`` or through a symlink) and a data_dir outside the configured root are refused
    before any work."""
    from geodesic_core import InputError
    from flows.common import confine_paths

    out = tmp_path / "outputs"
    out.mkdir()
    monkeypatch.setenv("GEODESIC_OUTPUT_DIR", str(out))
    monkeypatch.setenv("GEODESIC_DATA_DIR", data_dir)
    monkeypatch.delenv("GEODESIC_ALLOWED_ROOTS", raising=False)
    secret = tmp_path / "elsewhere" / "net.pt"
    secret.parent.mkdir()
    secret.write_bytes(b"x")
    (out / "link.pt").symlink_to(secret)
    assert confine_paths(None, [str(out / "mine.pt")]) == str(__import__("pathlib").Path(data_dir).resolve())
    for ck in (str(secret), str(out / ".." / "elsewhere" / "net.pt"), str(out / "link.pt"), "/etc/passwd"):
        with pytest.raises(InputError, match="outside the folders a flow may read"):
            confine_paths(None, [ck])
    with pytest.raises(InputError, match="outside the configured data root"):
        confine_paths(str(tmp_path), [])
    monkeypatch.setenv("GEODESIC_ALLOWED_ROOTS", str(secret.parent))
    confine_paths(None, [str(secret)])
    # and through a flow: the run fails on the path, before the data is even fingerprinted
    monkeypatch.setattr("tasks.data.dataset_fingerprint", lambda *a: pytest.fail("work started"))
    from flows.sparsify import sparsify_flow
    from geodesic_core.sparsify import SparsifyConfig

    monkeypatch.delenv("GEODESIC_ALLOWED_ROOTS")
    with pytest.raises(InputError, match="outside the folders"):
        sparsify_flow.fn(SparsifyConfig(checkpoint="/etc/passwd"))


@pytest.mark.parametrize("problem,match", [
    ("missing", "does not exist"),
    ("truncated", "truncated, corrupt"),
    ("not a checkpoint", "not a checkpoint of this project"),
    ("nan", "NaN"),
    ("other class count", "100 classes"),
])
def test_a_bad_checkpoint_is_refused_before_any_work(tmp_path, monkeypatch, data_dir, capsys, problem, match):
    import torch

    from geodesic_core import build_model, save_checkpoint

    meta = {"model": "lenet300", "num_classes": 10, "in_channels": 1, "image_size": 28, "test_accuracy": 98.0}
    ck = tmp_path / "net.pt"
    model = build_model("lenet300", 10, 1, 28)
    if problem == "truncated":
        save_checkpoint(ck, model, meta)
        ck.write_bytes(ck.read_bytes()[:2000])
    elif problem == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, ck)
    elif problem == "nan":  # written by something else than this project (which refuses to save NaN)
        save_checkpoint(ck, model, meta)
        blob = torch.load(ck, weights_only=True)
        blob["state_dict"]["1.weight"][0, 0] = float("nan")
        from geodesic_core.checkpoint import state_hash

        blob["sha256"] = state_hash(blob["state_dict"])  # a consistent file: only the values are bad
        torch.save(blob, ck)
    elif problem == "other class count":
        save_checkpoint(ck, build_model("lenet300", 100, 1, 28), {**meta, "num_classes": 100})
    monkeypatch.chdir(tmp_path)
    for argv in (["sparsify", "--checkpoint", str(ck)], ["connect", "--checkpoint-a", str(ck), "--checkpoint-b", str(ck)]):
        assert main([*argv[:1], "--data-dir", data_dir, *argv[1:]]) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()
