"""Launch training through submitit: a SLURM job (nodes x tasks_per_node ranks), local processes, or in-process debug.

    from pipeline.config import load_config
    from pipeline.launcher import launch
    outcome = launch(load_config("exp.yaml"))          # submit, wait, collect every rank's result
    outcome.ok, outcome.job_id, outcome.results[0]     # rank 0's final metrics

Each task (one rank) sets torch.distributed's env:// variables from submitit's job environment and calls the target,
by default `pipeline.engine:train(cfg)`, which initialises DeepSpeed itself.

Preemption and time limits: SLURM sends USR2 `signal_delay_s` seconds before the end (and on preemption); submitit
calls `checkpoint()` on global rank 0 only, which resubmits the same task with the attempt counter increased, and
requeues the job (`scontrol requeue`, same job id). Nothing is saved in `checkpoint()` itself: the engine's periodic
checkpoints are collective ZeRO saves that every rank must join, so a single rank cannot write one from a signal
handler. The requeued job resumes from `<output_dir>/checkpoints/latest`. `max_requeues` bounds requeues after time
limits (preemptions are not counted, as in submitit).

Waiting for the job and reporting each rank's outcome live in pipeline/job_outcome.py (`wait` is re-exported here).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import submitit
from submitit.core import utils as submitit_utils

from pipeline import distributed, storage
from pipeline.errors import StorageError, UsageError
from pipeline.job_outcome import LaunchOutcome, wait

__all__ = ["DEFAULT_TARGET", "CHECK_TARGET", "RankTask", "connectivity_check", "launch", "launcher_settings",
           "make_executor", "resolve_target", "submit", "validate", "wait", "job_folder", "LaunchOutcome"]

DEFAULT_TARGET = "pipeline.engine:train"
CHECK_TARGET = "pipeline.launcher:connectivity_check"

LAUNCHER_FIELDS = ("cluster", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "partition",
                   "account", "qos", "constraint", "time_min", "signal_delay_s", "max_requeues",
                   "additional_parameters", "folder")


# --------------------------------------------------------------------------------------------------------------------
# What every rank runs


def resolve_target(target: str | Callable[[Any], Any]) -> Callable[[Any], Any]:
    """'package.module:function' -> the function (imported in the job, so it needs no pickling)."""
    if callable(target):
        return target
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise UsageError(f"target {target!r} is not of the form package.module:function")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise UsageError(f"cannot import target {target!r}: {err}") from None
    if not callable(obj):
        raise UsageError(f"target {target!r} is not callable")
    return obj


class RankTask(submitit.helpers.Checkpointable):
    """The callable submitit runs once per task: distributed env from submitit, then `target(payload)`.

    `target` is a 'module:function' string (or a picklable callable), `payload` its one argument (the experiment
    config for training). `attempt` counts requeues; it is exported as DST_LAUNCH_ATTEMPT next to DST_LAUNCH_JOB_ID.
    """

    def __init__(self, target: str | Callable[[Any], Any], payload: Any, attempt: int = 0) -> None:
        self.target = target
        self.payload = payload
        self.attempt = attempt

    def __call__(self) -> Any:
        # The target logs through `logging` (epochs, "resuming ... from"): without a handler, a launched run's logs
        # would not say where it resumed after a requeue. Only our loggers: submitit's have their own handler.
        ours = logging.getLogger("pipeline")
        if not ours.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            ours.addHandler(handler)
            ours.setLevel(logging.INFO)
        os.environ["DST_LAUNCH_ATTEMPT"] = str(self.attempt)
        try:
            os.environ["DST_LAUNCH_JOB_ID"] = submitit.JobEnvironment().job_id
        except Exception:  # not inside a submitit job (called directly): fine
            pass
        distributed.setup_environment("auto")
        try:
            return resolve_target(self.target)(self.payload)
        finally:
            distributed.cleanup()

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Runs on global rank 0 only, from the USR2 handler. See the module docstring for why nothing is saved here.
        return submitit.helpers.DelayedSubmission(type(self)(self.target, self.payload, self.attempt + 1))


def connectivity_check(payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A tiny distributed job to check a cluster set-up before spending hours on it (`dst launch --check`): every
    rank joins the process group, all-reduces its rank + 1, and reports where it ran. Writes rank<N>.json into
    payload['out_dir'] when given. Raises if the sum is wrong."""
    import socket

    import torch
    import torch.distributed as dist

    payload = dict(payload or {})
    denv = distributed.init_process_group(payload.get("backend"))
    value = torch.tensor([float(denv.rank + 1)])
    if distributed.default_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value)
    expected = denv.world_size * (denv.world_size + 1) / 2
    info = {
        "rank": denv.rank, "world_size": denv.world_size, "local_rank": denv.local_rank,
        "hostname": socket.gethostname(), "slurm_node": os.environ.get("SLURMD_NODENAME"),
        "master_addr": denv.master_addr, "master_port": denv.master_port,
        "master_addr_ip": socket.gethostbyname(denv.master_addr), "backend": dist.get_backend(),
        "all_reduce": float(value.item()), "expected": expected,
        "job_id": os.environ.get("DST_LAUNCH_JOB_ID"), "attempt": int(os.environ.get("DST_LAUNCH_ATTEMPT", 0)),
    }
    if payload.get("out_dir"):
        out = Path(payload["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{denv.rank}.json").write_text(json.dumps(info, indent=1))
    distributed.barrier()
    if info["all_reduce"] != expected:
        raise RuntimeError(f"all_reduce gave {info['all_reduce']}, expected {expected}: ranks do not agree")
    return info


# --------------------------------------------------------------------------------------------------------------------
# Submitting


def launcher_settings(launcher: Any) -> dict[str, Any]:
    """A LauncherConfig (pydantic), a mapping or any object with its attributes -> a plain dict with every field."""
    if hasattr(launcher, "model_dump"):
        raw = launcher.model_dump()
    elif isinstance(launcher, Mapping):
        raw = dict(launcher)
    else:
        raw = {k: getattr(launcher, k) for k in LAUNCHER_FIELDS if hasattr(launcher, k)}
    defaults = {"cluster": "local", "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": None,
                "mem_gb": None, "partition": None, "account": None, "qos": None, "constraint": None, "time_min": 60,
                "signal_delay_s": 120, "max_requeues": 3, "additional_parameters": {}, "folder": None}
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise UsageError(f"launcher: unknown keys {', '.join(unknown)}")
    return {**defaults, **raw}


def validate(s: Mapping[str, Any]) -> None:
    """Inconsistent launcher settings are usage errors, named by key, before anything is submitted."""
    cluster = s["cluster"]
    if cluster not in ("slurm", "local", "debug"):
        raise UsageError(f"launcher.cluster: {cluster!r} is not one of slurm, local, debug")
    if s["gpus_per_node"] and s["tasks_per_node"] != s["gpus_per_node"]:
        raise UsageError(f"launcher.tasks_per_node ({s['tasks_per_node']}) must equal launcher.gpus_per_node "
                         f"({s['gpus_per_node']}): DeepSpeed runs one rank per GPU")
    if cluster == "local" and s["nodes"] != 1:
        raise UsageError(f"launcher.nodes={s['nodes']}: the local cluster is this one machine; use nodes=1")
    if cluster == "debug" and s["nodes"] * s["tasks_per_node"] != 1:
        raise UsageError("launcher.cluster=debug runs one rank in this process; set launcher.nodes=1 and "
                         "launcher.tasks_per_node=1, or use cluster=local for several ranks")
    if cluster == "slurm" and not _has_command("sbatch"):
        raise UsageError("launcher.cluster=slurm but sbatch is not on PATH (not a SLURM login node?); "
                         "use launcher.cluster=local on one machine")


def _has_command(name: str) -> bool:
    from shutil import which

    return which(name) is not None


def make_executor(launcher: Any, folder: str | Path, name: str = "dst") -> submitit.AutoExecutor:
    """A submitit AutoExecutor with the launcher settings mapped onto submitit's (slurm_-prefixed) parameters."""
    s = launcher_settings(launcher)
    validate(s)
    cluster = s["cluster"]
    ctor: dict[str, Any] = {}
    if cluster == "slurm":
        ctor["slurm_max_num_timeout"] = int(s["max_requeues"])
    elif cluster == "local":
        ctor["local_max_num_timeout"] = int(s["max_requeues"])
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster, **ctor)
    params: dict[str, Any] = {"name": name, "timeout_min": int(s["time_min"]), "nodes": int(s["nodes"]),
                              "tasks_per_node": int(s["tasks_per_node"]), "gpus_per_node": int(s["gpus_per_node"])}
    if s["cpus_per_task"] is not None:
        params["cpus_per_task"] = int(s["cpus_per_task"])
    if s["mem_gb"] is not None:
        params["mem_gb"] = float(s["mem_gb"])
    if cluster == "slurm":
        params["slurm_signal_delay_s"] = int(s["signal_delay_s"])
        # One rank that dies must end the step: the others would otherwise wait in a collective until the process
        # group times out, holding every node of the allocation.
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
        for key in ("partition", "account", "qos", "constraint"):
            if s[key]:
                params[f"slurm_{key}"] = str(s[key])
        if s["additional_parameters"]:
            params["slurm_additional_parameters"] = dict(s["additional_parameters"])
    try:
        executor.update_parameters(**params)
    except (ValueError, NameError, AssertionError) as err:
        raise UsageError(f"launcher: {err}") from None
    return executor


