"""The MLflow UI shows our runs: a real `mlflow server` on loopback over a temporary SQLite store, runs logged by the
engine's own Tracker (same param and metric names as training) nested under the workflow's parent run (`dst track
start`), `dst report` logging to that parent, and headless Chromium rendering the runs page at the URL `make demo`
prints (`dst track url`) and the run-comparison pages.

The UI is a JavaScript app, so pages are checked in the DOM Chromium renders (--dump-dom after a virtual-time budget),
and the REST API the UI reads is queried as a second check. Screenshots land in the test's tmp dir, and also in
results/ui-screenshots/ when DST_KEEP_SCREENSHOTS is set. Only the browser tests skip when Chromium is absent.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
EXPERIMENT = "dst-ui-test"
PARENT_NAME = "workflow-ui-test"
# shipped demo experiment -> final FSNN top-1 (distinct, so the UI's sort order is checkable)
RUNS = {"demo_fsnn_resnet18": 74.0, "demo_sew_resnet18_add": 69.0, "demo_fsnn_7b": 63.0}
EPOCHS = 4

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, payload: dict | None = None, timeout: float = 30) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


# ------------------------------------------------------------------------------------------------ server
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    mlflow_bin = VENV_BIN / "mlflow"
    if not mlflow_bin.exists():
        pytest.fail(f"{mlflow_bin} is missing: mlflow is a dependency of the project")
    base = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log_path = base / "server.log"
    # No job runner: by default the server also starts 7 huey consumer processes (GenAI jobs), heavy on 2 cores.
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "w") as log:
        # A session of its own: the finalizer stops the server and its workers as one process group.
        proc = subprocess.Popen([str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
                                 "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"],
                                cwd=base, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def stop():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server at {url} not healthy after 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop()


def history(final_top1: float, aap: bool) -> list[dict]:
    rows = []
    for e in range(1, EPOCHS + 1):
        frac = (1 - math.exp(-1.5 * e)) / (1 - math.exp(-1.5 * EPOCHS))
        h = {"epoch": e, "train/loss_fsnn": 2.0 - 0.3 * e, "lr": 0.1 / e, "throughput": 900.0 + e,
             "val/fsnn_top1": 10 + (final_top1 - 10) * frac, "val/fsnn_top5": 40 + 50 * frac, "firing_rate": 0.15}
        if aap:
            h.update({"train/loss_dsnn": 1.9 - 0.3 * e, "val/dsnn_top1": 12 + (final_top1 - 8) * frac,
                      "val/dsnn_top5": 45 + 50 * frac})
        h["train/loss"] = h["train/loss_fsnn"] + h.get("train/loss_dsnn", 0.0)
        rows.append(h)
    return rows


@pytest.fixture(scope="module")
def logged_runs(mlflow_server, tmp_path_factory):
    """The workflow's parent run and one nested run per demo experiment, logged by pipeline.tracking.Tracker."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    from pipeline.config import dump_config, load_config
    from pipeline.tracking import Tracker

    import mlflow
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")  # the Tracker sets mlflow's global URI (and this variable)
    base = tmp_path_factory.mktemp("ui_runs")
    # The experiment and the parent run as the workflow's tracking_parent rule makes them.
    assert main(["track", "start", "--tracking-uri", mlflow_server, "--experiment", EXPERIMENT, "--run-name",
                 PARENT_NAME, "--out", str(base / "parent_run_id")]) == 0
    parent = (base / "parent_run_id").read_text().strip()
    experiment_id = MlflowClient(tracking_uri=mlflow_server).get_run(parent).info.experiment_id
    runs = {}
    for name, final_top1 in RUNS.items():
        run_dir = base / name
        cfg = load_config(REPO / "config" / "experiments" / f"{name}.yaml", [
            f"output_dir={run_dir}", f"tracking.uri={mlflow_server}", f"tracking.experiment={EXPERIMENT}",
            f"tracking.parent_run_id={parent}", "tracking.log_system_metrics=false"])
        tracker = Tracker(cfg, enabled=True, retry_wait_s=0.5)
        run_id = tracker.start(None, {"host": "ui-test"})
        hist = history(final_top1, cfg.model.aap)
        for h in hist:
            tracker.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
        tracker.end()
        # The run directory `dst train` would leave (plus `dst export`/`dst evaluate` outputs) for `dst report`.
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        final = {**hist[-1], "best_fsnn_top1": final_top1, "best_epoch": EPOCHS, "mlflow_run_id": run_id}
        (run_dir / "metrics.json").write_text(json.dumps({"final": final, "history": hist}))
        if cfg.model.connect != "ADD":  # `dst export` refuses SEW ADD: no export, no eval for it
            (run_dir / "export").mkdir()
            section = {"acs": 2.1e6, "macs": 0.4e6, "energy_mj": 0.0037, "mean_neuron_firing_rate": 0.14}
            (run_dir / "export" / "report.json").write_text(json.dumps({
                "parameters": {"fsnn": 130000, "aap": 0}, "full_spike_check": {"ok": True}, "fsnn": section,
                "dsnn": {**section, "energy_mj": 0.0039} if cfg.model.aap else None}))
            (run_dir / "eval.json").write_text(json.dumps({
                "fsnn_top1": final_top1 - 0.5, "fsnn_top5": 99.0, "dsnn_top1": final_top1 + 1 if cfg.model.aap
                else None, "dsnn_top5": 99.5 if cfg.model.aap else None, "firing_rate": 0.141, "samples": 120,
                "export_dir": str(run_dir / "export")}))
        runs[name] = {"run_id": run_id, "dir": run_dir, "aap": cfg.model.aap}
    mlflow.set_tracking_uri(previous_uri)  # None unsets it: later tests see the environment they started with
    return {"url": mlflow_server, "experiment_id": experiment_id, "parent": parent, "runs": runs, "base": base}


