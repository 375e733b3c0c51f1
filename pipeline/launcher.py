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

Status without SLURM accounting: submitit asks `sacct`, which fails on a cluster without slurmdbd (it then reports
UNKNOWN forever and would wait forever for a job that died without a result file). `wait()` asks `squeue` first
(finished jobs stay visible for MinJobAge) and `sacct` second, and treats a job that neither knows as finished.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import submitit

from pipeline import distributed
from pipeline.errors import UsageError

DEFAULT_TARGET = "pipeline.engine:train"
CHECK_TARGET = "pipeline.launcher:connectivity_check"

# SLURM job states after which nothing more happens to the job (a requeued job passes through REQUEUED/PENDING).
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
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
    job = executor.submit(RankTask(target, payload))
    if executor.cluster != "debug":
        _drop_stale_files(job, submitted_at - 60)
    return job


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


# --------------------------------------------------------------------------------------------------------------------
# Waiting and reporting


@dataclass
class TaskOutcome:
    task: int
    ok: bool
    result: Any = None
    error: str | None = None  # the task's traceback, or why there is no result
    finished_at: float | None = None  # when its result file was written
    stdout: Path | None = None
    stderr: Path | None = None
    died_at: float | None = None  # local: when its process was seen gone without a result (SIGKILL, OOM killer)


@dataclass
class LaunchOutcome:
    job_id: str
    cluster: str
    state: str  # SLURM's final state (COMPLETED, FAILED, TIMEOUT, ...); local/debug: COMPLETED or FAILED
    folder: Path
    tasks: list[TaskOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.tasks) and all(t.ok for t in self.tasks)

    @property
    def results(self) -> list[Any]:
        return [t.result for t in self.tasks]

    @property
    def failed(self) -> list[TaskOutcome]:
        return [t for t in self.tasks if not t.ok]

    def log_paths(self) -> list[Path]:
        return [p for t in self.tasks for p in (t.stdout, t.stderr) if p is not None]

    def failure_report(self, lines: int = 40) -> str:
        """Which tasks failed, and the tail of the first failing task's logs."""
        if self.ok:
            return ""
        out = [f"job {self.job_id} ({self.cluster}) failed: state {self.state}; "
               f"failed tasks: {', '.join(str(t.task) for t in self.failed)}"]
        died = sorted((t for t in self.failed if t.died_at is not None), key=lambda t: (t.died_at, t.task))
        # On SLURM, srun says which task ended how ("srun: error: node2: task 1: Killed") in the job's log: the one
        # line that names a rank killed by a signal, whose own log is empty.
        srun_says = []
        for t in self.tasks:
            if t.stderr is not None and t.stderr.exists():
                srun_says += [m.groups() for m in SRUN_TASK_ERROR.finditer(tail(t.stderr, 200))]
        for node, ranks, how in dict.fromkeys(srun_says):
            out.append(f"srun: rank {ranks} on {node}: {how}")
        if died:
            # A rank whose process vanished without a result (SIGKILL, the OOM killer) is the cause: the others then
            # fail in a collective ("connection closed by peer"), which alone would not say which rank died.
            first = died[0]
            out.append(f"rank {first.task} died: {first.error}")
        else:
            # The first task that raised is the cause: the others usually failed or were killed because of it.
            first = sorted(self.failed, key=lambda t: (t.finished_at is None, t.finished_at or 0.0, t.task))[0]
        for path in (first.stderr, first.stdout):
            if path is not None and path.exists():
                out += [f"--- last {lines} lines of {path}", tail(path, lines)]
        if not any(line.startswith("---") for line in out) and first.error:
            out += ["--- error", first.error]
        raised = [t for t in self.failed if t.died_at is None and t.finished_at is not None]
        if died and raised:  # what the survivors saw (e.g. gloo's "Connection closed by peer")
            after = min(raised, key=lambda t: (t.finished_at, t.task))
            if after.stderr is not None and after.stderr.exists():
                out += [f"--- then task {after.task} failed; last 10 lines of {after.stderr}", tail(after.stderr, 10)]
        return "\n".join(out)


