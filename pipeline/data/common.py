"""Small helpers shared by the data commands and loaders: worker counts, atomic outputs, meta.json."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
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