def submit(launcher: Any, folder: str | Path, target: str | Callable[[Any], Any], payload: Any,
           name: str = "dst") -> submitit.Job:
    """Submit `target(payload)` on every rank; returns the submitit job at once."""
    executor = make_executor(launcher, folder, name)
    if isinstance(target, str) and launcher_settings(launcher)["cluster"] == "debug":
        resolve_target(target)  # debug runs in this process: fail now with a clear message
    submitted_at = time.time()
    leftovers_before = _submission_temps(folder)
    try:
        with storage.writing(folder, "the job files under"):
            job = executor.submit(RankTask(target, payload))
    except StorageError:
        for path in _submission_temps(folder) - leftovers_before:  # this submission's, cut short
            path.unlink(missing_ok=True)
        raise
    if executor.cluster != "debug":
        _drop_stale_files(job, submitted_at - 60)
    return job


SUBMISSION_TEMP = re.compile(r"[0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh")


def _submission_temps(folder: str | Path) -> set[Path]:
    """The files submitit writes under temporary names before the job id is known: the pickled call
    (<uuid>.pkl) and the sbatch script (.submission_file_<uuid>.sh). Renamed once the job is submitted."""
    where = submitit_utils.JobPaths.get_first_id_independent_folder(folder)
    try:
        return {p for p in where.iterdir() if SUBMISSION_TEMP.fullmatch(p.name)}
    except FileNotFoundError:
        return set()