# ------------------------------------------------------------------------------------------------ browser
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")


def visible_text(dom: str) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", text)


def render(url: str, screenshot: Path, must_contain: list[str], window: str = "1600,1000",
           with_dom: bool = False):
    """Load url in headless Chromium, save a screenshot, return the rendered page text (and the DOM). A slow machine
    gets a second try with a longer virtual-time budget; a fresh profile each time, so no UI state persists."""
    browser = chromium()
    text = dom = ""
    for budget in (15000, 40000):
        profile = screenshot.parent / f".chromium-{screenshot.stem}-{budget}"
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={window}", f"--virtual-time-budget={budget}",
               f"--screenshot={screenshot}", "--dump-dom", url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        shutil.rmtree(profile, ignore_errors=True)
        dom = proc.stdout
        text = visible_text(dom)
        if all(s in text for s in must_contain):
            break
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, f"no screenshot of {url}"
    if os.environ.get("DST_KEEP_SCREENSHOTS"):
        keep = REPO / "results" / "ui-screenshots"
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(screenshot, keep / screenshot.name)
    return (text, dom) if with_dom else text


def printed_runs_url(ui: dict) -> str:
    """The runs page `make demo` prints (`dst track url`), for this test's server."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["track", "url", "--experiment", EXPERIMENT, "--tracking-uri", ui["url"],
                     "--ui-url", ui["url"]]) == 0
    return out.getvalue().strip()


def compare_url(ui: dict, run_ids: list[str]) -> str:
    query = f"?runs={json.dumps(run_ids)}&experiments={json.dumps([ui['experiment_id']])}"
    return f"{ui['url']}/#/compare-runs{urllib.parse.quote(query, safe='?=&')}"


def compared_metrics(dom: str) -> tuple[list[str], dict[str, list[str]]]:
    """The compare page's runs (its columns, left to right) and each row of its Metrics table: metric -> the values
    in that row, left to right. The table is two virtualized grids (names, values) of absolutely placed cells: a
    cell's `top` is its row, its `left` its column."""
    names_row = re.search(r"Run Name:</th>(.*?)</tr>", dom, re.S)
    assert names_row, "no Run Name row on the compare page"
    runs = [visible_text(td).strip() for td in re.findall(r"<td[^>]*>(.*?)</td>", names_row.group(1), re.S)]
    start = dom.index(">Metrics<")
    grids = dom[start:dom.index(">Artifacts<", start)].split('role="grid"')[1:]
    assert len(grids) == 2, "the Metrics table is not a grid of names and a grid of values"
    cell = re.compile(r'<div[^>]*style="[^"]*left: (\d+)px;[^"]*top: (\d+)px;[^"]*">(.*?)</div>', re.S)
    metric_at = {top: visible_text(body).strip() for _, top, body in cell.findall(grids[0])}
    rows: dict[str, list[tuple[int, str]]] = {}
    for left, top, body in cell.findall(grids[1]):
        rows.setdefault(metric_at[top], []).append((int(left), visible_text(body).strip()))
    return runs, {metric: [value for _, value in sorted(cells)] for metric, cells in rows.items()}


