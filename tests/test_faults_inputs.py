"""Bad input, each one clear error (one line naming the file, key or URL), a non-zero exit, and no partial outputs:
truncated or corrupted prepared data (.beton, frame .npy files), a data root that does not exist, a tracking server
that is down, and configs with an unknown key or a value of the wrong type (in the file or in an override).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from support import BIN, QUIET_ENV, ROOT, experiment, free_port, shared_demo, shared_dvs

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return shared_demo(tmp_path_factory) / "images"


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    return shared_dvs(tmp_path_factory) / "prepared"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_line_error(stderr: str, command: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"dst {command}: error:"), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[-1]


def _image_config(root: Path, **kw) -> SimpleNamespace:
    values = dict(dataset="demo_images", root=str(root), batch_size=16, eval_batch_size=None, workers=1,
                  resolution=16, frames=16, train_frames=None, augment=False)
    return SimpleNamespace(**{**values, **kw})


def _frames_config(root: Path, **kw) -> SimpleNamespace:
    values = dict(dataset="demo_dvs", root=str(root), batch_size=8, eval_batch_size=None, workers=0,
                  resolution=32, frames=4, train_frames=None, augment=False)
    return SimpleNamespace(**{**values, **kw})


# --------------------------------------------------------------------------------------------------------------------
# `dst train` on bad data and a tracking server that is down (real processes, run side by side)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_dst_train_on_bad_inputs_fails_in_one_line_and_writes_nothing(tmp_path, images):
    truncated = _copy(images, tmp_path / "truncated")
    with open(truncated / "train.beton", "r+b") as f:
        f.truncate(f.seek(0, 2) - 4096)
    cases = {
        "truncated_beton": (experiment(tmp_path / "a", truncated), str(truncated / "train.beton")),
        "missing_root": (experiment(tmp_path / "b", tmp_path / "no" / "such" / "dir"), str(tmp_path / "no/such/dir")),
        "tracking_down": (experiment(tmp_path / "c", images, tracking={"enabled": True,
                                                                        "uri": f"http://127.0.0.1:{free_port()}"}),
                          "http://127.0.0.1:"),
    }
    env = {**os.environ, **QUIET_ENV}
    procs = {name: subprocess.Popen([str(BIN / "dst"), "train", "--config", str(cfg)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for name, (cfg, _) in cases.items()}
    try:
        outputs = {name: proc.communicate(timeout=360) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, (cfg, named) in cases.items():
        stdout, stderr = outputs[name]
        assert procs[name].returncode == 2, f"{name}: exit {procs[name].returncode}\n{stderr[-3000:]}"
        error = _one_line_error(stderr, "train")
        assert named in error, f"{name}: {error}"
        run_dir = cfg.parent / "run"
        assert not run_dir.exists(), f"{name}: left {sorted(p.name for p in run_dir.rglob('*'))}"
    assert "truncated" in outputs["truncated_beton"][1]
    assert "does not exist" in outputs["missing_root"][1]
    assert "not reachable" in outputs["tracking_down"][1]


# --------------------------------------------------------------------------------------------------------------------
# The loaders on corrupted prepared files (the same size as written, so the size check alone cannot tell)


def test_corrupted_beton_header_names_the_file(tmp_path, images):
    from pipeline.data import build_loaders
    from pipeline.errors import UsageError
    bad = _copy(images, tmp_path / "bad")
    with open(bad / "val.beton", "r+b") as f:
        f.write(b"\xff" * 64)  # the header: version and allocation table pointer
    with pytest.raises(UsageError, match=r"val\.beton is truncated or not an FFCV file"):
        build_loaders(_image_config(bad))
    # An allocation table pointing past the data region (the last bytes of the file).
    bad2 = _copy(images, tmp_path / "bad2")
    with open(bad2 / "train.beton", "r+b") as f:
        f.seek(-16, 2)
        f.write(np.array([2 ** 40, 2 ** 40], dtype="<u8").tobytes())
    with pytest.raises(UsageError, match=r"train\.beton is truncated or corrupt"):
        build_loaders(_image_config(bad2))


@pytest.mark.parametrize("damage", ["header", "truncated", "labels"])
def test_corrupted_frames_files_name_the_file(tmp_path, frames, damage):
    from pipeline.data import build_loaders
    from pipeline.errors import UsageError
    bad = _copy(frames, tmp_path / "bad")
    if damage == "header":  # same size: the .npy header itself is garbage
        with open(bad / "train_frames.npy", "r+b") as f:
            f.write(b"\0" * 64)
        match = r"prepared file .*train_frames\.npy is corrupt"
    elif damage == "truncated":
        with open(bad / "test_frames.npy", "r+b") as f:
            f.truncate(f.seek(0, 2) - 100)
        match = r"prepared file .*test_frames\.npy is truncated"
    else:  # labels rewritten as a pickled object array of the same size: never unpickled
        size = (bad / "train_labels.npy").stat().st_size
        with open(bad / "train_labels.npy", "r+b") as f:
            f.write(b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (3,), }".ljust(128)[:128])
        assert (bad / "train_labels.npy").stat().st_size == size
        match = r"prepared file .*train_labels\.npy is corrupt"
    with pytest.raises(UsageError, match=match):
        build_loaders(_frames_config(bad))


def test_missing_data_root_names_the_path(tmp_path):
    from pipeline.data import build_loaders
    from pipeline.errors import UsageError
    with pytest.raises(UsageError, match=rf"prepared data folder {tmp_path / 'nope'} does not exist"):
        build_loaders(_image_config(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"empty/meta\.json is missing"):
        build_loaders(_image_config(tmp_path / "empty"))


# --------------------------------------------------------------------------------------------------------------------
# Config errors: the key is named, exit 2, before any work (nothing created)


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _base_tree(tmp_path: Path, images: Path) -> dict:
    return yaml.safe_load(experiment(tmp_path / "base", images).read_text()) | {"output_dir": str(tmp_path / "run")}


@pytest.mark.parametrize("command", ["train", "launch"])
@pytest.mark.parametrize("case", ["unknown_key_in_file", "wrong_type_in_file", "unknown_key_override",
                                  "wrong_type_override", "unknown_section", "bad_literal"])
def test_config_errors_name_the_key_and_create_nothing(tmp_path, images, capsys, command, case):
    from pipeline.cli import main
    tree = _base_tree(tmp_path, images)
    overrides: list[str] = []
    if case == "unknown_key_in_file":
        tree["trainer"]["epocs"] = 3
        named = "trainer.epocs"
    elif case == "wrong_type_in_file":
        tree["data"]["batch_size"] = "eight"
        named = "data.batch_size"
    elif case == "unknown_key_override":
        overrides = ["optimizer.learning_rate=0.1"]
        named = "optimizer.learning_rate"
    elif case == "wrong_type_override":
        overrides = ["trainer.epochs=[1, 2]"]
        named = "trainer.epochs"
    elif case == "unknown_section":
        tree["trainr"] = {"epochs": 2}
        named = "trainr"
    else:
        overrides = ["model.connect=NAND"]
        named = "model.connect"
    config = _write(tmp_path, tree)
    assert main([command, "--config", str(config), *overrides]) == 2
    err = capsys.readouterr().err
    assert named in err and str(config) in err and "Traceback" not in err, err
    assert err.startswith(f"dst {command}: error:")
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(120)
def test_config_error_exit_status_of_the_real_command(tmp_path, images):
    tree = _base_tree(tmp_path, images)
    tree["trainer"]["max_steps_per_epoch"] = -3
    config = _write(tmp_path, tree)
    proc = subprocess.run([str(BIN / "dst"), "train", "--config", str(config)], capture_output=True, text=True,
                          timeout=100, cwd=ROOT)
    assert proc.returncode == 2
    error = _one_line_error(proc.stderr, "train")
    assert "trainer.max_steps_per_epoch" in error and "greater than or equal to 1" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("filename", ["/scratch/run/metrics.json", None])
def test_a_full_disk_no_stage_wraps_is_still_one_line(monkeypatch, capsys, filename):
    """The last resort in `dst`'s main: an ENOSPC/EDQUOT OSError from a write no stage turned into a StorageError
    is one line (naming the file when Python knows it) and exit 1; any other OSError keeps its traceback."""
    import errno
    import sys
    import types

    from pipeline import cli
    fake = types.ModuleType("fake_stage")
    fake.configure = lambda parser: None
    fake.run = lambda args: (_ for _ in ()).throw(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), filename))
    monkeypatch.setitem(sys.modules, "fake_stage", fake)
    monkeypatch.setitem(cli.SUBCOMMANDS, "fake", ("fake_stage", "a stage that fills the quota"))
    assert cli.main(["fake"]) == 1
    where = f" (writing {filename})" if filename else ""
    assert capsys.readouterr().err == f"dst fake: error: Disk quota exceeded{where}\n"

    fake.run = lambda args: (_ for _ in ()).throw(OSError(errno.EACCES, "Permission denied", filename))
    with pytest.raises(PermissionError):
        cli.main(["fake"])
