"""The training engine on real components: DeepSpeed with 2 gloo ranks (torchrun), ZeRO 0 and 2, checkpoints and
resume, a NaN stop, a real `mlflow server` on loopback, and config errors before any work."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import experiment as tiny_experiment
from support import shared_demo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory) -> Path:
    """The demo digits prepared as FFCV files (the real preparation code), shared with the fault tests."""
    return shared_demo(tmp_path_factory) / "images"


def experiment(tmp_path: Path, data_root: Path, **sections) -> Path:
    """support.experiment with MLflow tracking into a SQLite store under tmp_path (sections may override it)."""
    tracking = {"enabled": True, "uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "test"}
    tracking.update(sections.pop("tracking", {}))
    return tiny_experiment(tmp_path, data_root, tracking=tracking, **sections)


def dst_train(config: Path, *overrides: str, ranks: int = 1, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    if ranks == 1:
        cmd = [BIN / "dst", "train", "--config", config, *overrides]
    else:
        cmd = [BIN / "torchrun", "--nproc-per-node", str(ranks), "--master-port", str(_free_port()),
               "-m", "pipeline.cli", "train", "--config", config, *overrides]
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.mark.timeout(600)
def test_two_gloo_ranks_train_with_zero_0(tmp_path, demo_images):
    _ok(dst_train(experiment(tmp_path, demo_images, trainer={"zero_stage": 0, "epochs": 1}), ranks=2))
    final = metrics(tmp_path / "run")["final"]
    assert final["world_size"] == 2 and final["epoch"] == 1
    from pipeline.checkpoint import load_for_export
    assert load_for_export(tmp_path / "run" / "checkpoints").state_dict["fc.weight"].dtype.is_floating_point


@pytest.mark.timeout(900)
@pytest.mark.parametrize("zero_stage", [2])
def test_two_gloo_ranks_train_and_resume_equivalently(tmp_path, demo_images, zero_stage):
    """2 ranks, 2 epochs straight == 1 epoch, stop, resume for the 2nd (same seed, CPU, float tolerance), with the
    training augmentations on: the sample order per epoch and the per-image crop and flip seeds repeat; the model,
    optimizer and schedule state are what resume restores.
    """
    straight = experiment(tmp_path / "a", demo_images, trainer={"zero_stage": zero_stage}, data={"augment": True})
    _ok(dst_train(straight, ranks=2))
    full = metrics(tmp_path / "a" / "run")
    assert full["final"]["world_size"] == 2
    assert [h["epoch"] for h in full["history"]] == [1, 2]
    for key in ("train/loss_fsnn", "train/loss_dsnn", "val/fsnn_top1", "val/fsnn_top5", "val/dsnn_top1",
                "val/dsnn_top5", "firing_rate", "lr", "throughput"):
        assert key in full["history"][-1], key
    ckpts = tmp_path / "a" / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "epoch0002"

    interrupted = experiment(tmp_path / "b", demo_images, trainer={"zero_stage": zero_stage}, data={"augment": True})
    _ok(dst_train(interrupted, "trainer.epochs=1", ranks=2))
    assert (tmp_path / "b" / "run" / "checkpoints" / "latest").read_text().strip() == "epoch0001"
    # The schedule depends on the total epochs: the resumed run states the same total as the straight one.
    resumed = dst_train(interrupted, ranks=2)
    _ok(resumed)
    res = metrics(tmp_path / "b" / "run")
    for key in ("train/loss", "train/loss_dsnn", "val/fsnn_top1", "val/dsnn_top1"):
        assert res["history"][-1][key] == pytest.approx(full["history"][-1][key], rel=1e-4, abs=1e-5), key
    # A spike is a threshold on a float sum: reduction-order noise flips a handful of the ~10^6 spikes.
    assert res["history"][-1]["firing_rate"] == pytest.approx(full["history"][-1]["firing_rate"], rel=2e-3)


@pytest.mark.timeout(600)
def test_resume_continues_the_same_mlflow_run(tmp_path, demo_images):
    from mlflow.tracking import MlflowClient
    cfg = experiment(tmp_path, demo_images, trainer={"epochs": 1, "max_steps_per_epoch": 2})
    _ok(dst_train(cfg))
    first = metrics(tmp_path / "run")["final"]["mlflow_run_id"]
    _ok(dst_train(cfg, "trainer.epochs=2"))
    second = metrics(tmp_path / "run")["final"]["mlflow_run_id"]
    assert first == second
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    history = client.get_metric_history(first, "val/fsnn_top1")
    assert [m.step for m in history] == [1, 2]
    run = client.get_run(first)
    assert run.data.params["model.name"] == "fsnn_resnet18" and run.data.params["model.T"] == "2"
    assert run.data.tags["world_size"] == "1" and "git_commit" in run.data.tags


@pytest.mark.timeout(600)
def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, demo_images):
    cfg = experiment(tmp_path, demo_images, trainer={"epochs": 1, "max_steps_per_epoch": 2})
    _ok(dst_train(cfg))
    ckpts = tmp_path / "run" / "checkpoints"
    before = sorted(p.name for p in ckpts.iterdir())
    # An absurd learning rate makes the weights overflow, and the loss becomes non-finite within a few steps.
    proc = dst_train(cfg, "trainer.epochs=3", "optimizer.lr=1e30", "trainer.max_steps_per_epoch=10")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "non-finite loss" in proc.stderr and "epoch 2" in proc.stderr
    assert (ckpts / "latest").read_text().strip() == "epoch0001"
    assert sorted(p.name for p in ckpts.iterdir()) == before


@pytest.mark.timeout(300)
def test_debug_run_is_one_process_a_few_steps_no_tracking(tmp_path, demo_images):
    cfg = experiment(tmp_path, demo_images, trainer={"epochs": 5, "max_steps_per_epoch": 50})
    _ok(dst_train(cfg, "--debug"))
    final = metrics(tmp_path / "run-debug")["final"]
    assert final["world_size"] == 1 and final["epoch"] == 1 and final["mlflow_run_id"] is None
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.timeout(300)
def test_config_errors_before_any_work(tmp_path, demo_images):
    cfg = experiment(tmp_path, demo_images)
    proc = dst_train(cfg, "trainer.epocs=2")
    assert proc.returncode == 2
    assert "trainer.epocs" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([BIN / "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start within 120 s")
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@pytest.mark.timeout(600)
def test_run_is_logged_to_a_real_mlflow_server(tmp_path, demo_images, mlflow_server):
    from mlflow.tracking import MlflowClient
    cfg = experiment(tmp_path, demo_images, trainer={"epochs": 1, "max_steps_per_epoch": 2},
                     tracking={"uri": mlflow_server, "experiment": "served"})
    _ok(dst_train(cfg))
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("served")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    data = runs[0].data
    for key in ("train/loss_fsnn", "train/loss_dsnn", "val/fsnn_top1", "val/dsnn_top1", "firing_rate", "lr"):
        assert key in data.metrics, key
    assert data.params["model.aap"] == "True" and data.params["model.connect"] == "IAND"
    assert "config.yaml" in [a.path for a in client.list_artifacts(runs[0].info.run_id)]


@pytest.mark.timeout(300)
def test_unreachable_tracking_server_is_a_clear_error(tmp_path, demo_images):
    cfg = experiment(tmp_path, demo_images, tracking={"uri": f"http://127.0.0.1:{_free_port()}"})
    proc = dst_train(cfg)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "not reachable" in proc.stderr and "127.0.0.1" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints" / "latest").exists()