# ------------------------------------------------------------------------------------------------ tests
def test_rest_api_has_the_nested_runs_with_engine_names(logged_runs):
    ui = logged_runs
    experiment = http_json(f"{ui['url']}/api/2.0/mlflow/experiments/get?experiment_id={ui['experiment_id']}")
    tags = {t["key"]: t["value"] for t in experiment["experiment"].get("tags", [])}
    assert tags.get("mlflow.experimentKind") == "custom_model_development"  # a model-training experiment
    found = http_json(f"{ui['url']}/api/2.0/mlflow/runs/search", {
        "experiment_ids": [ui["experiment_id"]], "filter": f"tags.mlflow.parentRunId = '{ui['parent']}'",
        "max_results": 50})["runs"]
    by_name = {r["info"]["run_name"]: r for r in found}
    assert set(by_name) == set(RUNS)
    for name, final_top1 in RUNS.items():
        data = by_name[name]["data"]
        params = {p["key"]: p["value"] for p in data["params"]}
        metrics = {m["key"]: m["value"] for m in data["metrics"]}
        assert params["name"] == name and params["model.T"] and params["model.connect"] in ("IAND", "ADD")
        assert params["model.aap"] == str(ui["runs"][name]["aap"])
        assert metrics["val/fsnn_top1"] == pytest.approx(final_top1)
        assert "train/loss_fsnn" in metrics and "firing_rate" in metrics
        assert ("val/dsnn_top1" in metrics) == ui["runs"][name]["aap"]
        assert ("train/loss_dsnn" in metrics) == ui["runs"][name]["aap"]
    history = http_json(f"{ui['url']}/api/2.0/mlflow/metrics/get-history?run_id={ui['runs']['demo_fsnn_7b']['run_id']}"
                        f"&metric_key=val/dsnn_top1")["metrics"]
    assert [m["step"] for m in history] == list(range(1, EPOCHS + 1))


