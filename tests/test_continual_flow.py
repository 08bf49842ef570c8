"""The continual flow end to end on a tiny configuration, in a Prefect test harness with a local MLflow."""

import pandas as pd
import pytest
import torch

from flows.cli import main

TINY = ["--tasks", "3", "--train.epochs", "1", "--geo.max-steps", "12", "--eval-every", "4", "--fisher-samples",
        "64", "--linear-points", "5", "--align", "auto", "--fisher-weight", "1", "--polish-epochs", "1"]


def test_flow_tracks_every_method_and_resumes_from_cache(harness, workdir, data_dir, monkeypatch, capsys):
    assert main(["continual", "--data-dir", data_dir, *TINY]) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in ("geodesic", "linear", "sgd", "l2", "ewc"))
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("geodesic-continual")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("geodesic.role") == "parent"]
    children = {r.data.params["method"]: r for r in runs if "mlflow.parentRunId" in r.data.tags
                and r.data.params["method"] != "train"}
    training = [r for r in runs if r.data.params.get("method") == "train"]
    assert len(parents) == 1 and sorted(children) == ["ewc", "geodesic", "l2", "linear", "sgd"]
    assert sorted(r.data.params["task"] for r in training) == ["1", "2", "3"]
    for method, r in children.items():
        p, m = r.data.params, r.data.metrics
        assert p["scenario"] == "permuted_mnist" and p["tasks"] == "3"
        accs = [m[f"acc_task_{j}"] for j in (1, 2, 3)]
        assert all(0 <= a <= 100 for a in accs) and m["avg_accuracy"] == pytest.approx(sum(accs) / 3)
        assert m["wall_seconds"] > 0 and "bwt" in m
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "accuracy_matrix.parquet" in arts and "checkpoints" in arts
        matrix = pd.read_parquet(client.download_artifacts(r.info.run_id, "accuracy_matrix.parquet",
                                                           str(workdir / method)))
        assert list(matrix.columns) == ["after_task", "task_1", "task_2", "task_3"] and len(matrix) == 3
        assert matrix.iloc[-1, 1:].tolist() == pytest.approx(accs)
        bwt = ((matrix.iloc[2, 1] - matrix.iloc[0, 1]) + (matrix.iloc[2, 2] - matrix.iloc[1, 2])) / 2
        assert m["bwt"] == pytest.approx(bwt)
    first_rows = {tuple(pd.read_parquet(client.download_artifacts(r.info.run_id, "accuracy_matrix.parquet",
                                                                   str(workdir / f"{k}-1"))).iloc[0, 1:])
                  for k, r in children.items()}
    assert len(first_rows) == 1  # every method starts from the same task-1 network
    geo = children["geodesic"]
    arts = {a.path for a in client.list_artifacts(geo.info.run_id)}
    assert {"path_metrics.parquet", "linear_path_metrics.parquet", "accuracy_along_paths_task2.png",
            "accuracy_along_paths_task3.png", "pca_paths_task3.png"} <= arts
    path = pd.read_parquet(client.download_artifacts(geo.info.run_id, "path_metrics.parquet", str(workdir)))
    assert {"stage", "step", "distance", "path_length", "acc_task_1", "acc_task_2", "acc_task_3", "pc1",
            "pc2"} <= set(path.columns)
    for _, stage in path.groupby("stage"):
        assert stage["step"].iloc[0] == 0 and stage["path_length"].is_monotonic_increasing
    assert path[path.stage == 2]["acc_task_3"].isna().all()  # stage 2 only evaluates tasks 1, 2
    assert geo.data.metrics["steps"] > 0 and geo.data.metrics["path_length"] > 0
    # --align auto on LeNet-300-100: each stage of the geodesic and the line starts from w_i with its hidden units
    # in w_{1:i-1}'s order (two stages of 400 units each)
    for method in ("geodesic", "linear"):
        assert children[method].data.params["align"] == "auto"
        assert 0 < children[method].data.metrics["aligned_units_moved"] <= 800
    assert children["geodesic"].data.params["fisher_weight"] == "1.0"  # each stage aimed by its chain's Fisher
    # each stage closed by the correction toward w_i's outputs against the Fisher's pull: one row of its own after the
    # traversal's end, at the same stage step and the next global step
    assert children["geodesic"].data.params["polish_epochs"] == "1"
    for _, stage in path.groupby("stage"):
        assert stage["polished"].tolist()[-2:] == [False, True] and stage["polished"].sum() == 1
        assert stage["step"].iloc[-1] == stage["step"].iloc[-2]
        assert stage["global_step"].iloc[-1] == stage["global_step"].iloc[-2] + 1
    assert "aligned_units_moved" not in children["sgd"].data.metrics
    # the path as metric histories at the geodesic step counted over both stages: one point per step
    assert {"global_step"} <= set(path.columns) and path["global_step"].is_unique
    for key in ("acc_task_1", "acc_task_2", "distance", "step_length"):
        hist = [h.step for h in client.get_metric_history(geo.info.run_id, key)]
        assert hist and len(hist) == len(set(hist)), key
    acc3 = {h.step for h in client.get_metric_history(geo.info.run_id, "acc_task_3")}
    assert acc3 == set(path[path.stage == 3]["global_step"])  # task 3 is evaluated from stage 3 on
    sgd = {h.step for h in client.get_metric_history(children["sgd"].info.run_id, "train_loss")}
    assert len(sgd) > 10 and max(sgd) > 469  # the training curves of both stages, at the SGD step

    # a second run with the same parameters recomputes nothing
    def boom(*a, **k):
        raise AssertionError("a cached task ran again")

    for name in ("train", "continual_geodesic", "fisher_diagonal", "linear_scan", "align_to"):
        monkeypatch.setattr(f"tasks.continual.{name}", boom)
    assert main(["continual", "--data-dir", data_dir, *TINY]) == 0


