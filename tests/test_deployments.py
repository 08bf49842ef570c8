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
