"""Preemption of a real training job on the real SLURM (tests/conftest.py's `slurm_cluster`): `dst launch` submits a
DeepSpeed training through submitit; after its epoch-1 checkpoint the job gets SLURM's preemption/time-limit signal
(USR2, as with --signal=USR2@delay); submitit's checkpoint() requeues it; the requeued job resumes from the checkpoint
and completes, and the waiting `dst launch` exits 0.
"""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import VENV_BIN, run
from support import dst_popen, experiment, reaped, shared_demo, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _job_field(job_id: str, key: str) -> str:
    text = run(["scontrol", "show", "job", job_id], timeout=30, check=False).stdout
    match = re.search(rf"\b{key}=(\S+)", text)
    return match.group(1) if match else ""


@pytest.mark.timeout(480)
def test_preempted_training_is_requeued_and_resumes_from_its_checkpoint(slurm_cluster, tmp_path_factory, tmp_path):
    demo = shared_demo(tmp_path_factory) / "images"
    # augment on: crops and flips come from per-image seeds, so the resumed run can match an uninterrupted one.
    # 40 steps an epoch (seconds, not a fraction of one): the signal must land while epoch 2 is still running; with 4
    # steps, epoch 2 once finished and wrote its checkpoint before the signal was handled.
    cfg = experiment(tmp_path, demo, trainer={"max_steps_per_epoch": 40}, data={"augment": True},
                     launcher={"cluster": "slurm", "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 2,
                               "time_min": 15})
    ckpts = tmp_path / "run" / "checkpoints"
    log = tmp_path / "launch.log"
    with reaped(dst_popen("launch", "--config", cfg, log=log, cwd=tmp_path)) as launch:
        job_id = wait_for(lambda: (m := re.search(r"submitted job (\d+)", log.read_text())) and m.group(1), 120,
                          "the job id", proc=launch, log=log)
        try:
            wait_for(lambda: (ckpts / "latest").is_file(), 300, "the epoch-1 checkpoint", poll_s=0.2, proc=launch,
                     log=log)
            assert (ckpts / "latest").read_text().strip() == "epoch0001"
            # What SLURM sends before a time limit or on preemption.
            run(["scancel", "--signal=USR2", job_id], timeout=30)
            wait_for(lambda: _job_field(job_id, "Restarts") not in ("", "0"), 90, "the job to be requeued", poll_s=0.5)
            # SLURM holds a requeued job for a while (BeginTime); release it now to keep the test short.
            wait_for(lambda: _job_field(job_id, "JobState") == "PENDING", 60, "the requeued job to be pending",
                     poll_s=0.5)
            run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], timeout=30)
            launch.wait(timeout=360)
        finally:
            if launch.poll() is None:
                subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    output = log.read_text()
    assert launch.returncode == 0, output[-5000:]
    assert f"job {job_id} done (COMPLETED)" in output

    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    rank0_log = (tmp_path / "run" / "submitit" / f"{job_id}_0_log.err").read_text()
    assert "Caught signal SIGUSR2" in rank0_log and "DUE TO JOB REQUEUE" in rank0_log
    # The requeued attempt resumed from epoch 1 (it did not start over): epoch 1 is logged once, epoch 2 once.
    assert re.search(r"resuming t from \S+epoch0001 \(epoch 1\)", rank0_log), rank0_log[-4000:]
    assert len(re.findall(r"INFO epoch 1:", rank0_log)) == 1 and len(re.findall(r"INFO epoch 2:", rank0_log)) == 1
    assert (ckpts / "latest").read_text().strip() == "epoch0002"

    # The same experiment without preemption (one process, like the 1-task job) ends with the same metrics.
    straight = run([str(VENV_BIN / "dst"), "train", "--config", str(cfg), f"output_dir={tmp_path / 'straight'}"],
                   timeout=300, cwd=tmp_path)
    assert straight.returncode == 0
    reference = json.loads((tmp_path / "straight" / "metrics.json").read_text())["history"]
    for key in ("train/loss", "train/loss_fsnn", "train/loss_dsnn", "val/fsnn_top1", "val/dsnn_top1"):
        assert history[-1][key] == pytest.approx(reference[-1][key], rel=1e-4, abs=1e-5), key


KILLED_TARGET = '''
import os
import signal

from pipeline import distributed

def killed(cfg):
    distributed.init_process_group(timeout_s=300)
    if int(os.environ["RANK"]) == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    distributed.barrier()  # rank 0 waits for rank 1, as in a training step
    return "unreachable"
'''


@pytest.mark.timeout(150)
def test_rank_killed_on_slurm_is_named_by_dst_launch(slurm_cluster, tmp_path):
    (tmp_path / "killed_target.py").write_text(KILLED_TARGET)  # importable in the job: it runs in this cwd
    cfg = experiment(tmp_path, tmp_path / "data", launcher={"cluster": "slurm", "nodes": 2, "tasks_per_node": 1,
                                                             "cpus_per_task": 1, "mem_gb": 1, "time_min": 5})
    proc = subprocess.run([str(VENV_BIN / "dst"), "launch", "--config", str(cfg), "--target", "killed_target:killed"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # srun --kill-on-bad-exit ends the step; its line naming the killed rank heads the report.
    report = proc.stderr.split("--- last", 1)[0]
    assert re.search(r"srun: rank 1 on node\d: Killed", report), proc.stderr[-4000:]