def test_sequential_baselines_at_the_geodesics_wall_time(harness, workdir, data_dir):
    """--equal-time trains sgd and ewc again, each stage for the geodesic's stage time of wall time (its task
    network's training plus its traversal), the whole schedule annealed inside it, as child runs with budget
    equal_time beside the fixed-budget ones."""
    from mlflow import MlflowClient

    args = ["--tasks", "2", "--train.epochs", "1", "--geo.max-steps", "40", "--eval-every", "20",
            "--fisher-samples", "64", "--methods", "geodesic", "--methods", "sgd", "--methods", "ewc", "--equal-time"]
    assert main(["continual", "--data-dir", data_dir, *args]) == 0
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("geodesic-continual")
    children = {(r.data.params["method"], r.data.params.get("budget", "-")): r.data.metrics
                for r in client.search_runs([exp.experiment_id])
                if "mlflow.parentRunId" in r.data.tags and r.data.params["method"] != "train"}
    assert sorted(children) == [("ewc", "-"), ("ewc", "equal_time"), ("geodesic", "-"), ("sgd", "-"),
                                ("sgd", "equal_time")]
    geo_wall = children[("geodesic", "-")]["wall_seconds"]  # w_2's training + the traversal: the one stage's time
    sgd, equal = children[("sgd", "-")], children[("sgd", "equal_time")]
    assert sgd["epochs"] == 1
    assert equal["epochs"] > 1.5  # the geodesic took longer than one epoch of SGD: the peer gets more
    runs = {(r.data.params["method"], r.data.params.get("budget", "-")): r.info.run_id
            for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags}
    spans = []
    for m in ("sgd", "ewc"):
        eq = children[(m, "equal_time")]
        # the whole budget is spent (a run sized in epochs at a measured speed ends early when the machine speeds
        # up), and no more than one step past it (+ EWC's Fisher, which counts in its time)
        assert geo_wall <= eq["wall_seconds"] <= 1.25 * geo_wall + 1.0
        assert 0 <= eq["acc_task_1"] <= 100 and 0 <= eq["acc_task_2"] <= 100
        history = sorted(client.get_metric_history(runs[(m, "equal_time")], "lr"), key=lambda h: h.step)
        lrs = [h.value for h in history]
        # the cosine spans the budget, not the epoch cap: it falls well below its peak inside the stage
        assert lrs[0] == pytest.approx(0.05, rel=0.1) and min(lrs) < 0.2 * 0.05
        assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:]))
        spans.append((history[0].timestamp, history[-1].timestamp))
    # one equal-time stage at a time, each given the machine as the geodesic's stage had it
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0


