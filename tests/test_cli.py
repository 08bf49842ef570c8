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
