"""A full disk or quota while writing an output: one clear error that names the path, instead of a torch traceback.

Clusters run out of quota mid-run more often than anything else goes wrong with storage. torch.save writes through
a C++ stream that reports a full disk as a RuntimeError ("unexpected pos ...", "file write failed") with no errno,
so for those the cause is read off the filesystem afterwards: a failed write that left less than NEARLY_FULL_BYTES
free is taken to be the full disk's doing.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from pipeline.errors import StorageError

OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NEARLY_FULL_BYTES = 64 << 20


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem holding `path` (or its nearest existing parent); None if none can be read."""
    p = Path(path).absolute()
    for candidate in (p, *p.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def tree_bytes(path: str | Path) -> int:
    """Bytes in the files under `path` (a checkpoint tag, say)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def is_out_of_space(err: BaseException, where: str | Path) -> bool:
    if isinstance(err, OSError) and err.errno in OUT_OF_SPACE_ERRNOS:
        return True
    if isinstance(err, (OSError, RuntimeError)):
        free = free_bytes(where)
        return free is not None and free < NEARLY_FULL_BYTES
    return False


def cause(err: BaseException, where: str | Path) -> str:
    """Why a write failed, in a few words: call it before removing any partial output (which frees space again)."""
    if is_out_of_space(err, where):
        return "no space left on device (or over quota)"
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def write_failure(err: BaseException, path: str | Path, what: str, *, remove_partial: Callable[[], None] | None = None,
                  kept: str = "") -> StorageError:
    """The StorageError for `err` while writing `what` at `path`, once remove_partial has run; `kept` says what
    survives the failure and how to go on."""
    reason = cause(err, path)
    if remove_partial is not None:
        remove_partial()
    # No figure of the free space now: the failed writer's file is still open (the traceback holds it), so removing
    # it frees nothing until the process exits.
    return StorageError(f"cannot write {what} {path}: {reason}" + (f". {kept}" if kept else ""))


@contextlib.contextmanager
def writing(path: str | Path, what: str) -> Iterator[None]:
    """A full disk while writing `what` at `path` becomes a StorageError naming both; other errors pass through.
    The block's own cleanup (temporary names, atomic renames) is what leaves nothing partial."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not is_out_of_space(err, path):
            raise
        raise write_failure(err, path, what) from err


def temp_name(path: Path) -> Path:
    """Where `path` is written before it is complete (same folder, so the rename is atomic; the pid lets
    pipeline.data.common.remove_stale_temps tell a dead run's leftovers from a live run's)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomically(path: str | Path, what: str, write: Callable[[Path], object]) -> None:
    """write(tmp), then rename it onto `path` (its folder made if missing): readers see the old file or the new one,
    never a partial one. A full disk is a StorageError naming `path`; the temporary file is gone whatever happened."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with writing(path, what):
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
