"""Data preparation stopped mid-write, on the real `dst data` commands: SIGTERM (what SLURM sends on preemption or a
time limit, and scancel) and SIGKILL (what follows KillWait later, the OOM killer, a node failure), sent to the
whole process group (the command and its writer processes) while the output files are being written.

Outputs appear only when complete: during the write only temporary names exist; after SIGTERM nothing is left;
after SIGKILL only temporary names are left, which the rerun removes; the rerun succeeds and its files load.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import dst, dst_popen, reaped, session_members, shared_demo, shared_dvs, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

IMAGENET_FINALS = {"train.beton", "val.beton", "bad_images.txt", "meta.json"}
DVS_FINALS = {"train_frames.npy", "train_labels.npy", "test_frames.npy", "test_labels.npy", "meta.json"}


@pytest.fixture(scope="module")
def raw_images(tmp_path_factory) -> Path:
    return shared_demo(tmp_path_factory) / "raw" / "demo_images"


@pytest.fixture(scope="module")
def raw_dvs(tmp_path_factory) -> Path:
    return shared_dvs(tmp_path_factory) / "raw"


def _names(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()} if out.exists() else set()


def _temps(out: Path) -> set[str]:
    return {n for n in _names(out) if ".tmp-" in n}


def _interrupt(args: list, out: Path, sig: int, tmp_path: Path) -> SimpleNamespace:
    """Start `dst data ...`; as soon as a temporary output exists, check that no final output exists and deliver
    `sig` to the whole process group (as SLURM does to a job step). (Not frozen with SIGSTOP first: a SIGSTOP that
    lands while the writer forks can leave a new worker stopped for good, which is not a fault under test.)"""
    log = tmp_path / f"{out.name}-{signal.Signals(sig).name}.log"
    with reaped(dst_popen("data", *args, "--out", out, log=log)) as proc:
        wait_for(lambda: _temps(out), 120, f"a temporary output in {out}", poll_s=0.005, proc=proc, log=log)
        during = _names(out)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
        # The group is gone with it: no writer process keeps running (or writing) after the command ended.
        wait_for(lambda: not session_members(proc.pid), 30, "the writer processes to end")
    return SimpleNamespace(rc=proc.returncode, during=during, after=_names(out), log=log.read_text())


def _check_interrupted(result: SimpleNamespace, finals: set[str], sig: int) -> None:
    assert result.during and not result.during & finals, result.during  # only temporary names while writing
    assert not result.after & finals, result.after  # and never a final name
    if sig == signal.SIGTERM:
        assert result.rc == 128 + signal.SIGTERM, result.log[-3000:]
        assert "SIGTERM received: stopping; partial outputs are removed" in result.log
        assert "Traceback" not in result.log, result.log[-3000:]
        assert result.after == set(), result.after  # cleaned up on the way out
    else:
        assert result.rc == -signal.SIGKILL
        assert result.after and all(".tmp-" in n for n in result.after), result.after


def _rerun_is_complete(args: list, out: Path, finals: set[str]) -> None:
    proc = dst("data", *args, "--out", out, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert _names(out) == finals  # the stale temporaries of the killed run are gone too


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_imagenet_preparation_interrupted_leaves_no_partial_output(raw_images, tmp_path, sig):
    from pipeline.data import build_loaders
    out = tmp_path / "prepared"
    args = ["imagenet", "--raw", raw_images, "--max-resolution", "32", "--workers", "1"]
    _check_interrupted(_interrupt(args, out, sig, tmp_path), IMAGENET_FINALS, sig)
    _rerun_is_complete(args, out, IMAGENET_FINALS)
    loaders = build_loaders(SimpleNamespace(dataset="demo_images", root=str(out), batch_size=16, eval_batch_size=None,
                                            workers=1, resolution=16, frames=16, train_frames=None, augment=False))
    x, y = next(iter(loaders.val))
    assert x.shape == (16, 3, 16, 16) and y.shape == (16,)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_dvs_preparation_interrupted_leaves_no_partial_output(raw_dvs, tmp_path, sig):
    from pipeline.data import build_loaders
    out = tmp_path / "prepared"
    args = ["dvs", "--dataset", "dvs_gesture", "--raw", raw_dvs, "--frames", "4", "--size", "32", "--workers", "2"]
    _check_interrupted(_interrupt(args, out, sig, tmp_path), DVS_FINALS, sig)
    _rerun_is_complete(args, out, DVS_FINALS)
    loaders = build_loaders(SimpleNamespace(dataset="demo_dvs", root=str(out), batch_size=8, eval_batch_size=None,
                                            workers=0, resolution=32, frames=4, train_frames=None, augment=False))
    x, y = next(iter(loaders.val))
    assert x.shape == (8, 4, 2, 32, 32) and y.shape == (8,)


@pytest.mark.timeout(60)
def test_stale_temporaries_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    from pipeline.data.common import atomic_outputs, remove_stale_temps
    final = tmp_path / "train.beton"
    dead = tmp_path / ".train.beton.tmp-999999999"  # no such pid
    dead.write_bytes(b"partial")
    live = tmp_path / f".train.beton.tmp-{os.getppid()}"  # a live process (pytest's parent): a concurrent writer
    live.write_bytes(b"in progress")
    other = tmp_path / ".val.beton.tmp-999999999"  # another output's temp is not this output's business
    other.write_bytes(b"x")
    assert remove_stale_temps(final) == [dead]
    assert live.exists() and other.exists()
    dead.write_bytes(b"partial")
    with atomic_outputs([final]) as (tmp,):
        tmp.write_bytes(b"complete")
        assert not dead.exists()
    assert final.read_bytes() == b"complete" and not tmp.exists()
    # The demo generator's temporary folders too.
    stale_dir = tmp_path / ".demo_images.tmp-999999999"
    (stale_dir / "train").mkdir(parents=True)
    remove_stale_temps(tmp_path / "demo_images")
    assert not stale_dir.exists()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["imagenet", "dvs"])
def test_full_disk_while_preparing_is_one_error_and_leaves_nothing(kind, raw_images, raw_dvs, small_filesystem):
    """2 MiB cannot hold either split. The DVS frames used to be stored into a writable memmap, whose sparse pages
    killed the process with SIGBUS (exit 135, no message, its temp file left) when the disk filled."""
    out = small_filesystem.mount(2 << 20) / "prepared"
    args = (["imagenet", "--raw", raw_images, "--max-resolution", "32", "--workers", "1"] if kind == "imagenet" else
            ["dvs", "--dataset", "dvs_gesture", "--raw", raw_dvs, "--frames", "4", "--size", "32", "--workers", "2"])
    proc = dst("data", *args, "--out", out)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (f"dst data: error: cannot write prepared data under {out}: "
                                                    "no space left on device (or over quota)")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]  # none from the FFCV writer's processes either
    assert _names(out) == set()  # neither a final name nor a temporary one
