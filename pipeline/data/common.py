"""Small helpers shared by the data commands and loaders: worker counts, atomic outputs, meta.json."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from pipeline.errors import UsageError

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


def temp_name(path: Path) -> Path:
    """Where `path` is written before it is complete (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_outputs(paths: list[Path]) -> Iterator[list[Path]]:
    """Yield temporary names for `paths`; rename them all into place only if the block completes,
    else delete them: a failed or interrupted run leaves no partial output under the final names."""
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
