"""The user's own networks and data by import path, torchvision's models by name, the Python API, compact export,
and the bad-input errors of each."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from flows.cli import main
from geodesic_core import InputError, build_model, check_dataset_name, check_model_name, param_slices, save_checkpoint
from geodesic_core.connect import ConnectConfig
from geodesic_core.sparsify import SparsifyConfig
from geodesic_core.data import dataset_fingerprint, get_spec, load_split
from geodesic_core.export import encode, decode, export, load_exported_model
from geodesic_core.models import check_model_output
from geodesic_core.sparsify import oneshot_prune

ROOT = Path(__file__).resolve().parents[1]

USER_CODE = '''
import numpy as np
import torch
from torch import nn

def mlp(num_classes, in_channels, image_size, hidden=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))

def vector_mlp(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Linear(in_channels, 12), nn.ReLU(), nn.Linear(12, num_classes))

def five_outputs(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 5))

def no_arguments():
    return nn.Linear(2, 2)

def not_a_module(num_classes, in_channels, image_size):
    return "a string"

NOT_CALLABLE = 3

def _blobs(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, d, generator=g) * 0.5 + torch.nn.functional.one_hot(y, d).float() * 2
    return x, y

def images():
    x, y = _blobs(600, 16, 0)
    return x[:500].reshape(-1, 1, 4, 4), y[:500], x[500:].reshape(-1, 1, 4, 4), y[500:], 3

def as_dict():
    xa, ya, xb, yb, n = images()
    return {"x_train": xa.numpy(), "y_train": ya.numpy(), "x_test": xb, "y_test": yb, "num_classes": n}

def vectors(data_dir=None):
    x, y = _blobs(400, 16, 1)
    return x[:300], y[:300], x[300:], y[300:], 3

class Pairs(torch.utils.data.Dataset):
    classes = ["a", "b", "c"]
    def __init__(self, n):
        self.x, self.y = _blobs(n, 16, 2)
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        return self.x[i].reshape(1, 4, 4), int(self.y[i])

def datasets():
    return Pairs(50), Pairs(20)

def labels_too_large():
    xa, ya, xb, yb, n = images()
    ya[7] = 3
    return xa, ya, xb, yb, n

def nan_inputs():
    xa, ya, xb, yb, n = images()
    xb[2, 0, 1, 1] = float("nan")
    return xa, ya, xb, yb, n

def wrong_structure():
    return [1, 2, 3]

def raises():
    raise RuntimeError("the data server is down")

def two_tasks():
    from geodesic_core.scenarios import Scenario
    return Scenario("two_tasks", "two of my tasks", f"{__name__}:mlp", 3, 1, 4, (f"{__name__}:images", f"{__name__}:datasets"),
                    max_tasks=2, default_tasks=2)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's own builders and loaders in a fresh folder on sys.path; its name is unique."""
    name = f"user_code_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_CODE)
    (tmp_path / f"{name}_broken.py").write_text("import torch\nraise ValueError('a typo in the user module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_import_paths_build_models_and_load_data(user_module):
    m = user_module
    assert check_model_name(f"{m}:mlp") == f"{m}:mlp" and check_dataset_name(f"{m}:images") == f"{m}:images"
    net = build_model(f"{m}:mlp", 3, 1, 4, seed=0)
    assert torch.equal(net[1].weight, build_model(f"{m}:mlp", 3, 1, 4, seed=0)[1].weight)  # seeded
    spec = get_spec(f"{m}:images")
    assert (spec.num_classes, spec.input_shape) == (3, (1, 4, 4))
    train = load_split(f"{m}:images", True)
    assert train.x.shape == (500, 1, 4, 4) and train.y.dtype == torch.int64
    # the three return forms give the same kind of splits; feature vectors keep their shape (N, D)
    assert load_split(f"{m}:as_dict", False).x.shape == (100, 1, 4, 4)
    assert load_split(f"{m}:datasets", True).x.shape == (50, 1, 4, 4) and get_spec(f"{m}:datasets").num_classes == 3
    assert get_spec(f"{m}:vectors").input_shape == (16,)
    check_model_output(f"{m}:vector_mlp", 3, (16,))
    # configs accept them; the run form's schema takes a registered name or an import path
    cfg = SparsifyConfig(model=f"{m}:mlp", dataset=f"{m}:images")
    assert cfg.model == f"{m}:mlp"
    schema = SparsifyConfig.model_json_schema()["properties"]["model"]
    assert {"lenet300", "vgg16"} <= set(schema["anyOf"][0]["enum"]) and "pattern" in schema["anyOf"][1]
    assert ConnectConfig(model=f"{m}:vector_mlp", dataset=f"{m}:vectors").dataset == f"{m}:vectors"
    with pytest.raises(ValueError, match="does not run on inputs of shape"):  # an image network on vectors
        ConnectConfig(model="cnn", dataset=f"{m}:vectors")


def test_editing_the_users_file_changes_the_code_version_and_fingerprint(user_module, tmp_path):
    from tasks.common import code_version

    m = user_module
    before = code_version(f"{m}:mlp"), dataset_fingerprint(f"{m}:images")
    assert code_version("lenet300", "mnist") == code_version() != before[0]
    path = tmp_path / f"{m}.py"
    path.write_text(USER_CODE + "\n# an edit\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10 ** 9))
    assert code_version(f"{m}:mlp") != before[0]
    assert dataset_fingerprint(f"{m}:images") != before[1]


@pytest.mark.parametrize("name,match", [
    ("{m}.mlp", "separate the module from the callable with a colon: {m}:mlp"),  # the colon forgotten
    ("{m}:mlp:x", "not a valid import path"),
    ("{m}_broken:mlp", "raised ValueError: a typo in the user module"),
    ("no_such_module_xyz:build", "no module named 'no_such_module_xyz'"),
    ("{m}:missing", "has no attribute 'missing'"),
    ("{m}:NOT_CALLABLE", "not a callable"),
    ("{m}:no_arguments", "cannot be called as no_arguments(num_classes=..., in_channels=..., image_size=...)"),
    ("{m}:five_outputs", "returned (2, 5) for a batch of 2 inputs of shape (1, 4, 4); expected logits of shape (2, 3)"),
    ("{m}:not_a_module", "not an nn.Module"),
    ("torchvision:resnet_9000", "unknown torchvision model"),
])
def test_bad_models_are_clear_errors_before_any_work(user_module, tmp_path, monkeypatch, capsys, name, match):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEODESIC_OUTPUT_DIR", str(tmp_path / "outputs"))
    name, match = name.format(m=user_module), match.format(m=user_module)
    assert main(["sparsify", "--model", name, "--dataset", f"{user_module}:images", "--sparsity", "90"]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("loader,match", [
    ("labels_too_large", "labels must lie in 0..2 for num_classes = 3, found 1 outside"),
    ("nan_inputs", "test inputs hold 1 NaN or infinite values"),
    ("wrong_structure", "returned a list of 3 items"),
    ("raises", "raised RuntimeError while loading: the data server is down"),
    ("mlp", "cannot be called as mlp() (missing a required argument"),
])
def test_bad_data_is_a_clear_error_before_any_work(user_module, tmp_path, monkeypatch, capsys, loader, match):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEODESIC_OUTPUT_DIR", str(tmp_path / "outputs"))
    assert main(["sparsify", "--model", f"{user_module}:mlp", "--dataset", f"{user_module}:{loader}"]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_torchvision_models_are_adapted_to_the_data(shape, classes):
    net = build_model("torchvision:resnet18", classes, shape[0], shape[-1], seed=0)
    assert net.conv1.in_channels == shape[0] and net.conv1.stride == (1, 1) and isinstance(net.maxpool, nn.Identity)
    check_model_output("torchvision:resnet18", classes, shape)
    assert check_model_output("torchvision:mobilenet_v3_small", classes, shape) is None
    with pytest.raises(ValueError, match="no width option"):
        SparsifyConfig(model="torchvision:resnet18", dataset="cifar10", width=0.5)


def test_a_flow_runs_on_the_users_model_and_data_and_reruns_after_an_edit(harness, workdir, user_module, capsys):
    args = ["sparsify", "--model", f"{user_module}:mlp", "--dataset", f"{user_module}:images", "--sparsity", "80",
            "--schedule", "cubic", "--stages", "1", "--geo.max-steps", "6", "--train.epochs", "2", "--no-finetune.equal-time",
            "--finetune.epochs", "1", "--progress", "off"]
    assert main(args) == 0
    assert "geodesic" in capsys.readouterr().out
    trained = lambda: sorted((workdir / "outputs" / "checkpoints").glob("trained-*.pt"))  # noqa: E731
    assert len(trained()) == 1
    assert main(args) == 0 and len(trained()) == 1  # cached
    path = workdir / f"{user_module}.py"  # the same tmp_path
    path.write_text(USER_CODE.replace("hidden=16", "hidden=17"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10 ** 9))
    assert main(args) == 0 and len(trained()) == 2  # the edit recomputed what depends on the model


def test_a_sequence_of_the_users_tasks_is_learned_by_the_continual_flow(harness, workdir, user_module, capsys):
    assert main(["continual", "--scenario", f"{user_module}:two_tasks", "--methods", "geodesic", "--methods", "ewc",
                 "--train.epochs", "2", "--geo.max-steps", "5", "--eval-every", "5", "--fisher-samples", "20",
                 "--linear-points", "3", "--progress", "off"]) == 0
    out = capsys.readouterr().out
    assert "geodesic" in out and "ewc" in out
    assert main(["continual", "--scenario", f"{user_module}:images"]) == 2  # a loader is not a scenario
    assert "expected a geodesic_core.scenarios.Scenario" in capsys.readouterr().err


def _sparse_lenet(p: float, seed: int = 0):
    model = build_model("lenet300", 10, 1, 28, seed=seed)
    oneshot_prune(model, param_slices(model), p)
    meta = dict(model="lenet300", num_classes=10, in_channels=1, image_size=28, dataset="mnist")
    return model, meta


@pytest.mark.parametrize("p", [90.0, 99.0])
def test_export_round_trip_is_smaller_and_gives_the_same_outputs(tmp_path, p):
    model, meta = _sparse_lenet(p)
    report = export(model, meta, tmp_path / "net.safetensors")
    assert report.ratio > (5 if p == 90 else 40)
    assert set(report.encodings.values()) >= {"bitmask" if p == 90 else "csr", "dense"}
    back, arch = load_exported_model(tmp_path / "net.safetensors")
    fast, fast_arch = load_exported_model(tmp_path / "net.safetensors", sparse_kernels=True)
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-5, rtol=0)
        assert torch.allclose(fast(x), model(x), atol=1e-5, rtol=0)
    assert arch["model"] == "lenet300" and "1" in fast_arch["sparse_layers"]  # the 784 x 300 layer on CSR kernels


def test_every_encoding_decodes_exactly():
    g = torch.Generator().manual_seed(0)
    for density in (0.01, 0.3, 0.9):
        t = torch.randn(37, 5, 3, 3, generator=g) * (torch.rand(37, 5, 3, 3, generator=g) < density)
        parts, info = encode("w", t)
        assert torch.equal(decode("w", info, parts), t)
        for enc in ("csr", "bitmask"):  # each encoding on its own, whichever would be chosen
            from geodesic_core import export as ex

            forced = dict(info, encoding=enc)
            sizes = ex.encoded_sizes
            try:
                ex.encoded_sizes = lambda _t, enc=enc: {"dense": 10 ** 9, "csr": 0 if enc == "csr" else 1,
                                                        "bitmask": 0 if enc == "bitmask" else 1}
                parts, info2 = encode("w", t)
            finally:
                ex.encoded_sizes = sizes
            assert info2 == forced and torch.equal(decode("w", info2, parts), t)


def test_structured_export_is_physically_smaller(tmp_path):
    from geodesic_core.metric import flat_params, set_flat_params
    from geodesic_core.targets import FilterTarget

    model = build_model("vgg11", 10, 3, 32, seed=0, width=0.25).eval()
    set_flat_params(model, FilterTarget(model, "features.0", 10).project(flat_params(model)))
    meta = dict(model="vgg11", num_classes=10, in_channels=3, image_size=32, width=0.25, dataset="cifar10")
    report = export(model, meta, tmp_path / "vgg.safetensors")
    assert report.compact_layer == "features.0" and report.removed_filters == 10
    back, _ = load_exported_model(tmp_path / "vgg.safetensors")
    assert back.features[0].out_channels == 6 and back.features[4].in_channels == 6
    assert sum(p.numel() for p in back.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back.eval()(x), model(x), atol=1e-5)


def test_export_cli_prints_sizes_and_times_and_refuses_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEODESIC_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("GEODESIC_ALLOWED_ROOTS", raising=False)
    model, meta = _sparse_lenet(98.0)
    save_checkpoint(tmp_path / "sparse.pt", model, meta)
    assert main(["export", "sparse.pt", "--out", "sparse.safetensors", "--batch", "32"]) == 0
    out = capsys.readouterr().out
    assert "size (bytes)" in out and "CPU ms / batch 32" in out and "largest output difference" in out
    ratio = float(out.split("size (bytes)")[1].split("x")[0].split()[-1])
    assert ratio > 20 and (tmp_path / "sparse.safetensors").is_file()
    dense, _ = _sparse_lenet(98.0)
    for p in dense.parameters():
        torch.nn.init.normal_(p)
    save_checkpoint(tmp_path / "dense.pt", dense, meta)
    assert main(["export", "dense.pt", "--out", "dense.safetensors"]) == 2
    assert "not sparse" in capsys.readouterr().err and not (tmp_path / "dense.safetensors").exists()
    outside = tmp_path.parent / f"elsewhere-{uuid.uuid4().hex[:6]}.safetensors"
    assert main(["export", "sparse.pt", "--out", str(outside)]) == 2
    assert "outside the folders an export may write" in capsys.readouterr().err and not outside.exists()


def test_the_python_api_sparsifies_a_users_network_on_tensors(data_dir):
    from geodesic_core.api import sparsify
    from geodesic_core import TrainConfig, train

    tr, te = load_split("mnist", True, data_dir), load_split("mnist", False, data_dir)
    x, y = tr.x[:3000], tr.y[:3000]
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    train(net, (x, y), TrainConfig(epochs=1, seed=0))
    before = [p.clone() for p in net.parameters()]
    res = sparsify(net, x, 90, test=(te.x[:500], te.y[:500]), schedule="cubic", stages=2,
                   geo=SparsifyConfig().geo.model_copy(update={"max_steps": 10, "distill_steps": 2}), eval_every=5)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the user's network is untouched
    assert res.sparsity == pytest.approx(90, abs=0.05) and res.test_accuracy > 60
    df = res.frame()
    assert {"stage", "step", "distance", "path_length", "sparsity", "test_accuracy"} <= set(df.columns)
    assert df["path_length"].is_monotonic_increasing and df["stage"].max() == 2
    # the closing correction (default 2 epochs, on x, no labels) starts from the path's projected end
    assert res.projected_test_accuracy == df["test_accuracy"].iloc[-1] and res.test_accuracy is not None
    with pytest.raises(InputError, match="strictly between 0 and 100|between 0 and 100"):
        sparsify(net, x, 100)
    with pytest.raises(InputError, match="polish_epochs"):
        sparsify(net, x, 90, polish_epochs=-1)

    # the default, adaptive schedule: a tolerance of 0.01 points undoes stages, which leave no rows behind
    steps_taken = []
    res = sparsify(net, x, 90, test=(te.x[:500], te.y[:500]), stages=2, max_stages=4, stage_tolerance=0.01,
                   geo=SparsifyConfig().geo.model_copy(update={"max_steps": 10, "distill_steps": 2}), eval_every=5,
                   callbacks=[lambda info: steps_taken.append(info.step)])
    df = res.frame()
    assert res.sparsity == pytest.approx(90, abs=0.05) and 2 <= len(res.stages) <= 4
    assert len(steps_taken) > df["step"].max()  # steps were taken and undone
    assert df["step"].is_monotonic_increasing and df["path_length"].is_monotonic_increasing
    assert sorted(set(df["stage"])) == list(range(1, len(res.stages) + 1))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    with pytest.raises(InputError, match="tolerance"):
        sparsify(net, x, 90, stage_tolerance=0)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sparsify_own_network.py", "flow_own_model.py"])
def test_the_examples_run_as_written(script, data_dir, tmp_path):
    env = {**os.environ, "GEODESIC_DATA_DIR": data_dir, "MPLBACKEND": "Agg", "GEODESIC_OUTPUT_DIR": str(tmp_path / "o"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if script == "flow_own_model.py":
        assert "geodesic" in proc.stdout and "finetune" in proc.stdout
    else:
        assert "95.00% zeros" in proc.stdout
        assert (tmp_path / "sparsify_path.png").is_file()


def test_a_worker_run_imports_only_the_modules_its_environment_allows(user_module, monkeypatch):
    """A deployment's parameters come from whoever reaches the run form: importing a module runs its code."""
    from flows.common import guard_imports_of_worker_runs

    monkeypatch.setenv("GEODESIC_ALLOWED_MODULES", "-")  # recorded, so that the end of the test restores it
    monkeypatch.delenv("GEODESIC_ALLOWED_MODULES")
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "00000000-0000-0000-0000-000000000000")
    guard_imports_of_worker_runs()
    with pytest.raises(ValueError, match="not among the modules this worker may import"):
        SparsifyConfig(model=f"{user_module}:mlp", dataset=f"{user_module}_broken:load")
    with pytest.raises(InputError, match="not among the modules"):
        check_dataset_name("antigravity:x")  # refused before the module's code runs
    assert SparsifyConfig(model="torchvision:resnet18", dataset="cifar10").model  # torchvision's names stay open
    monkeypatch.setenv("GEODESIC_ALLOWED_MODULES", f"other,{user_module}")
    assert SparsifyConfig(model=f"{user_module}:mlp", dataset=f"{user_module}:images").model == f"{user_module}:mlp"
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID")
    monkeypatch.setenv("GEODESIC_ALLOWED_MODULES", "")  # an explicit empty list refuses every module, also locally
    with pytest.raises(InputError, match="not among the modules"):
        check_model_name(f"{user_module}:mlp")
