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
