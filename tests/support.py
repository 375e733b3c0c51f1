"""Helpers shared by the fault-injection and engine tests (not collected: no test_ prefix).

The demo data is generated and prepared once per pytest session (under the session's base temp dir) and shared by
the fault modules: preparing it is the slowest part of a tiny training test.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUIET_ENV = {"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def shared_demo(tmp_path_factory) -> Path:
    """<base>/raw/demo_images (the demo's class-folder JPEGs) and <base>/images (prepared FFCV files), made once per
    session with the real preparation code."""
    base = tmp_path_factory.getbasetemp() / "faults-demo"
    done = base / "ready"
    if not done.exists():
        from pipeline.data.demo import write_digit_images
        from pipeline.data.imagenet import prepare_imagenet

        raw = base / "raw" / "demo_images"
        if raw.exists():
            import shutil
            shutil.rmtree(raw)
        write_digit_images(raw, np.random.default_rng(0))
        prepare_imagenet(raw, base / "images", max_resolution=32, workers=2)
        done.write_text("")
    return base


def shared_dvs(tmp_path_factory) -> Path:
    """<base>/raw (a tonic DVSGesture tree of the demo's events) and <base>/prepared (T=4 frames, 32 x 32), made once
    per session with the real preparation code."""
    base = tmp_path_factory.getbasetemp() / "faults-dvs"
    done = base / "ready"
    if not done.exists():
        import shutil

        from pipeline.data.demo import write_gesture_tree
        from pipeline.data.dvs import prepare_dvs

        shutil.rmtree(base / "raw", ignore_errors=True)
        write_gesture_tree(base / "raw", np.random.default_rng(0))
        prepare_dvs("dvs_gesture", base / "raw", base / "prepared", frames=4, split_by="number", size=32, workers=2)
        done.write_text("")
    return base


def experiment(tmp_path: Path, data_root: Path, **sections) -> Path:
    """A tiny experiment (as tests/test_engine.py): ResNet-18 FSNN, T=2, 16 px, 3 steps an epoch, tracking off."""
    tree = {
        "name": "t", "output_dir": str(tmp_path / "run"),
        "model": {"name": "fsnn_resnet18", "T": 2, "aap": True},
        "data": {"dataset": "demo_images", "root": str(data_root), "batch_size": 8, "resolution": 16, "workers": 1},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "trainer": {"epochs": 2, "max_steps_per_epoch": 3, "max_eval_batches": 1, "progress": False, "seed": 7},
        "tracking": {"enabled": False},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            tree.setdefault(section, {}).update(values)
        else:
            tree[section] = values
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def demo_workflow(tmp_path: Path, campaign: str, overrides: list[str] = ()) -> Path:
    """config/demo.yaml for a workflow run in tmp_path: its own campaign and MLflow store (tmp_path/mlflow.db), the
    experiment files by absolute path, and `overrides` for every experiment. Returns the file written."""
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["campaign"] = campaign
    cfg["tracking"]["uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    for spec in cfg["experiments"].values():
        spec["config"] = str(ROOT / spec["config"])
    cfg["overrides"] = list(overrides)
    path = tmp_path / f"{campaign}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(profile: str, workdir: Path, config: Path, *args: str,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """`snakemake all --profile <ROOT/profile> [args]` on workflow/Snakefile, run in workdir with the workflow config
    `config`; the `dst` and `snakemake` of this environment come first on PATH."""
    cmd = [str(BIN / "snakemake"), "all", "--profile", str(ROOT / profile), "--snakefile",
           str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir), *args, "--configfile", str(config)]
    env = {**os.environ, **QUIET_ENV, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def dst(*args, env: dict | None = None, timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dst"), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **QUIET_ENV, **(env or {})}, cwd=cwd)


def dst_popen(*args, log: Path, env: dict | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    """`dst ...` in its own session (so the test can signal its whole process group), output to `log`."""
    out = open(log, "w")
    try:
        return subprocess.Popen([str(BIN / "dst"), *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **QUIET_ENV, **(env or {})}, cwd=cwd, start_new_session=True)
    finally:
        out.close()


@contextlib.contextmanager
def reaped(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Whatever happens in the block, the process group started by dst_popen is gone afterwards."""
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
        kill_session(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (the group leader may be gone while orphans of it still run)."""
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def session_members(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):  # field 6 of stat: the session id
                found.append(int(entry))
    return found


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05,
             proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            text = log.read_text()[-4000:] if log is not None and log.exists() else ""
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}\n{text}")
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environ_of(pid: int) -> dict[str, str]:
    """The environment a process was started with (/proc/<pid>/environ; later os.environ changes are not in it)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a TCP socket LISTENing on `port` (from /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    words = [bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, 32, 8)]
                    found.add(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return found


@contextlib.contextmanager
def mlflow_server(workdir: Path, *extra: str, timeout_s: float = 180) -> Iterator[tuple[str, int]]:
    """`mlflow server` as the project documents it (no --host: MLflow's default), on a free port; yields (url,
    port) once it answers, and stops the server (its whole process group) afterwards."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "mlflow-server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri",
                                 f"sqlite:///{workdir}/server.db", "--artifacts-destination",
                                 str(workdir / "artifacts"), "--port", str(port), "--workers", "1", *extra],
                                stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
                                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(healthy, timeout_s, f"mlflow server on port {port}", poll_s=0.5, proc=proc, log=log_path)
        yield url, port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_session(proc.pid)
            proc.wait(timeout=30)