def _drop_stale_files(job: submitit.Job, before: float) -> None:
    # Job ids can repeat: local ids are process ids (reused across boots), and a scratch SLURM that was restarted
    # clean counts from 1 again. A result file left in the same folder by an older job with the same id would be
    # taken for this job's result, and its logs (opened in append mode) would precede this job's. (The margin keeps
    # files of this job safe from clock skew between nodes.)
    for task in range(job.num_tasks):
        paths = job.task(task).paths
        for path in (paths.result_pickle, paths.stdout, paths.stderr):
            try:
                if path.stat().st_mtime < before:
                    path.unlink()
            except FileNotFoundError:
                pass


def job_folder(cfg: Any) -> Path:
    folder = getattr(cfg.launcher, "folder", None)
    return Path(folder) if folder else Path(cfg.output_dir) / "submitit"


def launch(cfg: Any, target: str | Callable[[Any], Any] = DEFAULT_TARGET, payload: Any = None, wait_for: bool = True,
           poll_s: float = 2.0, on_submit: Callable[[submitit.Job], None] | None = None,
           on_state: Callable[[str], None] | None = None) -> LaunchOutcome | submitit.Job:
    """Submit `target(payload)` (default: the engine's train(cfg)) with cfg.launcher and wait for the outcome.

    Returns the LaunchOutcome, or the submitit job when wait_for is False.
    """
    settings = launcher_settings(cfg.launcher)
    job = submit(cfg.launcher, job_folder(cfg), target, cfg if payload is None else payload,
                 name=f"dst-{getattr(cfg, 'name', 'run')}")
    if on_submit is not None:
        on_submit(job)
    if not wait_for:
        return job
    return wait(job, settings["cluster"], poll_s=poll_s, on_state=on_state)
