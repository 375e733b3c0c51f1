"""Small helpers shared by the data commands and loaders: worker counts, atomic outputs, stopping workers, SIGTERM
deferral, meta.json."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

from pipeline.errors import UsageError
from pipeline.storage import temp_name

META_FILE = "meta.json"


def default_workers() -> int:
    """SLURM_CPUS_PER_TASK when set (a SLURM job), else the CPUs this process may run on."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    return len(os.sched_getaffinity(0))


def resolve_workers(workers: int | None) -> int:
    if workers is None:
        return default_workers()
    if workers < 0:
        raise UsageError(f"workers must be >= 0, got {workers}")
    return workers


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp_name(path) files (or folders) left by a run that was killed (SIGKILL, OOM, node failure) before
    it could clean up: a prepared ImageNet split is tens of GB, and a rerun writes under its own pid. Temps of a
    process still alive on this machine are left alone (a concurrent run)."""
    removed = []
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_outputs(paths: list[Path]) -> Iterator[list[Path]]:
    """Yield temporary names for `paths`; rename them all into place only if the block completes,
    else delete them: a failed or interrupted run leaves no partial output under the final names."""
    for p in paths:
        remove_stale_temps(p)
    temps = [temp_name(p) for p in paths]
    try:
        yield temps
        for tmp, final in zip(temps, paths):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def write_meta(path: Path, meta: dict) -> None:
    """meta.json: what was prepared, from what, and the byte size of every file (truncation check).
    Callers write it to the temporary name that atomic_outputs renames last."""
    path.write_text(json.dumps(meta, indent=1) + "\n")


def read_meta(root: Path) -> dict:
    path = root / META_FILE
    if not root.exists():  # say so plainly (a typo in data.root), rather than "meta.json is missing"
        raise UsageError(f"prepared data folder {root} does not exist (check data.root, or run `dst data ...` first)")
    if not path.is_file():
        raise UsageError(f"{path} is missing: {root} is not a prepared dataset folder (run `dst data ...` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err})") from None


def check_file_size(path: Path, expected: int) -> None:
    """A prepared file must have exactly the size recorded when it was written."""
    if not path.is_file():
        raise UsageError(f"prepared file {path} is missing")
    actual = path.stat().st_size
    if actual != expected:
        what = "truncated" if actual < expected else "larger than written"
        raise UsageError(f"prepared file {path} is {what}: {actual} bytes, expected {expected} "
                         f"(prepare it again)")


def stop_processes(processes, grace_s: float = 5.0) -> None:
    """SIGTERM every live one of `processes` (multiprocessing.Process), then SIGKILL those still alive after
    grace_s. Not a plain join: a worker that cannot act on SIGTERM (stopped, or stuck in the kernel) would make it
    wait forever, and the interrupted run would never reach the clean-up of its temporary files."""
    alive = [p for p in processes if p.is_alive()]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in alive:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


@contextlib.contextmanager
def sigterm_deferred() -> Iterator[None]:
    """A SIGTERM that arrives in the block is handled (by the handler in place before it) when the block ends.

    `dst data` turns SIGTERM into an exception, raised wherever the main thread is. Around the start of worker
    processes, such an exception could leave a worker that the clean-up does not know of (raised between the fork
    and the start's return), or a lock taken and never released (raised between a lock's acquire and the `with`
    that releases it), which the clean-up then waits on forever. (Not pthread_sigmask: that blocks the signal in
    this thread only, and another thread, a queue's feeder, would take it.) A process forked in the block keeps
    SIGTERM's default action."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    parent, pending = os.getpid(), []

    def defer(signum, frame):
        if os.getpid() != parent:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        else:
            pending.append(signum)

    previous = signal.signal(signal.SIGTERM, defer)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if pending:
            os.kill(os.getpid(), signal.SIGTERM)