SRUN_TASK_ERROR = re.compile(r"srun: error: (\S+): tasks? ([\d,\-]+): (.+)")


def tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200 * lines))
            text = f.read().decode(errors="replace")
    except OSError as err:
        return f"(cannot read {path}: {err})"
    return "\n".join(text.splitlines()[-lines:])


def slurm_state(job_id: str) -> str | None:
    """The job's state from squeue (kept MinJobAge after the end), else from sacct; None if neither knows it."""
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"], capture_output=True,
                             text=True, timeout=60)
        states = out.stdout.split()
        if out.returncode == 0 and states:
            return states[0].upper()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"], capture_output=True,
                             text=True, timeout=60)
        states = out.stdout.split()
        if out.returncode == 0 and states:
            return states[0].upper()  # "CANCELLED by 0" -> CANCELLED
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def wait(job: submitit.Job, cluster: str, poll_s: float = 2.0, timeout_s: float | None = None,
         on_state: Callable[[str], None] | None = None) -> LaunchOutcome:
    """Block until the job is over (through requeues), then collect every task's result or error."""
    folder = Path(job.paths.folder)
    if cluster == "debug":
        # Ran here, once: asking the debug job again (result(), exception()) would run the function again.
        task = TaskOutcome(task=0, ok=False)
        with _post_mortem_only_on_a_terminal():
            try:
                task.result, task.ok = job.result(), True
            except Exception as err:  # noqa: BLE001 (the job's own exception)
                task.error = "".join(traceback.format_exception(err))
        return LaunchOutcome(job_id=str(job.job_id), cluster=cluster, state="COMPLETED" if task.ok else "FAILED",
                             folder=folder, tasks=[task])
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    state, unknown, last, first_error = "PENDING", 0, None, None
    watcher = _LocalTaskWatcher(job) if cluster == "local" else None
    cancelled = False
    while True:
        if cluster == "slurm":
            got = slurm_state(job.job_id)
            unknown = unknown + 1 if got is None else 0
            state = got or state
            if (got in TERMINAL_STATES) or unknown >= 3:  # 3 polls unknown: gone from squeue, no sacct
                break
        else:
            if job.done():
                state = "DONE"
                if watcher is not None and not cancelled:
                    watcher.poll(final=True)  # a rank may have died since the last poll, the others then failed
                break
            state = "RUNNING"
            # Local tasks are independent processes: when one rank raised or died, the others would wait in a
            # collective until it times out. Stop them after a short grace (srun --kill-on-bad-exit does this on
            # SLURM). Deaths are only looked for before that: the cancel itself kills tasks.
            if watcher is not None and first_error is None and watcher.poll():
                first_error = time.monotonic()
            if first_error is None and _any_task_failed(job):
                first_error = time.monotonic()
            if first_error is not None and time.monotonic() - first_error > LOCAL_FAILURE_GRACE_S:
                job.cancel(check=False)
                cancelled = True
        if on_state is not None and state != last:
            on_state(state)
        last = state
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job.job_id} still {state} after {timeout_s:.0f}s")
        time.sleep(poll_s)
    if on_state is not None and state != last:
        on_state(state)
    outcome = _collect(job, cluster, state, folder)
    if watcher is not None:
        for t in outcome.tasks:
            if not t.ok and t.task in watcher.died and t.finished_at is None:
                t.died_at = watcher.died[t.task]
                pid = watcher.pids.get(t.task)
                t.error = (f"its process{f' (pid {pid})' if pid else ''} ended without writing a result: killed by "
                           f"a signal (SIGKILL, the OOM killer?) or exited abruptly; see its log {t.stderr}")
    return outcome


LOCAL_FAILURE_GRACE_S = 5.0