def test_the_printed_runs_url_opens_on_the_nested_runs(logged_runs, tmp_path):
    ui = logged_runs
    url = printed_runs_url(ui)
    assert url.startswith(f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs?")
    names = list(RUNS)  # in descending val/fsnn_top1
    text = render(url, tmp_path / "runs_page.png", names + [PARENT_NAME])
    assert "Send your first trace" not in text, "opened on MLflow's GenAI page"
    # The UI's Model training side (Runs, Models, ..., Model registry), not its GenAI one (Overview, Observability).
    assert "Model registry" in text and "Observability" not in text, text[:2000]
    for name in names + [PARENT_NAME]:  # the nested runs by name, not folded under the parent
        assert name in text, f"{name} not rendered on the runs page: {text[:2000]}"
    positions = [text.index(n) for n in names]
    assert positions == sorted(positions), "runs are not in the order of their val/fsnn_top1"

    metrics = ["val/fsnn_top1", "val/dsnn_top1", "train/loss_fsnn", "train/loss_dsnn"]
    charts = render(f"{url}&compareRunsMode=CHART", tmp_path / "runs_charts.png", metrics + names)
    for key in metrics:
        assert key in charts, f"no chart of {key}: {charts[:2000]}"
    for name in names:
        assert f"{name} (val/fsnn_top1)" in charts  # each run is a series of the FSNN accuracy chart


def test_compare_page_shows_params_and_both_streams(logged_runs, tmp_path):
    ui = logged_runs
    run_ids = sorted(r["run_id"] for r in ui["runs"].values())
    text = render(compare_url(ui, run_ids), tmp_path / "compare_runs.png", list(RUNS) + ["val/dsnn_top1"],
                  window="1600,2200")
    assert "Comparing 3 Runs" in text
    for name in RUNS:
        assert name in text
    for key in ("model.name", "model.T", "model.aap", "model.connect", "val/fsnn_top1", "val/fsnn_top5",
                "val/dsnn_top1", "train/loss_fsnn", "train/loss_dsnn", "firing_rate"):
        assert key in text, f"{key} missing on the compare page"
    assert "fsnn_resnet18" in text and "fsnn_7b_net" in text and "sew_resnet18" in text  # model.name values


def test_compare_view_of_two_nested_runs_puts_both_streams_side_by_side(logged_runs, tmp_path):
    ui = logged_runs
    pair = ["demo_fsnn_resnet18", "demo_fsnn_7b"]  # both train with the AAP: both streams logged
    run_ids = [ui["runs"][name]["run_id"] for name in pair]
    text, dom = render(compare_url(ui, run_ids), tmp_path / "compare_two_runs.png",
                       pair + ["val/fsnn_top1", "val/dsnn_top1"], window="1600,2200", with_dom=True)
    assert "Comparing 2 Runs" in text
    runs, rows = compared_metrics(dom)
    assert sorted(runs) == sorted(pair), runs
    final = {name: history(RUNS[name], aap=True)[-1] for name in pair}
    for key in ("val/fsnn_top1", "val/dsnn_top1"):  # one row each, one column per run
        assert key in rows, f"no {key} row: {sorted(rows)}"
        assert [float(v) for v in rows[key]] == pytest.approx([final[name][key] for name in runs], abs=1e-3), key


def test_report_logs_to_the_parent_and_the_ui_shows_it(logged_runs, tmp_path, capsys):
    ui = logged_runs
    out = tmp_path / "results" / "ui-test"
    dirs = [str(r["dir"]) for r in ui["runs"].values()]
    capsys.readouterr()
    assert main(["report", "--runs", *dirs, "--out", str(out), "--tracking-uri", ui["url"],
                 "--parent-run-id", ui["parent"]]) == 0, capsys.readouterr().err
    listing = http_json(f"{ui['url']}/api/2.0/mlflow/artifacts/list?run_id={ui['parent']}&path=report")
    names = {Path(f["path"]).name for f in listing.get("files", [])}
    assert {"report.md", "summary.csv", "summary.json", "plots"} <= names
    plots = http_json(f"{ui['url']}/api/2.0/mlflow/artifacts/list?run_id={ui['parent']}&path=report/plots")
    assert {"training_curves.png", "accuracy_vs_energy.png"} <= {Path(f["path"]).name for f in plots["files"]}
    child = http_json(f"{ui['url']}/api/2.0/mlflow/runs/get?run_id={ui['runs']['demo_fsnn_7b']['run_id']}")
    metrics = {m["key"]: m["value"] for m in child["run"]["data"]["metrics"]}
    assert metrics["eval/fsnn_top1"] == pytest.approx(RUNS["demo_fsnn_7b"] - 0.5)
    assert metrics["export/energy_mj"] == pytest.approx(0.0037)
    sew = http_json(f"{ui['url']}/api/2.0/mlflow/runs/get?run_id={ui['runs']['demo_sew_resnet18_add']['run_id']}")
    assert not any(m["key"].startswith("eval/") for m in sew["run"]["data"]["metrics"])

    # The parent run's artifact view, opened on the logged plot: the UI lists the report files and previews the PNG.
    artifact = "report/plots/accuracy_vs_energy.png"
    url = f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs/{ui['parent']}/artifacts/{artifact}"
    text, dom = render(url, tmp_path / "parent_artifacts.png", [PARENT_NAME, "summary.csv"], with_dom=True)
    for name in (PARENT_NAME, "report.md", "summary.csv", "training_curves.png", artifact):
        assert name in text, f"{name} not on the artifacts page"
    assert re.search(r'<img[^>]+alt="report/plots/accuracy_vs_energy\.png"', dom), "the plot is not previewed"


def test_report_errors_for_an_unknown_parent_and_a_server_that_is_down(logged_runs, tmp_path, capsys, monkeypatch):
    ui = logged_runs
    run_dir = str(next(iter(ui["runs"].values()))["dir"])
    capsys.readouterr()
    assert main(["report", "--runs", run_dir, "--out", str(tmp_path / "a"), "--tracking-uri", ui["url"],
                 "--parent-run-id", "0" * 32]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0" * 32 in err and ui["url"] in err
    assert not (tmp_path / "a").exists()

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = f"http://127.0.0.1:{free_port()}"
    assert main(["report", "--runs", run_dir, "--out", str(tmp_path / "b"), "--tracking-uri", down,
                 "--parent-run-id", ui["parent"]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and down in err and "not reachable" in err
    assert not (tmp_path / "b").exists()
