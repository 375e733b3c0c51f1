"""Faults injected into real training runs (DeepSpeed on gloo, submitit's local executor, a real `mlflow server`):

- a rank SIGKILLed mid-epoch: `dst launch` fails naming that rank; the last checkpoint loads; a rerun resumes it;
- `dst train` SIGKILLed while it writes a checkpoint: `latest` keeps naming the previous complete tag, and resuming
  ignores the partial tag directory;
- tokens and passwords in the environment (and in the tracking URI) never reach MLflow params or tags; the MLflow
  server as documented (no --host) listens on loopback only;
- a checkpoint of another model in output_dir, and corrupted or foreign checkpoint files given to `dst export`, are
  one clear error each, with nothing written.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from support import (dst, dst_popen, environ_of, experiment, listening_addresses, mlflow_server,
                                 parent_of, reaped, session_members, shared_demo, wait_for)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

SECRETS = {"MLFLOW_TRACKING_PASSWORD": "s3cret-mlflow-pw", "AWS_SECRET_ACCESS_KEY": "s3cret-aws-key-0123456789",
           "HF_TOKEN": "hf_s3cretTokenValue", "WANDB_API_KEY": "s3cret-wandb", "DB_PASSWORD": "s3cret-db-pw"}
URI_PASSWORD = "s3cret-uri-pw"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return shared_demo(tmp_path_factory) / "images"


def _pointer(ckpt_dir: Path, name: str = "latest") -> str | None:
    path = ckpt_dir / name
    return path.read_text().strip() if path.is_file() else None


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())["history"]


def _ok(proc) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


# --------------------------------------------------------------------------------------------------------------------
# A rank killed mid-epoch


def _task_process(session: int, rank: int) -> int | None:
    """The submitit local task process of `rank` in the session of `dst launch` (not its children)."""
    for pid in session_members(session):
        if environ_of(pid).get("SUBMITIT_LOCAL_GLOBALID") == str(rank):
            if environ_of(parent_of(pid) or 0).get("SUBMITIT_LOCAL_GLOBALID") is None:
                return pid
    return None


@pytest.mark.timeout(420)
def test_rank_killed_mid_epoch_names_the_rank_and_a_rerun_resumes(tmp_path, demo):
    cfg = experiment(tmp_path, demo, trainer={"max_steps_per_epoch": 6},
                     launcher={"cluster": "local", "tasks_per_node": 2, "time_min": 10})
    ckpts = tmp_path / "run" / "checkpoints"
    log = tmp_path / "launch1.log"
    with reaped(dst_popen("launch", "--config", cfg, log=log)) as launch:
        # Epoch 1's checkpoint is complete once `latest` names it; both ranks are then in epoch 2.
        wait_for(lambda: _pointer(ckpts) == "epoch0001", 300, "the epoch-1 checkpoint", proc=launch, log=log)
        rank1 = _task_process(launch.pid, 1)
        assert rank1 is not None, "rank 1's process not found"
        os.kill(rank1, signal.SIGKILL)
        launch.wait(timeout=180)
    output = log.read_text()
    assert launch.returncode == 1, output[-4000:]
    assert re.search(r"rank 1 died: its process \(pid \d+\) ended without writing a result", output), output[-4000:]
    assert "failed tasks:" in output

    # Nothing written before the kill is lost or corrupted: epoch 1 is the latest checkpoint and loads.
    from pipeline.checkpoint import load_for_export, read_client_state
    assert _pointer(ckpts) == "epoch0001"
    source = load_for_export(ckpts)
    assert source.tag == "epoch0001" and source.model_name == "fsnn_resnet18" and source.state_dict
    saved = read_client_state(ckpts / "epoch0001")
    assert saved["epoch"] == 1 and [h["epoch"] for h in saved["history"]] == [1]

    # The same command again resumes from epoch 1 (its history comes from the checkpoint) and finishes.
    rerun = dst("launch", "--config", cfg, timeout=300)
    _ok(rerun)
    history = _history(tmp_path / "run")
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == saved["history"][0]  # restored, not trained again
    assert _pointer(ckpts) == "epoch0002"


# --------------------------------------------------------------------------------------------------------------------
# A full disk (or quota) while writing a checkpoint, then an export


def _tags(ckpts: Path) -> list[str]:
    return sorted(p.name for p in ckpts.iterdir() if p.name.startswith("epoch"))


@pytest.mark.timeout(600)
def test_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_the_same_command_resumes(
        tmp_path, demo, small_filesystem):
    """150 MiB hold epoch 1's checkpoint (~87 MiB: ResNet-18 with its AAP, and SGD momentum), not epoch 2's too.
    `dst train` warns after epoch 1 that the next checkpoint may not fit, then stops with one line naming the tag it
    could not write and the one it kept, and removes the partial tag; `dst export` onto what is left fails the same way and leaves nothing; with room again, the same
    command resumes from epoch 1."""
    run_dir = small_filesystem.mount(150 << 20) / "run"
    ckpts = run_dir / "checkpoints"
    cfg = experiment(tmp_path, demo, output_dir=str(run_dir), trainer={"max_steps_per_epoch": 2})

    full = dst("train", "--config", cfg, timeout=300)
    assert full.returncode == 1, full.stderr[-5000:]
    assert "Traceback" not in full.stderr, full.stderr[-5000:]
    # Said after epoch 1 already, when ~63 MiB were left:
    assert re.search(rf"WARNING [\d.]+ MiB free on the filesystem of {re.escape(str(ckpts))}, but the next checkpoint "
                     r"needs about [\d.]+ MiB \(as epoch0001 did\): free some space before epoch 2 ends",
                     full.stderr), full.stderr[-3000:]
    assert full.stderr.strip().splitlines()[-1].startswith(
        f"dst train: error: cannot write checkpoint {ckpts / 'epoch0002'}: no space left on device (or over quota). "
        f"The last complete checkpoint, {ckpts / 'epoch0001'} ("), full.stderr[-2000:]
    assert _tags(ckpts) == ["epoch0001"]
    assert _pointer(ckpts) == _pointer(ckpts, "best") == "epoch0001"
    from pipeline.checkpoint import load_for_export
    assert load_for_export(ckpts).tag == "epoch0001"

    export_dir = run_dir.parent / "export"
    exported = dst("export", "--checkpoint", ckpts, "--out", export_dir, timeout=300)
    assert exported.returncode == 1, exported.stderr[-5000:]
    assert exported.stderr.strip().splitlines()[-1] == (
        f"dst export: error: cannot write the export to {export_dir}: no space left on device (or over quota)")
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["run"]  # no export, no temporary directory

    small_filesystem.resize(400 << 20)
    resumed = dst("train", "--config", cfg, timeout=300)
    _ok(resumed)
    assert f"resuming t from {ckpts / 'epoch0001'} (epoch 1)" in resumed.stderr
    assert [h["epoch"] for h in _history(run_dir)] == [1, 2]
    assert _pointer(ckpts) == "epoch0002"


@pytest.mark.timeout(300)
def test_full_disk_before_training_names_the_config_it_could_not_write(tmp_path, demo, small_filesystem):
    fs = small_filesystem.mount(16 << 10)
    small_filesystem.fill()
    run_dir = fs / "run"
    proc = dst("train", "--config", experiment(tmp_path, demo, output_dir=str(run_dir)), timeout=240)
    assert proc.returncode == 1, proc.stderr[-5000:]
    assert proc.stderr.strip().splitlines()[-1] == (f"dst train: error: cannot write the run's config "
                                                    f"{run_dir / 'config.yaml'}: no space left on device (or over quota)")
    assert [p for p in run_dir.rglob("*") if p.is_file()] == []  # no config, no temporary file


# --------------------------------------------------------------------------------------------------------------------
# Killed while writing a checkpoint (+ secrets and the MLflow server's bind address, on the same runs)


@pytest.fixture(scope="module")
def save_killed(tmp_path_factory, demo):
    """`dst train` (2 epochs) logging to a real `mlflow server` with secrets in its environment, frozen (SIGSTOP)
    as soon as epoch 2's tag directory appears, inspected, SIGKILLed; then the same command resumes it."""
    base = tmp_path_factory.mktemp("save-killed")
    with mlflow_server(base / "mlflow") as (url, port):
        uri = url.replace("http://", f"http://dst-user:{URI_PASSWORD}@")  # credentials in the URI, too
        cfg = experiment(base, demo, tracking={"enabled": True, "uri": uri, "experiment": "faults",
                                               "log_system_metrics": False})
        run_dir, ckpts = base / "run", base / "run" / "checkpoints"
        seen = SimpleNamespace(url=url, port=port, cfg=cfg, run_dir=run_dir, ckpts=ckpts)
        log = base / "train1.log"
        with reaped(dst_popen("train", "--config", cfg, log=log, env=SECRETS)) as train:
            wait_for(lambda: (ckpts / "epoch0002").is_dir(), 300, "epoch 2's tag directory", poll_s=0.005,
                     proc=train, log=log)
            os.killpg(train.pid, signal.SIGSTOP)  # frozen mid-save: look before the kill
            seen.latest_at_kill = _pointer(ckpts)
            seen.partial = {p.name: p.stat().st_size for p in (ckpts / "epoch0002").iterdir()}
            seen.complete = {p.name: p.stat().st_size for p in (ckpts / "epoch0001").iterdir()}
            os.killpg(train.pid, signal.SIGKILL)
            train.wait(timeout=60)
        seen.killed_rc = train.returncode
        seen.latest_after_kill = _pointer(ckpts)
        seen.tags_after_kill = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("epoch"))
        from pipeline.checkpoint import load_for_export
        seen.loaded_after_kill = load_for_export(ckpts)  # what export/resume read: the complete tag
        seen.resume = dst("train", "--config", cfg, env=SECRETS, timeout=300)
        yield seen