def test_the_geodesics_per_task_networks_start_from_its_chain_with_start_mix(harness, workdir, data_dir):
    """--start-mix 0.5: the geodesic's w_2, w_3 train after its stages 1, 2 end, each from half the chain's end and half
    a fresh initialization, as child runs of their own; no method reads the fresh w_2, w_3 here (SGD trains its own
    chain), so they are not trained; the geodesic's time counts its own networks; a rerun is served from the cache."""
    from mlflow import MlflowClient

    from geodesic_core.checkpoint import load_model

    args = ["continual", "--data-dir", data_dir, "--tasks", "3", "--train.epochs", "1", "--geo.max-steps", "6",
            "--eval-every", "3", "--fisher-weight", "0", "--polish-epochs", "0", "--linear-points", "3",
            "--methods", "geodesic", "--methods", "sgd", "--start-mix", "0.5"]
    assert main(args) == 0
    folder = workdir / "outputs" / "checkpoints"
    nets = [load_model(p)[1] for p in folder.glob("task-*.pt")]
    fresh = {m["task"]: m for m in nets if "start" not in m["result"]}
    started = {m["task"]: m for m in nets if "start" in m["result"]}
    assert sorted(fresh) == [0] and sorted(started) == [1, 2]
    stage_ends = {load_model(p)[1]["result"]["index"]: load_model(p)[1]["sha256"]
                  for p in folder.glob("continual-geodesic-*.pt")}
    # w_2 starts from w_1 (the chain's end after task 1), w_3 from the end of the geodesic's stage 2
    assert started[1]["result"]["start"] == fresh[0]["sha256"] and started[2]["result"]["start"] == stage_ends[1]
    assert all(m["result"]["start_mix"] == 0.5 for m in started.values())
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("geodesic-continual")
    runs = client.search_runs([exp.experiment_id])
    names = sorted(r.info.run_name for r in runs if r.data.params.get("method") == "train")
    assert names == ["train-task1", "train-task2-geodesic-start", "train-task3-geodesic-start"]
    children = {r.data.params["method"]: r for r in runs if r.data.params.get("method") in ("geodesic", "sgd")}
    assert set(children) == {"geodesic", "sgd"}
    assert children["geodesic"].data.params["start_mix"] == "0.5"
    # the geodesic's time holds its own w_2, w_3 (trained one at a time) and not the shared ones
    own = sum(m["result"]["wall_seconds"] for m in started.values())
    stages = sum(load_model(p)[1]["result"]["wall_seconds"] for p in folder.glob("continual-geodesic-*.pt"))
    assert children["geodesic"].data.metrics["wall_seconds"] >= own + stages - 1e-6
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")}
    assert main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")} == before


@pytest.mark.parametrize("scenario,anchor,refit", [("mnist_fashion", "0.2", "False"),
                                                   ("mnist_fashion_heads", "1.0", "True")])
