"""Shared pytest fixtures: the real SLURM cluster (scripts/local_slurm) and generic helpers.

`slurm_cluster` (session) starts munge + slurmctld + two slurmd "nodes" on this machine with
scripts/local_slurm/start.sh (reusing a cluster that is already up) and stops it at the end of the session if this
session started it. It skips only when SLURM cannot run here: not root with no cluster running, or the Debian
packages missing and not installable. With CI=true or DST_REQUIRE_SLURM=1 those cases fail instead of skipping, so
CI never passes by silently skipping the SLURM tests. DST_SLURM_KEEP=1 leaves the cluster (and its logs) running.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO_ROOT / "scripts" / "local_slurm"
VENV_BIN = Path(sys.executable).parent


def run(cmd: list[str] | str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with text output captured, a timeout, and the output in the error message when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, shell=isinstance(cmd, str), **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class SlurmCluster:
    state_dir: Path
    conf: Path
    partition: str = "debug"
    nodes: tuple[str, ...] = ("node1", "node2")

    def log(self, name: str, lines: int = 30) -> str:
        """Tail of a daemon log (slurmctld, slurmd-node1, slurmd-node2, munged) for failure messages."""
        path = self.state_dir / "log" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _controller_running(state_dir: Path) -> bool:
    pidfile = state_dir / "run" / "slurmctld.pid"
    try:
        pid = int(pidfile.read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return False
    return "(slurmctld)" in stat and stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    state_dir = Path(os.environ.get("DST_SLURM_DIR", "/tmp/dst-slurm"))
    required = _truthy("CI") or _truthy("DST_REQUIRE_SLURM")
    cannot = pytest.fail if required else pytest.skip
    was_running = _controller_running(state_dir)
    if not was_running and os.geteuid() != 0:
        cannot(f"real SLURM tests need root to start munge/slurmctld/slurmd (no cluster running in {state_dir}); "
               f"run as root or start one with: sudo {LOCAL_SLURM}/start.sh")
    proc = subprocess.run(["bash", str(LOCAL_SLURM / "start.sh")], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "DST_SLURM_DIR": str(state_dir)})
    if proc.returncode == 3:
        cannot(f"SLURM cannot run here: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    if proc.returncode != 0:
        pytest.fail(f"scripts/local_slurm/start.sh failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    conf = state_dir / "etc" / "slurm.conf"
    previous_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # sbatch/squeue run by submitit, snakemake and the tests read it
    try:
        yield SlurmCluster(state_dir=state_dir, conf=conf)
    finally:
        if previous_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous_conf
        if not was_running and not _truthy("DST_SLURM_KEEP"):
            subprocess.run(["bash", str(LOCAL_SLURM / "stop.sh")], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "DST_SLURM_DIR": str(state_dir)})


class SmallFilesystem:
    """A tmpfs of a few MiB mounted at `path`: a disk that really fills up (ENOSPC from the kernel, SIGBUS for a
    memmap's pages), for the full-disk tests."""

    def __init__(self, path: Path):
        self.path = path
        self.mounted = False

    def mount(self, size_bytes: int) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(self.path)])
        self.mounted = True
        return self.path

    def resize(self, size_bytes: int) -> None:
        run(["mount", "-o", f"remount,size={size_bytes}", str(self.path)])

    def fill(self) -> Path:
        """Write `filler` until the kernel says ENOSPC: nothing more fits afterwards."""
        filler = self.path / "filler"
        with open(filler, "wb", buffering=0) as f, pytest.raises(OSError, match="No space left"):
            while True:
                f.write(b"\0" * 512)
        return filler


@pytest.fixture
def small_filesystem(tmp_path):
    """SmallFilesystem at tmp_path/fs, unmounted afterwards. Mounting needs root with CAP_SYS_ADMIN; where that is
    refused (a container without it, say) the full-disk tests skip, CI included, and `pytest -ra` lists them."""
    fs = SmallFilesystem(tmp_path / "fs")
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(probe)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("the full-disk tests mount a small tmpfs, which needs root with CAP_SYS_ADMIN")
    subprocess.run(["umount", str(probe)], check=True)
    try:
        yield fs
    finally:
        if fs.mounted:
            subprocess.run(["umount", "--lazy", str(fs.path)], capture_output=True)


def pytest_collection_modifyitems(config, items):
    # Every test that uses the real cluster carries the `slurm` marker (`-m "not slurm"` deselects them).
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)
