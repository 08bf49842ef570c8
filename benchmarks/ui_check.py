"""What a user sees, checked in a real browser: a Prefect server and an MLflow server on 127.0.0.1 (SQLite, in a
temporary folder), the README's pool and deploy commands, two small sparsify runs (different ``--geo.eta``)
tracked there, then headless Chromium (Debian's ``chromium``, driven by Playwright with ``executable_path``)
screenshots: the sparsify deployment's Custom run form (its fields' descriptions among them), a flow run's
artifacts (progress and results), an MLflow child run's metric charts, the Compare view of the two geodesic
runs and a parent run's System metrics (the machine's load and the flow process's share while the flow ran). Prints what it read off the pages and where the screenshots are; look at them.

    pip install -e '.[ui-check]'      # Playwright; no browser download: Chromium comes from the system
                                      # (Debian: apt-get install chromium)
    python benchmarks/ui_check.py --data-dir ../shared/data [--out ui-check] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer in {timeout} s")


def api(url: str, body: dict | None = None):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", default="ui-check")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--prefect-port", type=int, default=4299)
    ap.add_argument("--mlflow-port", type=int, default=5099)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="geodesic-ui-"))
    prefect_url, mlflow_url = f"http://127.0.0.1:{args.prefect_port}", f"http://127.0.0.1:{args.mlflow_port}"
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "PREFECT_API_URL": f"{prefect_url}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_TRACKING_URI": mlflow_url, "GEODESIC_DATA_DIR": str(Path(args.data_dir).resolve()),
           "GEODESIC_OUTPUT_DIR": str(work / "outputs"), "GEODESIC_PROJECT_DIR": str(ROOT),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(work / "results"), "PYTHONPATH": str(ROOT),
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "2"}  # the parent runs' system metrics: a few points each
    servers = [
        subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                          str(args.prefect_port)], env=env, stdout=open(work / "prefect.log", "w"),
                         stderr=subprocess.STDOUT),
        subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(args.mlflow_port),
                          "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}", "--artifacts-destination",
                          str(work / "mlartifacts")], env=env, stdout=open(work / "mlflow.log", "w"),
                         stderr=subprocess.STDOUT)]
    try:
        wait_http(f"{prefect_url}/api/health")
        wait_http(f"{mlflow_url}/health")
        run = lambda *cmd, cwd=ROOT: subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True, text=True)
        # the README's commands, as written: the shipped pool, then the GPU process pool on a copy
        run(str(BIN / "prefect"), "work-pool", "create", "local-process", "--type", "process")
        run(str(BIN / "prefect"), "--no-prompt", "deploy", "--all")
        pools = lambda: sorted({(d["name"], d["work_pool_name"]) for d in api(f"{prefect_url}/api/deployments/filter", {})})
        print("deployed as shipped:", pools())
        gpu = work / "gpu"
        shutil.copytree(ROOT, gpu, ignore=shutil.ignore_patterns(".venv", ".git", "outputs", "ui-check", ".c10", ".whl"))
        run("sed", "-i", r"s/<<: \*local_process/<<: *gpu_process/", "prefect.yaml", cwd=gpu)
        run(str(BIN / "prefect"), "work-pool", "create", "gpu-process", "--type", "process", cwd=gpu)
        run(str(BIN / "prefect"), "--no-prompt", "deploy", "--all", cwd=gpu)
        print("deployed after the README's GPU-pool commands:", pools())
        # two small runs that differ in geo.eta, tracked on the servers (the default adaptive schedule, in at
        # most 4 stages of 12 steps: its stage titles and its histories, from which undone stages are dropped)
        tiny = ["--sparsity", "90", "--stages", "2", "--max-stages", "4", "--geo.max-steps", "12", "--eval-every", "3",
                "--train.epochs", "1", "--finetune.epochs", "1", "--no-finetune.equal-time", "--progress", "log"]
        for eta in ("0.2", "0.1"):
            run(str(BIN / "python"), "-m", "flows.cli", "sparsify", "--data-dir", env["GEODESIC_DATA_DIR"], *tiny,
                "--geo.eta", eta, cwd=work)
        # and one small connect run: its child runs, the two Bezier curves and the relaxed geodesic among them, in
        # MLflow's run list
        run(str(BIN / "python"), "-m", "flows.cli", "connect", "--data-dir", env["GEODESIC_DATA_DIR"], "--train.epochs",
            "1", "--bezier-train.epochs", "1", "--geo.max-steps", "40", "--max-segments", "1", "--eval-every", "10",
            "--linear-points", "5", "--relax-epochs", "1", "--relax-lr", "0.001", "--progress", "log", cwd=work)
        shots(args.chromium, out, prefect_url, mlflow_url)
    finally:
        for p in servers:
            p.terminate()
        for p in servers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"screenshots in {out}")


def shots(chromium: str, out: Path, prefect_url: str, mlflow_url: str) -> None:
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    deployment = next(d for d in api(f"{prefect_url}/api/deployments/filter", {})
                      if d["name"] == "sparsify")
    flow_run = api(f"{prefect_url}/api/flow_runs/filter", {"flows": {"name": {"any_": ["sparsify"]}},
                                                          "sort": "START_TIME_DESC", "limit": 1})[0]  # the last sparsify run
    client = MlflowClient(mlflow_url)
    exp = client.get_experiment_by_name("geodesic-sparsify")
    geo = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "geodesic-90"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(f"{prefect_url}/deployments/deployment/{deployment['id']}/run", wait_until="networkidle")
        page.wait_for_timeout(3000)
        page.screenshot(path=str(out / "prefect-custom-run-form.png"))
        page.get_by_text("Eta", exact=False).first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "prefect-custom-run-form-geo.png"))
        body = page.inner_text("body")
        print("Custom run form mentions:", [w for w in ("Eta", "Max Steps", "Anchor", "Distill Steps", "Epochs")
                                            if w in body])
        # each field's description (its docstring, also its --help line) under its label
        print("Custom run form describes:", {w: w in " ".join(body.split()) for w in (
            "η of eq. 7: the step length in weight space",
            "Weight of the Gauss-Newton correction after each step toward the anchor outputs",
            "Target sparsity levels in percent", "The closing correction after the final projection")})
        page.get_by_text("Weight of the Gauss-Newton correction", exact=False).first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "prefect-custom-run-form-anchor.png"))
        values = page.eval_on_selector_all("input", "els => els.map(e => [e.name || e.id || '', e.value])")
        print("form values (first 60):", [v for v in values if v[1]][:60])
        # the deep-network settings (width, depth, filter count) and the label-free peer's, on both forms
        for name in ("sparsify", "connect"):
            dep = next(d for d in api(f"{prefect_url}/api/deployments/filter", {}) if d["name"] == name)
            page.goto(f"{prefect_url}/deployments/deployment/{dep['id']}/run", wait_until="networkidle")
            page.wait_for_timeout(3000)
            page.get_by_text("Width (Optional)", exact=True).first.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / f"prefect-{name}-form-width.png"))
            body = page.inner_text("body")
            wanted = (("Width", "Depth", "N Filters", "Distill Lr", "Nonfinite Retries",
                       "Both baselines' learning-rate schedule", "so each peer is read at the end of an annealed run",
                       "so the label-free peer gets the loss the geodesic ends with") if name == "sparsify" else
                      ("Width", "Depth", "Bezier Equal Time", "Bezier Distill", "Bezier Distill Lr",
                       "Bezier Distill Temperature", "Relax Epochs", "Relax Temperature", "Bn Anchor",
                       "Nonfinite Retries", "Align (Optional)", "permute w_2's hidden units to match w_1's"))
            print(f"{name} form shows:", {w: w in " ".join(body.split()) for w in wanted})
            if name == "connect":  # the alignment switch: a choice of auto, activations, none
                page.get_by_text("Align (Optional)", exact=True).first.scroll_into_view_if_needed()
                page.wait_for_timeout(500)
                page.screenshot(path=str(out / "prefect-connect-form-align.png"))
                # the closing correction, on by default: the field's value as the form shows it
                label = page.get_by_text("Relax Epochs (Optional)", exact=True).first
                label.scroll_into_view_if_needed()
                page.wait_for_timeout(500)
                field = label.locator("xpath=ancestor::*[.//input][1]").locator("input").first
                print("connect form Relax Epochs value:", field.input_value())
                page.screenshot(path=str(out / "prefect-connect-form-relax.png"))
                # a step that overflows is taken again shorter: the geo field, its default and its description
                label = page.get_by_text("Nonfinite Retries (Optional)", exact=True).first
                label.scroll_into_view_if_needed()
                page.wait_for_timeout(500)
                field = label.locator("xpath=ancestor::*[.//input][1]").locator("input").first
                print("connect form Nonfinite Retries value:", field.input_value(), "described:",
                      "is taken again from the last good weights" in page.inner_text("body"))
                page.screenshot(path=str(out / "prefect-connect-form-retries.png"))
            # the model and dataset fields: a registered name from a list, or an import path typed in
            page.get_by_text("Model (Optional)", exact=True).first.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            body = page.inner_text("body")
            print(f"{name} form model/dataset choices:", {w: w in body for w in (
                "Registered", "torchvision:<name> or module:callable", "module:callable", "lenet300", "mnist")})
            page.get_by_text("torchvision:<name> or module:callable", exact=True).first.click()  # type a path
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out / f"prefect-{name}-form-model.png"))
        # the continual form: the switch that runs the sequential baselines at the geodesic's wall time
        dep = next(d for d in api(f"{prefect_url}/api/deployments/filter", {}) if d["name"] == "continual")
        page.goto(f"{prefect_url}/deployments/deployment/{dep['id']}/run", wait_until="networkidle")
        page.wait_for_timeout(3000)
        page.get_by_text("Equal Time (Optional)", exact=True).first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "prefect-continual-form-equal-time.png"))
        print("continual form shows:", {w: w in page.inner_text("body") for w in (
            "Equal Time", "(methods sgd_equal_time, l2_equal_time, ewc_equal_time)", "Ewc Strength",
            "Align (Optional)", "permute w_i's hidden units to match",
            "None: the scenario's: none for permuted_mnist; auto for mnist_fashion, mnist_fashion_heads",
            "Fisher Weight (Optional)", "None: the scenario's: 1 for permuted_mnist, mnist_fashion, "
            "mnist_fashion_heads", "Refit Head (Optional)",
            "None: the scenario's: false for permuted_mnist, mnist_fashion; true for mnist_fashion_heads",
            "Polish Epochs (Optional)", "None: the scenario's: 2 for permuted_mnist, mnist_fashion_heads; 0 for "
            "mnist_fashion", "Polish Strength", "Start Mix", "each per-task network of the geodesic's chain")})
        page.get_by_text("Align (Optional)", exact=True).first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "prefect-continual-form-align.png"))
        page.get_by_text("Fisher Weight (Optional)", exact=True).first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "prefect-continual-form-fisher-weight.png"))
        page.get_by_text("Refit Head (Optional)", exact=True).first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "prefect-continual-form-refit-head.png"))
        page.get_by_text("Polish Epochs (Optional)", exact=True).first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "prefect-continual-form-polish.png"))
        page.get_by_text("Start Mix").first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "prefect-continual-form-start-mix.png"))
        page.goto(f"{prefect_url}/runs/flow-run/{flow_run['id']}", wait_until="networkidle")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.wait_for_timeout(3000)
        page.screenshot(path=str(out / "prefect-flow-run-artifacts.png"))
        print("flow run artifacts tab:", page.inner_text("body")[300:1300].replace("\n", " | "))
        task_run = next(t for t in api(f"{prefect_url}/api/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
                        if t["name"].startswith("geodesic_segment"))
        page.goto(f"{prefect_url}/runs/task-run/{task_run['id']}", wait_until="networkidle")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.wait_for_timeout(2000)
        page.get_by_text("geodesic 90%, stage").first.click()  # the artifact itself: its progress bar
        page.wait_for_timeout(3000)
        page.screenshot(path=str(out / "prefect-task-run-progress.png"))
        print("task run artifacts tab:", page.inner_text("body")[300:1100].replace("\n", " | "))
        run_id = geo[0].info.run_id
        page.goto(f"{mlflow_url}/#/experiments/{exp.experiment_id}/runs/{run_id}/model-metrics", wait_until="load")
        page.wait_for_timeout(8000)  # MLflow's UI keeps polling: the network never goes idle
        page.screenshot(path=str(out / "mlflow-geodesic-run-charts.png"), full_page=True)
        # the experiment's chart view, filtered to the geodesic child runs of both flow runs: their histories
        # overlaid against the step
        query = urllib.parse.quote("attributes.run_name = 'geodesic-90'")
        page.goto(f"{mlflow_url}/#/experiments/{exp.experiment_id}/runs?compareRunsMode=CHART&searchFilter={query}",
                  wait_until="load")
        page.wait_for_timeout(8000)
        for cell in page.locator('[role=gridcell]:has-text("sparsify-lenet300")').all():  # expand the parents
            cell.locator("button").first.click()
            page.wait_for_timeout(1000)
        page.wait_for_timeout(5000)
        page.screenshot(path=str(out / "mlflow-runs-chart-view.png"))
        ids = json.dumps([r.info.run_id for r in geo])
        page.goto(f"{mlflow_url}/#/compare-runs?runs={ids}&experiments={json.dumps([exp.experiment_id])}",
                  wait_until="load")
        page.wait_for_timeout(8000)
        page.screenshot(path=str(out / "mlflow-compare-geodesic-runs.png"), full_page=True)
        body = page.inner_text("body")
        print("compare page mentions geo.eta:", "geo.eta" in body, "| each run's load (machine_cpu_percent, "
              "process_cpu_percent):", "machine_cpu_percent" in body, "process_cpu_percent" in body)
        # the last sparsify flow run's parent: the machine's load while it ran (MLflow's System metrics tab)
        parent = client.search_runs([exp.experiment_id], "tags.`geodesic.role` = 'parent'",
                                    order_by=["attributes.start_time DESC"], max_results=1)[0]
        page.goto(f"{mlflow_url}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/system-metrics",
                  wait_until="load")
        page.wait_for_timeout(8000)
        page.screenshot(path=str(out / "mlflow-parent-system-metrics.png"), full_page=True)
        body = page.inner_text("body")
        print("parent run's system metrics tab shows:", {w: w in body for w in (
            "cpu_utilization_percentage", "process_cpu_utilization_percentage", "system_memory_usage_megabytes")})
        # the connect experiment's run list, its parent expanded: one child run per path
        cexp = client.get_experiment_by_name("geodesic-connect")
        page.goto(f"{mlflow_url}/#/experiments/{cexp.experiment_id}/runs", wait_until="load")
        page.wait_for_timeout(8000)
        for cell in page.locator('[role=gridcell]:has-text("connect-lenet300")').all():
            cell.locator("button").first.click()
            page.wait_for_timeout(1000)
        page.wait_for_timeout(3000)
        page.screenshot(path=str(out / "mlflow-connect-runs.png"))
        body = page.inner_text("body")
        print("connect run list shows:", {w: w in body for w in (
            "geodesic-lenet300-mnist", "geodesic_relaxed-lenet300-mnist", "linear-lenet300-mnist",
            "bezier-lenet300-mnist", "bezier_distill-lenet300-mnist")})
        browser.close()


if __name__ == "__main__":
    main()