@pytest.mark.timeout(600)
def test_kill_while_saving_leaves_latest_on_the_previous_complete_checkpoint(save_killed):
    s = save_killed
    assert s.killed_rc == -signal.SIGKILL
    # Frozen after the tag directory appeared: the pointer had not moved, and it never moves afterwards.
    assert s.latest_at_kill == "epoch0001", "the save finished before the process could be stopped"
    assert s.latest_after_kill == "epoch0001"
    assert s.tags_after_kill == ["epoch0001", "epoch0002"]  # a partial tag that no pointer names
    # The previous checkpoint is intact: it loads, with its weights and its client state.
    assert s.loaded_after_kill.tag == "epoch0001" and s.loaded_after_kill.model_name == "fsnn_resnet18"
    assert s.loaded_after_kill.state_dict and s.complete["mp_rank_00_model_states.pt"] > 0


@pytest.mark.timeout(600)
def test_resume_after_a_kill_during_save_ignores_the_partial_tag(save_killed):
    s = save_killed
    _ok(s.resume)
    assert "resuming t from" in s.resume.stderr and "epoch0001 (epoch 1)" in s.resume.stderr
    history = _history(s.run_dir)
    assert [h["epoch"] for h in history] == [1, 2]
    assert _pointer(s.ckpts) == "epoch0002"
    from pipeline.checkpoint import load_for_export
    assert load_for_export(s.ckpts).tag == "epoch0002"  # the rewritten tag is complete


