"""docker/ stays consistent with the code: Docker cannot run here, so the images' commands, the compose
services, ports and environment are checked against the settings the code and prefect.yaml use."""

import re
import tomllib
from pathlib import Path

import yaml

from geodesic_core.data import DATA_DIR_ENV
from tasks.common import OUTPUT_DIR_ENV

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BIND = "${GEODESIC_BIND:-127.0.0.1}"


def _dockerfile(name: str = "Dockerfile") -> tuple[str, dict[str, str]]:
    text = (DOCKER / name).read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    env: dict[str, str] = {}
    for line in joined.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return joined, env


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _pools() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["work_pools"]


def _default(value: str) -> str:
    """``${VAR:-default}`` -> default."""
    m = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return m.group(1) if m else value


def test_worker_image_installs_the_project_runs_as_non_root_and_polls_a_declared_pool():
    text, env = _dockerfile()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in packages:
        assert re.search(rf"^COPY {pkg.rstrip('*')} ", text, re.M), f"the image does not copy {pkg}"
    assert re.search(r"^COPY .*prefect\.yaml", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert env["DO_NOT_TRACK"] == "1" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    # the deployments' pull step changes into GEODESIC_PROJECT_DIR: the folder the code is copied to
    assert re.search(rf"^WORKDIR {env['GEODESIC_PROJECT_DIR']}\s*$", text, re.M)
    pull = yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"][0]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $GEODESIC_PROJECT_DIR }}"
    # the pool it polls is declared in prefect.yaml, as a process pool, with the same storage settings
    pool = next(p for p in _pools().values() if p["name"] == env["GEODESIC_WORK_POOL"])
    assert "--type process" in text
    for k, v in pool["job_variables"]["env"].items():
        assert env[k] == v, k
    assert {DATA_DIR_ENV, OUTPUT_DIR_ENV, "PREFECT_RESULTS_LOCAL_STORAGE_PATH"} <= set(env)


def test_compose_services_ports_and_addresses_match():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "mlflow", "worker"}
    published = {}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith(f"{BIND}:"), f"{name} publishes {port} beyond 127.0.0.1 by default"
            host, container = port.removeprefix(f"{BIND}:").split(":")
            assert host == container
            published[name] = container
    assert "postgres" not in published  # the database is reached by the services only
    for name in ("prefect-server", "mlflow"):
        cmd = services[name]["command"]
        assert cmd[cmd.index("--port") + 1] == published[name] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    worker_env = services["worker"]["environment"]
    assert _default(worker_env["PREFECT_API_URL"]) == f"http://prefect-server:{published['prefect-server']}/api"
    assert _default(worker_env["MLFLOW_TRACKING_URI"]) == f"http://mlflow:{published['mlflow']}"
    from tasks.tracking import UI_URL_ENV

    assert worker_env[UI_URL_ENV].endswith(f":{published['mlflow']}}}")  # the published port, for browsers
    mlflow_cmd = services["mlflow"]["command"]
    assert f"mlflow:{published['mlflow']}" in mlflow_cmd[mlflow_cmd.index("--allowed-hosts") + 1]
    _, image_env = _dockerfile()
    assert worker_env["GEODESIC_WORK_POOL"] == image_env["GEODESIC_WORK_POOL"]
    mounts = {re.sub(r"^\$\{[^}]*\}", "", v).split(":")[1] for v in services["worker"]["volumes"]}
    assert {image_env[DATA_DIR_ENV], "/shared"} <= mounts
    assert image_env[OUTPUT_DIR_ENV].startswith("/shared/")
    assert services["worker"]["build"]["dockerfile"] == "docker/Dockerfile"


def test_no_credentials_in_the_repository_and_versions_match():
    compose_text = (DOCKER / "compose.yaml").read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in compose_text
    for url in re.findall(r"postgres\w*(?:\+\w+)?://[^\s\"']+", compose_text):
        assert "${POSTGRES_PASSWORD}" in url, url
    assert re.search(r"^POSTGRES_PASSWORD=\s*$", (DOCKER / ".env.example").read_text(), re.M)
    assert "docker/.env" in (ROOT / ".gitignore").read_text().split()
    prefect_version = yaml.safe_load((ROOT / "prefect.yaml").read_text())["prefect-version"]
    image = _compose()["services"]["prefect-server"]["image"]
    assert image.split(":")[1].startswith(prefect_version + "-")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    mlflow_spec = next(d for d in deps if d.startswith("mlflow"))
    assert f'"{mlflow_spec}"' in (DOCKER / "mlflow.Dockerfile").read_text()


def test_kubernetes_template_requests_a_gpu_and_runs_as_non_root():
    import json

    tmpl = json.loads((DOCKER / "kubernetes-gpu-job-template.json").read_text())
    pod = tmpl["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_limit }}"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"gpu_limit", "image", "env"} <= set(tmpl["variables"]["properties"])
    assert set(_pools()["gpu_kubernetes"]["job_variables"]) - {"env"} <= set(tmpl["variables"]["properties"])