def test_mnist_to_fashion_with_one_shared_head_or_two(harness, workdir, data_dir, scenario, anchor, refit):
    """The paper's one shared head, and two heads (where the target leaves the Fashion head to the anchor and the
    head is refit after the traversal): each runs on its scenario's settings, aimed by the MNIST network's Fisher, and
    MLflow holds the numbers that ran."""
    args = ["continual", "--data-dir", data_dir, "--scenario", scenario, "--train.epochs", "1",
            "--geo.max-steps", "6", "--eval-every", "3", "--methods", "geodesic", "--methods", "sgd",
            "--methods", "linear", "--linear-points", "3"]
    if refit == "True":  # one epoch of the scenario's closing correction (2) is enough to test it runs and is logged
        args += ["--polish-epochs", "1"]
    assert main(args) == 0
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("geodesic-continual")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
                and r.data.params["method"] not in ("train", "linear")]
    assert sorted(r.data.params["method"] for r in children) == ["geodesic", "sgd"]
    for r in children:
        assert r.data.params["scenario"] == scenario and r.data.params["tasks"] == "2"
        assert {"acc_task_1", "acc_task_2"} <= set(r.data.metrics) and "acc_task_3" not in r.data.metrics
        # the traversal's settings left unset are the scenario's, and MLflow holds them, not None
        p = r.data.params
        assert (p["geo.temperature"], p["geo.anchor"], p["geo.eta"], p["geo.metric_batch"], p["align"],
                p["fisher_weight"]) == ("4.0", anchor, "0.3", "128", "auto", "1.0")
    geo = next(r for r in children if r.data.params["method"] == "geodesic")
    assert geo.data.metrics["aligned_units_moved"] > 0  # the scenario's align auto: the CNN's units matched
    assert geo.data.params["refit_head"] == refit
    if refit == "True":  # the Fashion head refit toward w_2's outputs: the KL falls, the path's last row says so
        assert geo.data.metrics["head_kl_after"] < geo.data.metrics["head_kl_before"]
        import pandas as pd

        path = pd.read_parquet(client.download_artifacts(geo.info.run_id, "path_metrics.parquet", str(workdir)))
        assert path["head_refit"].tolist()[-2:] == [False, True] and path["head_refit"].sum() == 1
        assert path["step"].iloc[-1] == path["step"].iloc[-2]  # both rows at the traversal's last step
        # the traversal's end, the closing correction's and the refit's: each a global step of its own, so MLflow's
        # histories hold one value per step
        assert path["polished"].tolist()[-3:] == [False, True, False] and path["global_step"].is_unique
        for key in ("acc_task_1", "acc_task_2"):
            hist = [h.step for h in client.get_metric_history(geo.info.run_id, key)]
            assert len(hist) == len(set(hist)) and max(hist) == path["global_step"].max(), key
        assert path["acc_task_1"].iloc[-1] == path["acc_task_1"].iloc[-2]  # MNIST's head and layers untouched
    else:
        assert "head_kl_before" not in geo.data.metrics
    # the straight line: with two heads each endpoint's untrained head is the other's trained one, so the line's best
    # point holds w_1's MNIST head exactly and w_2's Fashion head (its columns permuted by the alignment)
    if refit == "True":
        from geodesic_core.checkpoint import load_model

        folder = workdir / "outputs" / "checkpoints"
        tasks = {meta["task"]: net for net, meta in map(load_model, folder.glob("task-*.pt"))}
        (line, _), = map(load_model, folder.glob("continual-linear-*.pt"))
        out, w1, w2 = (list(m.modules())[-1] for m in (line, tasks[0], tasks[1]))
        assert torch.equal(out.weight[:10], w1.weight[:10]) and torch.equal(out.bias[:10], w1.bias[:10])
        assert torch.equal(out.weight[10:].sort(1).values, w2.weight[10:].sort(1).values)
        assert torch.equal(out.bias[10:], w2.bias[10:])