@pytest.mark.timeout(600)
def test_no_secrets_in_logged_params_tags_or_config(save_killed, tmp_path):
    from mlflow.tracking import MlflowClient
    s = save_killed
    _ok(s.resume)
    client = MlflowClient(tracking_uri=s.url)
    runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    assert len(runs) == 1  # the resumed process continued the same run
    data = runs[0].data
    assert data.params["model.name"] == "fsnn_resnet18" and data.params["tracking.uri"].startswith("http://***@")
    logged = [*data.params.items(), *data.tags.items()]
    config_artifact = Path(client.download_artifacts(runs[0].info.run_id, "config.yaml", str(tmp_path)))
    texts = [f"{k}={v}" for k, v in logged] + [config_artifact.read_text(), (s.run_dir / "config.yaml").read_text()]
    for secret in [*SECRETS.values(), URI_PASSWORD]:
        leaks = [t[:200] for t in texts if secret in t]
        assert not leaks, f"secret {secret!r} logged: {leaks}"
    assert "config.yaml" in [a.path for a in client.list_artifacts(runs[0].info.run_id)]


@pytest.mark.timeout(60)
def test_mlflow_server_listens_on_loopback_unless_told_otherwise(save_killed):
    # The fixture's server was started the way the project documents it: without --host.
    assert listening_addresses(save_killed.port) == {"127.0.0.1"}
    # Nothing the project ships starts MLflow on every interface.
    root = Path(__file__).resolve().parents[1]
    shipped = [root / "Makefile", root / "README.md", *(root / "workflow").rglob("*"), *(root / "scripts").rglob("*"),
               *(root / "slurm").rglob("*"), *(root / "profiles").rglob("*"), *(root / "pipeline").rglob("*.py"),
               *(root / "config").rglob("*.yaml")]
    for path in shipped:
        if path.is_file():
            text = path.read_text(errors="replace")
            for match in re.finditer(r"mlflow (?:server|ui)[^\n]*", text):
                assert not re.search(r"(--host|-h)[ =](0\.0\.0\.0|::|\[::\])", match.group(0)), \
                    f"{path}: {match.group(0)}"


