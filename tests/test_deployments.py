"""prefect.yaml stays consistent with the code: entrypoints import, default parameters validate."""

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_deployment_points_at_a_flow_with_valid_parameters():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        path, fn = dep["entrypoint"].split(":")
        mod_spec = importlib.util.spec_from_file_location("entry", ROOT / path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        flow = getattr(module, fn)
        validated = flow.validate_parameters(dep.get("parameters") or {})
        assert set(validated) <= set(flow.parameters.properties)


def _datasets_read(dep: dict) -> set[str]:
    from geodesic_core.continual import ContinualConfig, get_scenario

    params = dep.get("parameters") or {}
    if "datasets" in params:  # the watch flow
        return set(params["datasets"])
    p = params["params"]
    if "scenario" in p:
        return set(get_scenario(ContinualConfig(**p).scenario).datasets)
    return {p.get("dataset", "mnist")}


def test_triggers_match_the_data_each_deployment_reads_and_schedules_start_inactive():
    from tasks.data import DATA_UPDATED, dataset_resource_id

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = {p["name"] for p in spec["definitions"]["work_pools"].values()}
    names = set()
    for dep in spec["deployments"]:
        names.add(dep["name"])
        assert dep["work_pool"]["name"] in pools and dep["tags"]
        for schedule in dep.get("schedules", []):
            assert schedule["active"] is False, f"{dep['name']}: a schedule must be opt-in"
        if dep["name"] == "watch-data":
            continue
        (trigger,) = dep["triggers"]
        assert trigger["type"] == "event" and trigger["expect"] == [DATA_UPDATED]
        ids = trigger["match"]["prefect.resource.id"]
        ids = {ids} if isinstance(ids, str) else set(ids)
        assert {dataset_resource_id(d) for d in _datasets_read(dep)} <= ids, dep["name"]
    assert names == {"sparsify", "continual", "connect", "watch-data"}


def test_the_run_forms_take_a_registered_name_or_an_import_path_and_nothing_else():
    """What the Prefect API checks against a deployment's parameter schema before it creates a run."""
    from prefect.utilities.schema_tools import validate

    from flows.connect import connect_flow
    from flows.continual import continual_flow
    from flows.sparsify import sparsify_flow

    for flow in (sparsify_flow, connect_flow, continual_flow):
        schema = flow.parameters.model_dump(mode="json")
        for model in ("lenet300", "torchvision:resnet18", "mypkg.nets:build_net"):
            assert validate({"params": {"model": model}}, schema, ignore_required=True) == [], (flow.name, model)
        for model in ("resnet 18", "mypkg.nets:", "a:b:c", "lenet-300"):
            assert validate({"params": {"model": model}}, schema, ignore_required=True), (flow.name, model)
        if flow is not continual_flow:
            assert validate({"params": {"dataset": "mypkg.data:load"}}, schema, ignore_required=True) == []
            assert validate({"params": {"dataset": "svhn"}}, schema, ignore_required=True)


def test_the_continual_form_leaves_the_scenarios_settings_to_the_scenario():
    """The run form's traversal settings that depend on the scenario start empty (null) and say each scenario's
    value, so a run started from the form on MNIST -> Fashion-MNIST gets that scenario's, not permuted MNIST's."""
    from flows.continual import continual_flow

    schema = continual_flow.parameters.model_dump(mode="json")
    default = schema["properties"]["params"]["default"]
    assert [default["geo"][k] for k in ("eta", "anchor", "metric_batch", "temperature")] == [None] * 4
    assert default["align"] is None and default["geo"]["max_steps"] == 4000
    geo = schema["definitions"]["ContinualGeoConfig"]["properties"]
    assert "10 for permuted_mnist; 4 for mnist_fashion, mnist_fashion_heads" in geo["temperature"]["description"]
    assert "auto for mnist_fashion" in schema["definitions"]["ContinualConfig"]["properties"]["align"]["description"]
    assert default["refit_head"] is None and ("false for permuted_mnist, mnist_fashion; true for mnist_fashion_heads"
                                              in schema["definitions"]["ContinualConfig"]["properties"]["refit_head"][
                                                  "description"])
    assert default["polish_epochs"] is None and ("2 for permuted_mnist, mnist_fashion_heads; 0 for mnist_fashion"
                                                 in schema["definitions"]["ContinualConfig"]["properties"][
                                                     "polish_epochs"]["description"])
    validated = continual_flow.validate_parameters({"params": {**default, "scenario": "mnist_fashion"}})
    r = validated["params"].resolved()
    assert (r.geo.temperature, r.geo.anchor, r.geo.eta, r.geo.metric_batch, r.align, r.refit_head) == (
        4.0, 0.2, 0.3, 128, "auto", False)
