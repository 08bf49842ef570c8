import pytest

from flows.cli import main
from geodesic_core import load_model


def test_train_writes_a_loadable_checkpoint(tmp_path, data_dir, capsys):
    out = tmp_path / "net.pt"
    assert main(["train", "--model", "lenet300", "--dataset", "mnist", "--epochs", "1", "--out", str(out),
                 "--data-dir", data_dir, "--batch-size", "256"]) == 0
    model, meta = load_model(out, expect_model="lenet300")
    assert meta["test_accuracy"] > 90 and meta["train_batch_size"] == 256
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["--model", "resnet18", "--dataset", "mnist"], "valid models"),
    (["--model", "lenet300", "--dataset", "svhn"], "valid datasets"),
    (["--model", "lenet300", "--dataset", "mnist", "--epochs", "0"], "--epochs"),
    (["--model", "lenet300", "--dataset", "mnist", "--lr", "-1"], "--lr"),
    (["--model", "lenet300", "--dataset", "mnist", "--batch-size", "0"], "--batch-size"),
])
def test_bad_input_fails_before_work(tmp_path, data_dir, capsys, args, match):
    out = tmp_path / "net.pt"
    assert main(["train", *args, "--out", str(out), "--data-dir", data_dir]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_missing_data_root(tmp_path, capsys):
    assert main(["train", "--model", "lenet300", "--dataset", "mnist", "--out", str(tmp_path / "x.pt"),
                 "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "GEODESIC_DATA_DIR" in capsys.readouterr().err


def test_a_run_gives_prefects_ephemeral_server_time_to_start_on_a_busy_machine(tmp_path, monkeypatch):
    """Prefect's 20 s default failed runs on a loaded 2-core machine before any work; a user's own setting wins."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as TIMEOUT

    from flows.cli import EPHEMERAL_STARTUP_SECONDS, run_local
    from flows.common import RunnerConfig
    from geodesic_core.sparsify import SparsifyConfig

    seen = []

    class Flow:  # stands in for a flow: records the setting it runs under
        def with_options(self, **kw):
            return lambda *a, **k: seen.append(TIMEOUT.value())

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEODESIC_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv(TIMEOUT.name, raising=False)
    run_local(Flow(), SparsifyConfig(), data_dir=None, experiment="x", runner=RunnerConfig())
    monkeypatch.setenv(TIMEOUT.name, "7")
    run_local(Flow(), SparsifyConfig(), data_dir=None, experiment="x", runner=RunnerConfig())
    assert seen[0] == EPHEMERAL_STARTUP_SECONDS > 20 and seen[1] != EPHEMERAL_STARTUP_SECONDS


@pytest.fixture(scope="module")
def sparse_lenet(tmp_path_factory, data_dir):
    """A LeNet-300-100 trained one epoch, then 95% of its weights zeroed by magnitude (no fine-tuning)."""
    import torch

    from geodesic_core import save_checkpoint
    from geodesic_core.sparsify import oneshot_prune
    from geodesic_core.targets import param_slices

    root = tmp_path_factory.mktemp("sparse")
    dense = root / "dense.pt"
    assert main(["train", "--model", "lenet300", "--dataset", "mnist", "--epochs", "1", "--out", str(dense),
                 "--data-dir", data_dir]) == 0
    model, meta = load_model(dense)
    oneshot_prune(model, param_slices(model), 95)
    sparse = root / "sparse.pt"
    save_checkpoint(sparse, model, {k: v for k, v in meta.items() if k != "sha256"})
    zeros = {k: (p == 0) for k, p in model.named_parameters()}
    assert sum(int(z.sum()) for z in zeros.values()) > 0.9 * sum(p.numel() for p in model.parameters())
    return dense, sparse, zeros, torch


def test_train_from_a_sparse_checkpoint_keeps_its_zeros_and_recovers(tmp_path, data_dir, capsys, sparse_lenet,
                                                                     monkeypatch):
    """`geodesic train --init --keep-zeros`: masked fine-tuning of a sparsified network; the zeros stay exactly
    where they were, the other weights move, and accuracy comes back above the one-shot network's. The start
    checkpoint is read (and its hash verified) once, its architecture taken from it."""
    from geodesic_core import checkpoint
    from geodesic_core.train import evaluate
    from geodesic_core.data import load_split

    dense, sparse, zeros, torch = sparse_lenet
    out = tmp_path / "tuned.pt"
    reads, load = [], checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path: reads.append(str(path)) or load(path))
    assert main(["train", "--init", str(sparse), "--keep-zeros", "--dataset", "mnist", "--epochs", "1",
                 "--lr", "0.01", "--out", str(out), "--data-dir", data_dir]) == 0
    monkeypatch.undo()
    assert reads.count(str(sparse)) == 1
    assert "held at zero" in capsys.readouterr().out
    tuned, meta = load_model(out, expect_model="lenet300")
    start, start_meta = load_model(sparse)
    assert sum(int(z.any()) for z in zeros.values()) == 3  # the three weight matrices; the biases are dense
    for k, p in tuned.named_parameters():
        assert torch.equal(p == 0, zeros[k]), f"{k}: zeros moved"
        assert not torch.equal(p, dict(start.named_parameters())[k]), f"{k} did not train"
    assert meta["keep_zeros"] and meta["init_sha256"] == start_meta["sha256"]
    assert meta["zero_fraction"] == pytest.approx(sum(int(z.sum()) for z in zeros.values())
                                                  / sum(z.numel() for z in zeros.values()))
    one_shot = evaluate(start, load_split("mnist", False, data_dir))[0]
    assert meta["test_accuracy"] > one_shot + 1.0


def test_train_with_a_teacher_moves_toward_its_outputs(tmp_path, data_dir, sparse_lenet):
    """`--teacher`: label-free distillation toward another network's outputs (with the mask kept)."""
    from geodesic_core.data import load_split

    dense, sparse, zeros, torch = sparse_lenet
    out = tmp_path / "distilled.pt"
    assert main(["train", "--init", str(sparse), "--keep-zeros", "--teacher", str(dense), "--dataset", "mnist",
                 "--epochs", "1", "--lr", "0.003", "--out", str(out), "--data-dir", data_dir]) == 0
    x = load_split("mnist", False, data_dir).x[:2000]
    (t, t_meta), (s, _), (d, meta) = (load_model(p) for p in (dense, sparse, out))
    with torch.no_grad():
        gap = [float((m(x) - t(x)).pow(2).sum(-1).mean()) for m in (s, d)]
    assert gap[1] < 0.5 * gap[0] and meta["teacher_sha256"] == t_meta["sha256"]
    assert all(torch.equal(p == 0, zeros[k]) for k, p in d.named_parameters() if zeros[k].any())

    # --teacher-temperature: the tempered softmax instead (the closing correction's loss), recorded in the checkpoint
    from geodesic_core.train import distillation_loss

    soft = tmp_path / "distilled-t2.pt"
    assert main(["train", "--init", str(sparse), "--keep-zeros", "--teacher", str(dense), "--teacher-temperature", "2",
                 "--dataset", "mnist", "--epochs", "1", "--lr", "0.1", "--out", str(soft), "--data-dir", data_dir]) == 0
    k, k_meta = load_model(soft)
    with torch.no_grad():
        kl = [float(distillation_loss(m(x), t(x), 2.0)) for m in (s, k)]
    assert kl[1] < 0.5 * kl[0] and k_meta["teacher_temperature"] == 2.0 and meta["teacher_temperature"] == 0.0
    assert all(torch.equal(p == 0, zeros[n]) for n, p in k.named_parameters() if zeros[n].any())


@pytest.mark.parametrize("extra,match", [
    ([], "(--model) is required"),
    (["--model", "lenet300", "--keep-zeros"], "--init"),
    (["--init", "{sparse}", "--model", "cnn"], "requested"),
    (["--init", "{sparse}", "--width", "0.5"], "no width option"),
    (["--init", "{bad}"], "could not be loaded safely"),
    (["--init", "{sparse}", "--teacher", "{cifar}"], "inputs"),
    (["--init", "{sparse}", "--teacher-temperature", "2"], "needs a teacher"),
    (["--init", "{sparse}", "--teacher", "{sparse}", "--teacher-temperature", "-1"], "must be >= 0"),
])
def test_train_from_a_checkpoint_rejects_bad_input_before_work(tmp_path, data_dir, capsys, sparse_lenet,
                                                               extra, match):
    from geodesic_core import build_model, save_checkpoint

    _, sparse, _, _ = sparse_lenet
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    cifar = tmp_path / "cifar.pt"
    save_checkpoint(cifar, build_model("cnn", 10, 3, 32), {"model": "cnn", "num_classes": 10, "in_channels": 3,
                                                         "image_size": 32})
    out = tmp_path / "net.pt"
    args = [a.format(sparse=sparse, bad=bad, cifar=cifar) for a in extra]
    assert main(["train", "--dataset", "mnist", *args, "--out", str(out), "--data-dir", data_dir]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_every_option_is_described_alike_in_the_help_and_the_run_form():
    """Each config field's docstring is its description: the CLI's help line and the Prefect run form's text
    (the flow's parameter schema) show the same sentence, for every option of every command."""
    import argparse

    from prefect.utilities.callables import parameter_schema

    from flows.cli import build_parser
    from flows.connect import connect_flow
    from flows.continual import continual_flow
    from flows.sparsify import sparsify_flow

    def words(text: str) -> str:
        return " ".join(text.replace("%%", "%").split()).rstrip(".")

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, flow in (("sparsify", sparsify_flow), ("continual", continual_flow), ("connect", connect_flow),
                       ("train", None)):
        helps = {a.dest: words(a.help) for a in sub.choices[name]._actions if a.dest != "help"}
        bare = [d for d, h in helps.items() if h.startswith("(default")]
        assert not bare, f"{name}: options without a description: {bare}"
        if flow is None:
            continue
        forms = parameter_schema(flow.fn).model_dump()["definitions"]
        checked = 0
        for field, spec in forms[f"{name.title()}Config"]["properties"].items():
            assert words(spec.get("description", "")), f"{name}: {field} has no description in the run form"
            nested = forms[spec["$ref"].rsplit("/", 1)[1]]["properties"].items() if "$ref" in spec else ()
            for dest, text in [(field, spec["description"])] if not nested else \
                    [(f"{field}.{f}", s.get("description", "")) for f, s in nested if f != "seed"]:
                assert words(text) and helps[dest].startswith(words(text)), (name, dest)
                checked += 1
        assert checked == len(helps) - 7  # all but the runner's and reporting options, --data-dir, --experiment
        assert "Gauss-Newton correction" in helps["geo.anchor"] and "η of eq. 7" in helps["geo.eta"]


def test_a_list_option_is_read_repeated_or_comma_separated_alike():
    """``--methods geodesic,ewc`` is ``--methods geodesic --methods ewc`` (the benchmarks take commas too); an
    unknown name inside the list is still refused, naming it."""
    from pydantic import ValidationError

    from flows.cli import build_parser, config_from_args
    from geodesic_core.continual import ContinualConfig
    from geodesic_core.sparsify import SparsifyConfig

    parse = build_parser().parse_args
    commas = config_from_args(ContinualConfig, parse(["continual", "--methods", "geodesic, ewc", "--methods", "l2"]))
    repeated = config_from_args(ContinualConfig, parse(["continual", "--methods", "geodesic", "--methods", "ewc",
                                                        "--methods", "l2"]))
    assert commas.methods == repeated.methods == ["geodesic", "l2", "ewc"]
    assert config_from_args(SparsifyConfig, parse(["sparsify", "--sparsity", "90,99.1"])).sparsity == [90.0, 99.1]
    with pytest.raises(ValidationError, match=r"unknown method\(s\) \['replay'\]"):
        config_from_args(ContinualConfig, parse(["continual", "--methods", "geodesic,replay"]))
