"""Waiting for a launched job and reporting what each rank did (pipeline/launcher.py submits).

`wait(job, cluster)` polls until the job is over, then returns a LaunchOutcome: one TaskOutcome per rank (its result,
or its traceback / why it left none), the job id and state, and `failure_report()`, which names the rank that died
first and quotes its log.

Status without SLURM accounting: submitit asks `sacct`, which fails on a cluster without slurmdbd (it then reports
UNKNOWN forever and would wait forever for a job that died without a result file). `wait()` asks `squeue` first
(finished jobs stay visible for MinJobAge) and `sacct` second, and treats a job that neither knows as finished.

Local jobs: one rank that dies must end the job, or the others wait in a collective until a timeout; the watcher
notices a rank process that exited with an error and stops the rest.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import submitit

# SLURM job states after which nothing more happens to the job (a requeued job passes through REQUEUED/PENDING).
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}


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
