"""End to end: `snakemake --profile slurm all` on the demo config against the real SLURM started by the
`slurm_cluster` fixture (two slurmd nodes on this machine). The profile sends training to SLURM, although the demo's
experiment files say launcher.cluster: local: each trains as a 2-node x 1-task DeepSpeed job through submitit.
Test-only overrides set sizes only (nodes, tasks, epochs, steps, resolution). Checks the exported FSNNs (fsnn.nir
included: run by a third-party consumer in the export's check and on the whole validation split in the evaluation),
the report, and the nested MLflow runs, each tagged with the SLURM job that trained it."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from support import demo_workflow, snakemake

pytestmark = pytest.mark.slow

# Sizes only: where training runs is the profile's to say.
TEST_OVERRIDES = [
    "launcher.nodes=2", "launcher.tasks_per_node=1",
    "trainer.epochs=1", "trainer.max_steps_per_epoch=3", "trainer.max_eval_batches=2", "trainer.progress=false",
    "data.resolution=16",
]


@pytest.mark.timeout(1800)
def test_snakemake_slurm_all_on_the_demo(slurm_cluster, tmp_path):
    config = demo_workflow(tmp_path, "e2e", TEST_OVERRIDES)
    proc = snakemake("slurm", tmp_path, config, timeout=1700)
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
        # fsnn.nir for every experiment (the SEW ADD baseline too, exported with --allow-not-full-spike): read back
        # and stepped by nirtorch + Norse, it spikes as the BN-folded FSNN does on the export's batch, and predicts
        # what it predicts on every sample of the validation split.
        assert (export / "fsnn.nir").is_file(), exp
        execution = report["nir"]["execution"]
        assert execution["spike_mismatches"] == 0 and execution["argmax_agreement"] == 1.0, (exp, execution)
        nir = evaluation["nir"]
        assert evaluation["complete_split"] and nir["samples"] == evaluation["samples"] > 0, (exp, nir)
        assert nir["prediction_agreement"] == 1.0, (exp, nir)
        metrics = json.loads((runs / exp / "metrics.json").read_text())
        assert metrics["final"]["world_size"] == 2  # both nodes took part
    assert (tmp_path / "results" / "e2e" / "report.md").read_text().count("demo_") >= len(experiments)
    assert list((tmp_path / "results" / "e2e" / "plots").glob("*.png"))

    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    parent_id = (runs / "parent_run_id").read_text().strip()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    kind = client.get_experiment(parent.info.experiment_id).tags.get("mlflow.experimentKind")
    assert kind == "custom_model_development"  # the UI opens it on its runs
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.data.params["name"] for r in children) == sorted(experiments)
    for child in children:
        # The job `dst launch` submitted to SLURM (its log says so) is the one the run was trained in.
        launched = (tmp_path / "logs" / "e2e" / f"train_{child.data.params['name']}.log").read_text()
        job = re.search(r"dst launch: submitted job (\S+) \((\w+):", launched)
        assert job and job.group(2) == "slurm", launched[-2000:]
        assert child.data.tags.get("slurm_job_id") == job.group(1), child.data.tags
        assert "val/fsnn_top1" in child.data.metrics
        # The export rule's --log-to-mlflow: the NIR file is in the training run; the report logs its evaluation.
        logged = {a.path for a in client.list_artifacts(child.info.run_id, "export")}
        assert "export/fsnn.nir" in logged, (child.data.params["name"], sorted(logged))
        assert child.data.metrics["eval/nir_prediction_agreement"] == 1.0
        assert "eval/nir_top1" in child.data.metrics