@pytest.mark.parametrize("args,match", [
    (["--tasks", "1"], "at least 2 tasks"),
    (["--tasks", "0"], "at least 2 tasks"),
    (["--scenario", "split-cifar"], "valid scenarios: mnist_fashion, mnist_fashion_heads, permuted_mnist"),
    (["--scenario", "mnist-fashion", "--tasks", "3"], "has 2 tasks"),
    (["--model", "resnet18"], "valid models"),
    (["--methods", "replay"], "valid methods"),
    (["--geo.eta", "-0.1"], "--geo.eta"),
    (["--train.epochs", "0"], "--train.epochs"),
    (["--ewc-strength", "-1"], "--ewc-strength"),
    (["--equal-time", "--methods", "geodesic", "--methods", "linear"], "--equal-time"),
    (["--model", "torchvision:resnet18", "--align", "activations"], "neuron alignment supports"),
    (["--scenario", "mnist-fashion", "--refit-head"], "refit_head needs a head per task"),
    (["--polish-epochs", "-1"], "--polish-epochs"),
    (["--polish-lr", "0"], "--polish-lr"),
])
def test_bad_input_fails_before_any_work(tmp_path, monkeypatch, data_dir, capsys, args, match):
    monkeypatch.chdir(tmp_path)
    assert main(["continual", "--data-dir", data_dir, *args]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


def test_missing_data_names_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["continual", "--data-dir", str(tmp_path / "none")]) == 2
    assert "GEODESIC_DATA_DIR" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_a_methods_cache_key_ignores_the_other_methods_settings():
    from flows.continual import _for_method
    from geodesic_core.continual import ContinualConfig

    a = ContinualConfig(ewc_strength=10, geo={"eta": 0.3})
    b = ContinualConfig(ewc_strength=500, methods=["geodesic", "ewc"])
    assert _for_method(a, "sgd") == _for_method(b, "sgd") and _for_method(a) == _for_method(b)
    assert _for_method(a, "ewc") != _for_method(b, "ewc")
    assert _for_method(a, "geodesic") != _for_method(b, "geodesic")
    # the geodesic depends on fisher_samples only when its step is aimed by the Fisher (fisher_weight > 0)
    plain = [ContinualConfig(fisher_weight=0, fisher_samples=n) for n in (64, 1000)]
    aimed = [ContinualConfig(fisher_weight=1, fisher_samples=n) for n in (64, 1000)]
    assert _for_method(plain[0], "geodesic") == _for_method(plain[1], "geodesic")
    assert _for_method(aimed[0], "geodesic") != _for_method(aimed[1], "geodesic")
    # the head refit is the geodesic's setting alone
    heads = [ContinualConfig(scenario="mnist_fashion_heads", refit_head=r).resolved() for r in (True, False)]
    assert _for_method(heads[0], "geodesic") != _for_method(heads[1], "geodesic")
    assert _for_method(heads[0], "ewc") == _for_method(heads[1], "ewc")
    assert _for_method(heads[0]) == _for_method(heads[1])
    # the closing correction's settings too; they, and the Fisher it reads, count only where it runs
    polished = [ContinualConfig(fisher_weight=0, polish_epochs=2, polish_strength=s, fisher_samples=n)
                for s, n in ((10, 64), (30, 64), (10, 1000))]
    keys = [_for_method(c, "geodesic") for c in polished]
    assert len(set(map(repr, keys))) == 3 and _for_method(polished[0], "ewc") == _for_method(polished[1], "ewc")
    off = [ContinualConfig(fisher_weight=0, polish_epochs=0, polish_strength=s) for s in (10, 30)]
    assert _for_method(off[0], "geodesic") == _for_method(off[1], "geodesic")


def test_the_stages_alignment_is_decided_before_any_work():
    """auto aligns w_i to w_{1:i-1} where the scenario's network allows it and gives the reason where not;
    activations refuses such a network; none (permuted MNIST's default) never aligns."""
    from geodesic_core import InputError
    from geodesic_core.continual import ContinualConfig
    from tasks.continual import alignment_plan

    assert alignment_plan(ContinualConfig(align="auto")) is None
    assert alignment_plan(ContinualConfig(scenario="mnist_fashion_heads", align="auto")) is None
    assert alignment_plan(ContinualConfig()) == "align none"  # permuted MNIST's default: the paper as written
    assert alignment_plan(ContinualConfig(scenario="mnist_fashion")) is None  # MNIST -> Fashion's: auto
    assert "--align none" in alignment_plan(ContinualConfig(model="torchvision:resnet18", align="auto"))
    with pytest.raises(InputError, match="neuron alignment supports"):
        alignment_plan(ContinualConfig(model="torchvision:resnet18", align="activations"))


def test_a_stage_starts_from_w_i_aligned_to_the_previous_network(data_dir):
    """The stage's start keeps w_i's function on task i's inputs and moves it closer to w_{1:i-1}; with align none
    it is w_i untouched."""
    import copy

    import torch

    from geodesic_core import flat_params
    from geodesic_core.continual import ContinualConfig, build_scenario_model, get_scenario
    from tasks.continual import _align_start, task_split

    scenario = get_scenario("permuted_mnist")
    prev, w_i = (build_scenario_model(scenario, None, s) for s in (0, 1))
    pool = task_split("permuted_mnist", 1, True, data_dir, 0).x[:600]
    start = copy.deepcopy(w_i)
    got = _align_start(start, prev, pool, 1, ContinualConfig(align="auto"))
    assert got["aligned"] and got["aligned_units_moved"] > 0
    with torch.no_grad():
        torch.testing.assert_close(start(pool), w_i(pool), rtol=1e-5, atol=1e-5)
    assert (flat_params(start) - flat_params(prev)).norm() < (flat_params(w_i) - flat_params(prev)).norm()
    same = copy.deepcopy(w_i)
    assert _align_start(same, prev, pool, 1, ContinualConfig(align="none")) == {"aligned": False}
    assert torch.equal(flat_params(same), flat_params(w_i))