class _LocalTaskWatcher:
    """Finds the local executor's task processes (children of its controller, with SUBMITIT_LOCAL_GLOBALID in their
    environment) and notices one that disappears without a result file: a rank killed by SIGKILL or the OOM killer
    writes nothing, so without this the launcher could only report the collective errors of the surviving ranks."""

    def __init__(self, job: submitit.Job) -> None:
        self.job = job
        process = getattr(job, "_process", None)
        self.controller = process.pid if process is not None else None
        self.pids: dict[int, int] = {}
        self.died: dict[int, float] = {}

    def poll(self, final: bool = False) -> bool:
        """True when a task died without a result since the last poll. final: the job has ended by itself (not
        cancelled), so every task without a result died, whether or not its process was seen."""
        if self.controller is None or not os.path.isdir("/proc"):
            return False
        if len(self.pids) < self.job.num_tasks and not final:
            self.pids.update({k: v for k, v in _task_processes(self.controller).items() if k not in self.pids})
        newly = False
        for task in range(self.job.num_tasks):
            if task in self.died or (not final and (task not in self.pids or _process_alive(self.pids[task]))):
                continue
            if not self.job.task(task).paths.result_pickle.exists():  # a task writes its result before it exits
                self.died[task] = time.time()
                newly = True
        return newly


def _task_processes(controller_pid: int) -> dict[int, int]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != controller_pid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in environ:
            if item.startswith(b"SUBMITIT_LOCAL_GLOBALID="):
                found[int(item.split(b"=", 1)[1])] = int(entry)
    return found


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie has ended
    except (OSError, IndexError):
        return False


def _any_task_failed(job: submitit.Job) -> bool:
    from submitit.core import utils as submitit_utils

    for index in range(job.num_tasks):
        path = job.task(index).paths.result_pickle
        if path.exists():
            try:
                if submitit_utils.pickle_load(path)[0] == "error":
                    return True
            except Exception:  # noqa: BLE001 (being written right now: look again at the next poll)
                pass
    return False


@contextlib.contextmanager
def _post_mortem_only_on_a_terminal() -> Iterator[None]:
    """submitit's debug job drops into pdb.post_mortem when the function raises: what you want at a terminal, a hang
    or a garbled error anywhere else (CI, Snakemake, pytest). Off unless stdin is a terminal."""
    import pdb
    import sys

    if sys.stdin is not None and sys.stdin.isatty():
        yield
        return
    original = pdb.post_mortem
    pdb.post_mortem = lambda *args, **kwargs: None
    try:
        yield
    finally:
        pdb.post_mortem = original


def _collect(job: submitit.Job, cluster: str, state: str, folder: Path) -> LaunchOutcome:
    outcome = LaunchOutcome(job_id=str(job.job_id), cluster=cluster, state=state, folder=folder)
    for index in range(job.num_tasks):
        task = job.task(index)
        paths = task.paths
        t = TaskOutcome(task=index, ok=False, stdout=paths.stdout, stderr=paths.stderr)
        _read_result(task, t, wait_s=10 if state in ("COMPLETED", "DONE") else 2)
        outcome.tasks.append(t)
    if cluster != "slurm":  # no scheduler state: say what the tasks say
        outcome.state = "COMPLETED" if outcome.ok else "FAILED"
    return outcome


def _read_result(task: submitit.Job, t: TaskOutcome, wait_s: float) -> None:
    # A shared filesystem may show the result file a moment after the scheduler says the job ended.
    path = task.paths.result_pickle
    deadline = time.monotonic() + wait_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not path.exists():
        t.error = "no result file: the task was killed or never started (see its logs)"
        return
    from submitit.core import utils as submitit_utils

    try:
        kind, value = submitit_utils.pickle_load(path)
    except Exception as err:  # noqa: BLE001
        t.error = f"unreadable result file {path}: {err}"
        return
    t.finished_at = path.stat().st_mtime
    if kind == "success":
        t.ok, t.result = True, value
    else:
        t.error = str(value)


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
