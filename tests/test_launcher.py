"""The submitit launcher and the distributed helpers without SLURM: settings mapping and validation, 2 ranks through
submitit's local executor (real processes, real gloo), in-process debug, failure reports, `dst launch` on this
machine, and the one-machine Snakemake profile. The SLURM side is in test_slurm_launcher.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest

from conftest import REPO_ROOT, VENV_BIN

from pipeline import distributed, launcher
from pipeline.config import LauncherConfig
from pipeline.errors import UsageError

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # stand-in targets run in other processes


def _cfg(tmp_path: Path, **launcher_kw) -> SimpleNamespace:
    return SimpleNamespace(name="t", output_dir=str(tmp_path / "run"), launcher=LauncherConfig(**launcher_kw))


# --------------------------------------------------------------------------------------------------------------------
# settings


@pytest.mark.parametrize("kw, message", [
    ({"gpus_per_node": 4, "tasks_per_node": 1}, "must equal launcher.gpus_per_node"),
    ({"cluster": "local", "nodes": 2}, "launcher.nodes=2"),
    ({"cluster": "debug", "tasks_per_node": 2}, "cluster=debug runs one rank"),
])
def test_inconsistent_launcher_settings_are_usage_errors(tmp_path, kw, message):
    with pytest.raises(UsageError, match=message):
        launcher.make_executor(LauncherConfig(**kw), tmp_path)


def test_unknown_launcher_key_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="unknown keys gpus"):
        launcher.make_executor({"cluster": "local", "gpus": 1}, tmp_path)


@pytest.mark.skipif(shutil.which("srun") is None, reason="submitit's SLURM executor needs srun on PATH")
def test_slurm_settings_reach_the_sbatch_script(tmp_path):
    settings = LauncherConfig(cluster="slurm", nodes=4, tasks_per_node=8, gpus_per_node=8, cpus_per_task=12,
                              mem_gb=480, partition="gpu", account="proj42", qos="high", constraint="h100",
                              time_min=1440, signal_delay_s=300, max_requeues=5,
                              additional_parameters={"exclusive": True, "mail_type": "END"})
    executor = launcher.make_executor(settings, tmp_path, name="dst-exp")
    script = executor._executor._make_submission_file_text("python -m run", "uid")
    for line in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=12", "--mem=480GB",
                 "--partition=gpu", "--account=proj42", "--qos=high", "--constraint=h100", "--time=1440",
                 "--signal=USR2@300", "--exclusive", "--mail-type=END", "--job-name=dst-exp"):
        assert f"#SBATCH {line}" in script, (line, script)
    assert "srun --unbuffered" in script and "--kill-on-bad-exit=1" in script
    assert executor._executor.max_num_timeout == 5


def test_resolve_target_errors_name_the_target():
    assert launcher.resolve_target("pipeline.launcher:connectivity_check") is launcher.connectivity_check
    with pytest.raises(UsageError, match="not of the form"):
        launcher.resolve_target("pipeline.launcher")
    with pytest.raises(UsageError, match="cannot import target 'pipeline.nope:f'"):
        launcher.resolve_target("pipeline.nope:f")


# --------------------------------------------------------------------------------------------------------------------
# distributed env (on a private copy of os.environ: nothing leaks into other tests)


@pytest.fixture
def private_environ(monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))
           and k not in distributed.ENV_KEYS}
    env["OMP_NUM_THREADS"] = "1"  # keeps _cap_threads from touching this process's torch threads
    monkeypatch.setattr(os, "environ", env)
    return env


def test_single_process_environment(private_environ):
    denv = distributed.setup_environment()
    assert (denv.source, denv.rank, denv.world_size, denv.local_rank) == ("single", 0, 1, 0)
    assert private_environ["MASTER_ADDR"] == "127.0.0.1" and int(private_environ["MASTER_PORT"]) > 0
    assert distributed.is_rank0() and distributed.get_world_size() == 1
    distributed.barrier()  # no process group: a no-op
    distributed.cleanup()


def test_torchrun_environment_is_kept(private_environ):
    private_environ.update(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="29500")
    denv = distributed.setup_environment()
    assert (denv.source, denv.rank, denv.world_size, denv.local_rank) == ("torchrun", 3, 4, 1)
    assert denv.master_addr == "10.0.0.1" and denv.master_port == 29500 and not distributed.is_rank0()


def test_plain_srun_environment(private_environ):
    private_environ.update(SLURM_STEP_ID="0", SLURM_NTASKS="4", SLURM_JOB_NUM_NODES="2", SLURM_PROCID="2",
                           SLURM_LOCALID="0", SLURM_JOB_ID="1234", SLURM_JOB_NODELIST="gpu[07-08]")
    denv = distributed.setup_environment()
    assert (denv.source, denv.rank, denv.world_size, denv.local_world_size) == ("slurm", 2, 4, 2)
    assert denv.master_addr == "gpu07"
    assert 20000 <= denv.master_port <= 60000  # the same on every rank: derived from the job id


def test_backend_is_gloo_without_cuda():
    import torch

    assert distributed.default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


# --------------------------------------------------------------------------------------------------------------------
# submitit local and debug executors (real processes / in-process)


@pytest.mark.timeout(180)
def test_two_local_ranks_all_reduce(tmp_path):
    cfg = _cfg(tmp_path, cluster="local", tasks_per_node=2, time_min=5)
    outcome = launcher.launch(cfg, target=launcher.CHECK_TARGET, payload={"out_dir": str(tmp_path / "check")},
                              poll_s=0.5)
    assert outcome.ok and outcome.state == "COMPLETED", outcome.failure_report()
    assert sorted(info["rank"] for info in outcome.results) == [0, 1]
    assert all(info["all_reduce"] == 3.0 and info["world_size"] == 2 for info in outcome.results)
    assert (tmp_path / "check" / "rank1.json").exists()
    assert all(info["job_id"] == outcome.job_id for info in outcome.results)


@pytest.mark.timeout(120)
def test_debug_runs_one_rank_in_this_process(tmp_path):
    before = {k: os.environ.get(k) for k in distributed.ENV_KEYS}
    cfg = _cfg(tmp_path, cluster="debug")
    outcome = launcher.launch(cfg, target=launcher.CHECK_TARGET, payload={})
    assert outcome.ok, outcome.failure_report()
    info = outcome.results[0]
    assert (info["world_size"], info["all_reduce"], info["attempt"]) == (1, 1.0, 0)
    assert info["hostname"] and not distributed.is_initialized()  # the process group was cleaned up
    assert {k: os.environ.get(k) for k in distributed.ENV_KEYS} == before  # submitit's debug job restores env


def _fail_on_rank1(payload):
    import os as _os

    from pipeline import distributed as _distributed

    if _os.environ["RANK"] == "1":
        raise ValueError("stand-in failure on rank 1")
    _distributed.init_process_group(timeout_s=120)  # waits for rank 1, which never comes
    return "unreachable"


@pytest.mark.timeout(180)
def test_failing_local_rank_is_reported_with_its_log(tmp_path):
    cfg = _cfg(tmp_path, cluster="local", tasks_per_node=2, time_min=3)
    outcome = launcher.launch(cfg, target=_fail_on_rank1, payload=None, poll_s=0.5)
    assert not outcome.ok and outcome.state == "FAILED"
    report = outcome.failure_report()
    assert "failed tasks:" in report and "_1_log.err" in report.splitlines()[1]  # the rank that raised
    assert "ValueError: stand-in failure on rank 1" in report


def test_debug_failure_is_collected_without_running_twice(tmp_path):
    calls = []

    def boom(payload):
        calls.append(payload)
        raise KeyError("no such thing")

    outcome = launcher.launch(_cfg(tmp_path, cluster="debug"), target=boom, payload="p")
    assert not outcome.ok and outcome.state == "FAILED"
    assert "KeyError: 'no such thing'" in outcome.failure_report()
    assert calls == ["p"]  # (submitit's debug job re-runs a failed function on every result()/exception() call)


def test_checkpoint_resubmits_the_same_task_with_the_next_attempt():
    task = launcher.RankTask("pipeline.launcher:connectivity_check", {"out_dir": "x"}, attempt=2)
    delayed = task.checkpoint()
    resubmitted = delayed.function
    assert isinstance(resubmitted, launcher.RankTask)
    assert (resubmitted.target, resubmitted.payload, resubmitted.attempt) == (task.target, task.payload, 3)


# --------------------------------------------------------------------------------------------------------------------
# the command line and the one-machine profile


def _config_file(tmp_path: Path, launcher_yaml: str = "{cluster: local}") -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: cli
        output_dir: {tmp_path / 'run'}
        model: {{name: fsnn_resnet18}}
        data: {{dataset: demo_images, root: {tmp_path / 'data'}}}
        launcher: {launcher_yaml}
        """))
    return path