@pytest.mark.timeout(300)
def test_checkpoint_of_another_model_is_refused_and_nothing_is_overwritten(save_killed):
    s = save_killed
    _ok(s.resume)
    before = {p: p.read_bytes() for p in (s.run_dir / "config.yaml", s.run_dir / "metrics.json",
                                          s.ckpts / "latest", s.ckpts / "best")}
    tree = yaml.safe_load(s.cfg.read_text())
    tree["model"]["name"] = "fsnn_resnet34"  # another architecture: DeepSpeed's strict load would fail with pages
    tree["tracking"] = {"enabled": False}
    other = s.cfg.with_name("other_model.yaml")
    other.write_text(yaml.safe_dump(tree))
    proc = dst("train", "--config", other, "trainer.epochs=3")
    assert proc.returncode == 2, proc.stderr[-4000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("dst train: error:") and "Traceback" not in proc.stderr
    assert str(s.ckpts / "epoch0002") in error and "fsnn_resnet18" in error and "fsnn_resnet34" in error
    assert "use another output_dir" in error
    assert {p: p.read_bytes() for p in before} == before  # the other model's run is untouched
    assert sorted(p.name for p in s.ckpts.iterdir() if p.name.startswith("epoch")) == ["epoch0001", "epoch0002"]


class _CreatesAFile:
    """What a malicious pickle does: call something on load (here: create a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.timeout(300)
def test_export_refuses_corrupted_and_foreign_checkpoints(save_killed, tmp_path, capsys):
    from pipeline.checkpoint import read_client_state
    from pipeline.cli import main
    s = save_killed
    _ok(s.resume)

    def export(checkpoint: Path, out: Path) -> str:
        assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("dst export: error:"), err
        assert not out.exists()  # no partial export
        return err

    # A truncated model_states file (a copy of the run's checkpoints, latest tag only).
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    shutil.copytree(s.ckpts / "epoch0002", truncated / "epoch0002")
    (truncated / "latest").write_text("epoch0002\n")
    states = truncated / "epoch0002" / "mp_rank_00_model_states.pt"
    with open(states, "r+b") as f:
        f.truncate(f.seek(0, 2) // 3)
    assert str(states) in export(truncated, tmp_path / "out1")

    # Bytes flipped in the middle of the file (same size).
    flipped = tmp_path / "flipped"
    shutil.copytree(truncated, flipped)
    shutil.copy(s.ckpts / "epoch0002" / "mp_rank_00_model_states.pt", flipped / "epoch0002")
    target = flipped / "epoch0002" / "mp_rank_00_model_states.pt"
    size = target.stat().st_size
    with open(target, "r+b") as f:
        f.seek(size - 2000)  # the zip's central directory
        f.write(os.urandom(1500))
    assert str(target) in export(flipped, tmp_path / "out2")

    # A file that would run code when unpickled: refused by the weights-only load, and nothing ran.
    evil = tmp_path / "evil"
    (evil / "epoch0001").mkdir(parents=True)
    (evil / "latest").write_text("epoch0001\n")
    marker = tmp_path / "code-ran"
    torch.save({"module": {}, "dst": {"model_name": "fsnn_resnet18", "model_kwargs": {}}, "x": _CreatesAFile(marker)},
               evil / "epoch0001" / "mp_rank_00_model_states.pt")
    err = export(evil, tmp_path / "out3")
    assert "weights-only load refuses" in err and "mp_rank_00_model_states.pt" in err
    from pipeline.errors import UsageError
    with pytest.raises(UsageError, match="weights-only load refuses"):
        read_client_state(evil / "epoch0001")  # what `dst train` checks before DeepSpeed loads a checkpoint
    assert not marker.exists()

    # `latest` naming a tag that is not there.
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    (dangling / "latest").write_text("epoch0009\n")
    assert "epoch0009" in export(dangling, tmp_path / "out4")
