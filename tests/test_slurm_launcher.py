"""Against a REAL SLURM (munge + slurmctld + two slurmd "nodes" on this machine, see scripts/local_slurm): the cluster
itself, the submitit launcher across two nodes, requeue through checkpoint(), `dst launch` of a failing job, and the
Snakemake `slurm/` profile. No mocks. About 1.5 minutes on 2 cores.
"""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest

from conftest import REPO_ROOT, VENV_BIN, run

from pipeline import launcher
from pipeline.config import LauncherConfig

pytestmark = pytest.mark.slurm

# The stand-in targets below live in this test module, which a job process cannot import: ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _cfg(tmp_path: Path, name: str, **launcher_kw) -> SimpleNamespace:
    settings = {"cluster": "slurm", "nodes": 2, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1, "time_min": 5,
                **launcher_kw}
    return SimpleNamespace(name=name, output_dir=str(tmp_path / "run"), launcher=LauncherConfig(**settings))


def _wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.mark.timeout(60)
def test_cluster_has_two_idle_nodes(slurm_cluster):
    states = dict(line.split() for line in run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T"]).stdout.splitlines())
    assert states == {"node1": "idle", "node2": "idle"}, states
    # One task lands on each "node" of a 2-node step.
    names = run(["srun", "-N2", "-n2", "printenv", "SLURMD_NODENAME"], timeout=60).stdout.split()
    assert sorted(names) == ["node1", "node2"]


@pytest.mark.timeout(120)
def test_two_node_job_all_reduces_through_submitit(slurm_cluster, tmp_path):
    cfg = _cfg(tmp_path, "check")
    out_dir = tmp_path / "check"
    outcome = launcher.launch(cfg, target=launcher.CHECK_TARGET, payload={"out_dir": str(out_dir)}, poll_s=1)
    assert outcome.ok, outcome.failure_report()
    assert outcome.state == "COMPLETED"
    by_rank = {info["rank"]: info for info in outcome.results}
    assert sorted(by_rank) == [0, 1]
    assert {info["slurm_node"] for info in by_rank.values()} == {"node1", "node2"}
    for info in by_rank.values():
        assert info["world_size"] == 2 and info["backend"] == "gloo"
        assert info["all_reduce"] == 3.0  # 1 + 2: both ranks took part
        assert info["master_addr"] == "node1" and info["master_addr_ip"] == "127.0.0.1"
        assert info["job_id"] == outcome.job_id
    assert sorted(p.name for p in out_dir.iterdir()) == ["rank0.json", "rank1.json"]
    # Logs are where the launcher says they are.
    assert all(p.exists() for p in outcome.log_paths())


def _sleep_until_requeued(payload):
    """Attempt 0 marks that it started and sleeps (until USR2 -> checkpoint() -> requeue kills it); attempt >= 1 runs
    the real all_reduce check."""
    import os
    import time as _time
    from pathlib import Path as _Path

    from pipeline.launcher import connectivity_check

    attempt, rank = int(os.environ["DST_LAUNCH_ATTEMPT"]), int(os.environ["RANK"])
    out = _Path(payload["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"started_attempt{attempt}_rank{rank}").write_text(os.environ.get("SLURM_JOB_ID", ""))
    if attempt == 0:
        _time.sleep(100)
        raise RuntimeError("attempt 0 was not requeued")
    return connectivity_check(payload)


def _job_field(job_id: str, key: str) -> str:
    text = run(["scontrol", "show", "job", job_id], timeout=30).stdout
    match = re.search(rf"\b{key}=(\S+)", text)
    return match.group(1) if match else ""


@pytest.mark.timeout(150)
def test_preempted_job_is_requeued_through_checkpoint_and_completes(slurm_cluster, tmp_path):
    cfg = _cfg(tmp_path, "requeue")
    out_dir = tmp_path / "out"
    job = launcher.launch(cfg, target=_sleep_until_requeued, payload={"out_dir": str(out_dir)}, wait_for=False)
    _wait_for(lambda: all((out_dir / f"started_attempt0_rank{r}").exists() for r in (0, 1)), 60, "attempt 0 to start")

    # What SLURM sends before a time limit or on preemption: USR2 to the job's tasks. Rank 0's handler calls
    # RankTask.checkpoint() and `scontrol requeue`s the job.
    run(["scancel", "--signal=USR2", job.job_id], timeout=30)
    _wait_for(lambda: _job_field(job.job_id, "Restarts") not in ("", "0"), 60, "the job to be requeued")
    # SLURM holds a requeued job for ~2 minutes (BeginTime); release it now so the test stays short.
    _wait_for(lambda: _job_field(job.job_id, "JobState") == "PENDING", 30, "the requeued job to be pending")
    run(["scontrol", "update", f"jobid={job.job_id}", "StartTime=now"], timeout=30)

    outcome = launcher.wait(job, "slurm", poll_s=1)
    assert outcome.ok, outcome.failure_report()
    assert outcome.state == "COMPLETED"
    # attempt 1 = the DelayedSubmission that checkpoint() returned, run under the same job id.
    assert [info["attempt"] for info in outcome.results] == [1, 1]
    assert all(info["all_reduce"] == 3.0 for info in outcome.results)
    assert (out_dir / "started_attempt1_rank0").read_text() == job.job_id
    rank0_log = job.task(0).paths.stderr.read_text()
    assert "Caught signal SIGUSR2" in rank0_log and "DUE TO JOB REQUEUE" in rank0_log


FAILING_TARGET = '''
import os

from pipeline import distributed

def fail(cfg):
    rank = int(os.environ["RANK"])
    print(f"rank {rank} of experiment {cfg.name} starting", flush=True)
    if rank == 1:
        raise RuntimeError("deliberate failure on rank 1: marker-7f3a")
    # Rank 0 waits for rank 1 in the rendezvous, as in training: the step must be killed, not hang.
    distributed.init_process_group(timeout_s=300)
    return {"rank": rank}
'''


@pytest.mark.timeout(120)
def test_dst_launch_of_failing_job_exits_nonzero_with_log_tail(slurm_cluster, tmp_path):
    (tmp_path / "failing_target.py").write_text(FAILING_TARGET)  # importable in the job: it runs in this cwd
    config = tmp_path / "exp.yaml"
    config.write_text(textwrap.dedent(f"""\
        name: failing
        output_dir: {tmp_path / 'run'}
        model: {{name: fsnn_resnet18}}
        data: {{dataset: demo_images, root: {tmp_path / 'data'}}}
        launcher: {{cluster: local, time_min: 5}}
        """))
    proc = subprocess.run(
        [str(VENV_BIN / "dst"), "launch", "--config", str(config), "--target", "failing_target:fail",
         "launcher.cluster=slurm", "launcher.nodes=2", "launcher.cpus_per_task=1", "launcher.mem_gb=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    job_id = re.search(r"submitted job (\d+)", proc.stdout).group(1)
    assert f"{tmp_path / 'run' / 'submitit'}/{job_id}_<task>_log" in proc.stdout  # where the logs are
    assert re.search(r"failed tasks: (0, )?1\b", proc.stderr), proc.stderr
    assert f"{job_id}_1_log.err" in proc.stderr
    assert "RuntimeError: deliberate failure on rank 1: marker-7f3a" in proc.stderr  # the failing task's log tail


SNAKEFILE = '''
localrules: all

rule all:
    input: "out/hello.txt"

rule hello:
    output: "out/hello.txt"
    resources: runtime=5, mem_mb=500
    shell: "echo job=${{SLURM_JOB_ID:-none}} node=${{SLURMD_NODENAME:-none}} > {output}"
'''


@pytest.mark.timeout(150)
def test_snakemake_slurm_profile_runs_a_rule_on_slurm(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    proc = subprocess.run(
        [str(VENV_BIN / "snakemake"), "--profile", str(REPO_ROOT / "slurm"), "--snakefile", "Snakefile", "all"],
        cwd=tmp_path, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (tmp_path / "out" / "hello.txt").read_text()
    assert re.fullmatch(r"job=\d+ node=node[12]\n", text), text  # ran inside a SLURM job on one of the nodes
    assert list((tmp_path / "logs" / "slurm" / "rule_hello").glob("*.log"))  # slurm-logdir from the profile