@pytest.mark.timeout(180)
def test_dst_launch_check_on_local_ranks(tmp_path):
    proc = subprocess.run([str(VENV_BIN / "dst"), "launch", "--config", str(_config_file(tmp_path)), "--check",
                           "launcher.tasks_per_node=2", "launcher.time_min=5"],
                          capture_output=True, text=True, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted job" in proc.stdout and "logs:" in proc.stdout
    assert "rank 0/2" in proc.stdout and "rank 1/2" in proc.stdout and "all_reduce 3 (expected 3)" in proc.stdout


@pytest.mark.timeout(180)
def test_dst_launch_onto_a_full_disk_is_one_line_and_leaves_no_job_files(tmp_path, small_filesystem):
    # Before: "dst launch: error: No space left on device" (no path), and submitit's cut-short <uuid>.pkl stayed.
    fs = small_filesystem.mount(64 << 10)
    config = _config_file(tmp_path)
    config.write_text(config.read_text().replace(f"output_dir: {tmp_path / 'run'}", f"output_dir: {fs / 'run'}"))
    filler = small_filesystem.fill()
    cmd = [str(VENV_BIN / "dst"), "launch", "--config", str(config), "--check", "launcher.time_min=5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (f"dst launch: error: cannot write the job files under {fs / 'run' / 'submitit'}: "
                                   f"no space left on device (or over quota)")
    assert [p for p in (fs / "run").rglob("*") if not p.is_dir()] == []
    filler.unlink()  # once there is room, the same command submits and runs
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0 and "all_reduce 1 (expected 1)" in proc.stdout, proc.stdout + proc.stderr


def test_dst_launch_bad_input_is_one_line_exit_2(tmp_path):
    dst = str(VENV_BIN / "dst")
    proc = subprocess.run([dst, "launch", "--config", str(tmp_path / "missing.yaml")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "missing.yaml" in proc.stderr
    proc = subprocess.run([dst, "launch", "--config", str(_config_file(tmp_path)), "launcher.cluster=local",
                           "launcher.nodes=3"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "launcher.nodes=3" in proc.stderr, proc.stderr


@pytest.mark.timeout(120)
def test_local_snakemake_profile_runs_a_workflow(tmp_path):
    (tmp_path / "Snakefile").write_text(textwrap.dedent('''\
        rule all:
            input: expand("out/{i}.txt", i=range(3))

        rule one:
            output: "out/{i}.txt"
            shell: "echo {wildcards.i} > {output}"
        '''))
    proc = subprocess.run([str(VENV_BIN / "snakemake"), "--profile", str(REPO_ROOT / "profiles" / "local"), "all"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.read_text() for p in (tmp_path / "out").iterdir()) == ["0\n", "1\n", "2\n"]
    assert "Provided cores: 2" in proc.stdout + proc.stderr
