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
    from geodesic_core.continual import ContinualConfig
    from geodesic_core.continual import get_scenario

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
