"""End to end: `snakemake --profile slurm all` on the demo config against the real SLURM started by the
`slurm_cluster` fixture (two slurmd nodes on this machine). Training runs as 2-node x 1-task DeepSpeed jobs through
submitit; test-only overrides shrink the epochs and set the partition. Checks the exported FSNNs, the report and the
nested MLflow runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

TEST_OVERRIDES = [
    "launcher.cluster=slurm", "launcher.nodes=2", "launcher.tasks_per_node=1", "launcher.cpus_per_task=1",
    "launcher.partition=debug", "launcher.time_min=20",
    "trainer.epochs=1", "trainer.max_steps_per_epoch=3", "trainer.max_eval_batches=2", "trainer.progress=false",
    "data.resolution=16",
]


def workflow_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["campaign"] = "e2e"
    cfg["tracking"]["uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    for spec in cfg["experiments"].values():
        spec["config"] = str(ROOT / spec["config"])
    cfg["overrides"] = TEST_OVERRIDES
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.timeout(1800)
def test_snakemake_slurm_all_on_the_demo(slurm_cluster, tmp_path):
    config = workflow_config(tmp_path)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(
        [str(BIN / "snakemake"), "all", "--profile", "slurm", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700)
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((tmp_path / "logs").rglob("*.log")))
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs[-12000:]}"

    experiments = yaml.safe_load(config.read_text())["experiments"]
    runs = tmp_path / "runs" / "e2e"
    for exp in experiments:
        export = runs / exp / "export"
        assert (export / "fsnn.pt").is_file() and (export / "fsnn.ts").is_file()
        report = json.loads((export / "report.json").read_text())
        assert report, exp
        evaluation = json.loads((runs / exp / "eval.json").read_text())
        assert 0 <= evaluation["fsnn_top1"] <= 100
        metrics = json.loads((runs / exp / "metrics.json").read_text())
        assert metrics["final"]["world_size"] == 2  # both nodes took part
    assert (tmp_path / "results" / "e2e" / "report.md").read_text().count("demo_") >= len(experiments)
    assert list((tmp_path / "results" / "e2e" / "plots").glob("*.png"))

    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    parent_id = (runs / "parent_run_id").read_text().strip()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.data.params["name"] for r in children) == sorted(experiments)
    for child in children:
        assert child.data.tags.get("slurm_job_id"), child.data.tags
        assert "val/fsnn_top1" in child.data.metrics
