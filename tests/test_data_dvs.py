"""DVS preparation (tonic -> frames) and the frame loaders, on generated trees in tonic's real layouts."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.data import build_loaders
from pipeline.data.demo import write_cifar10_dvs_tree, write_gesture_tree
from pipeline.data.dvs import cifar10_dvs_split, prepare_dvs
from pipeline.data.frames import EventsToFrames, events_to_frames
from pipeline.errors import UsageError

T = 8


def config(root: Path, **kw) -> SimpleNamespace:
    values = dict(dataset="demo_dvs", root=str(root), batch_size=16, eval_batch_size=None, workers=0,
                  resolution=32, frames=T, train_frames=None, augment=True)
    values.update(kw)
    return SimpleNamespace(**values)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


@pytest.fixture(scope="module")
def gesture_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("dvs") / "raw"
    write_gesture_tree(raw, np.random.default_rng(0))
    return raw


@pytest.fixture(scope="module")
def gesture_prepared(gesture_raw) -> Path:
    out = gesture_raw.parent / "prepared"
    prepare_dvs("dvs_gesture", gesture_raw, out, frames=T, split_by="number", size=32, workers=2)
    return out


def structured(events: np.ndarray) -> np.ndarray:
    """Raw DVS Gesture rows (x, y, p, t_ms) as tonic hands them over."""
    out = np.zeros(len(events), dtype=[("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")])
    out["x"], out["y"], out["p"], out["t"] = events[:, 0], events[:, 1], events[:, 2], events[:, 3] * 1000
    return out


def expected_counts(events: np.ndarray, frames: int, split_by: str) -> np.ndarray:
    """Reference [frames, 2] event counts per bin and polarity, written independently of tonic.
    number: bins of n // frames consecutive events (the last n mod frames are left out);
    time: bins of (t_last - t_first) // frames duration from the first event (later events left out)."""
    if split_by == "number":
        per_bin = len(events) // frames
        bins = np.arange(len(events)) // per_bin
    else:
        t = events["t"]
        bins = (t - t[0]) // ((t[-1] - t[0]) // frames)
    keep = bins < frames
    counts = np.zeros((frames, 2), np.int64)
    np.add.at(counts, (bins[keep], events["p"][keep].astype(int)), 1)
    return counts


def test_prepared_files_and_meta(gesture_prepared):
    meta = json.loads((gesture_prepared / "meta.json").read_text())
    assert leftovers(gesture_prepared) == ["meta.json", "test_frames.npy", "test_labels.npy",
                                           "train_frames.npy", "train_labels.npy"]
    assert meta["sensor_size"] == [32, 32, 2] and meta["frames"] == T and meta["max_label"] == 3
    for split, n in (("train", 460), ("test", 120)):
        frames = np.load(gesture_prepared / f"{split}_frames.npy", mmap_mode="r")
        labels = np.load(gesture_prepared / f"{split}_labels.npy")
        assert frames.shape == (n, T, 2, 32, 32) and frames.dtype == np.int16
        assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [n // 4] * 4
        assert meta["splits"][split]["samples"] == n and len(meta["splits"][split]["sources"]) == n


def test_frames_sum_to_event_counts_per_polarity_and_bin(gesture_raw, gesture_prepared):
    meta = json.loads((gesture_prepared / "meta.json").read_text())
    frames = np.load(gesture_prepared / "train_frames.npy", mmap_mode="r")
    labels = np.load(gesture_prepared / "train_labels.npy")
    for i in (0, 17, 459):
        source = gesture_raw / meta["splits"]["train"]["sources"][i]
        events = structured(np.load(source))
        assert labels[i] == int(source.stem)
        counts = np.asarray(frames[i]).sum(axis=(2, 3))  # [T, 2]
        assert np.array_equal(counts, expected_counts(events, T, "number"))
        # split by number: every frame holds the same number of events
        assert set(counts.sum(axis=1).tolist()) == {len(events) // T}


def tonic_frames(events: np.ndarray, sensor: tuple, size: int, frames: int, split_by: str) -> np.ndarray:
    """What tonic computes: Downsample (when smaller) + ToFrame with n_event_bins / n_time_bins."""
    import tonic.transforms as TT
    bins = {"n_event_bins": frames} if split_by == "number" else {"n_time_bins": frames}
    steps = [] if size == sensor[0] else [TT.Downsample(sensor_size=sensor, target_size=(size, size))]
    return TT.Compose(steps + [TT.ToFrame(sensor_size=(size, size, sensor[2]), **bins)])(events.copy())


@pytest.mark.parametrize("split_by", ["number", "time"])
def test_integration_matches_reference_at_full_resolution(split_by):
    from pipeline.data.demo import moving_shape_events

    events = moving_shape_events(np.random.default_rng(1), angle=0.3)
    events[:, 3] = np.round(events[:, 3])
    events = structured(events)
    frames = events_to_frames(events, (128, 128, 2), 16, split_by)
    assert frames.shape == (16, 2, 128, 128) and frames.dtype == np.int16
    assert np.array_equal(frames.sum(axis=(2, 3)), expected_counts(events, 16, split_by))
    # and each event lands on its own pixel: one frame checked pixel by pixel
    first = events[: len(events) // 16] if split_by == "number" else None
    if first is not None:
        reference = np.zeros((2, 128, 128), np.int64)
        np.add.at(reference, (first["p"].astype(int), first["y"], first["x"]), 1)
        assert np.array_equal(frames[0], reference)


@pytest.mark.parametrize("split_by", ["number", "time"])
@pytest.mark.parametrize("size", [128, 64, 48, 37])
@pytest.mark.parametrize("dtype", ["gesture", "cifar10"])
def test_integration_is_tonics_to_frame(split_by, size, dtype):
    """Identical int16 frames to tonic's Downsample + ToFrame, for both datasets' event dtypes (signed/unsigned
    coordinates, int64/uint64 time), every split rule and sizes that do and do not divide the sensor."""
    import tonic

    rng = np.random.default_rng(size)
    n = 20_011  # not a multiple of the frame count: tonic drops the remainder
    ds = tonic.datasets.DVSGesture if dtype == "gesture" else tonic.datasets.CIFAR10DVS
    events = np.zeros(n, dtype=ds.dtype)
    events["x"], events["y"] = rng.integers(0, 128, n), rng.integers(0, 128, n)
    events["p"] = rng.integers(0, 2, n)
    events["t"] = np.sort(rng.integers(0, 1_000_000, n))
    ours = events_to_frames(events, (128, 128, 2), 10, split_by, size=size)
    reference = tonic_frames(events, (128, 128, 2), size, 10, split_by)
    assert ours.dtype == reference.dtype == np.int16
    assert np.array_equal(ours, reference)


def test_integration_wraps_int16_and_handles_one_polarity_as_tonic():
    events = np.zeros(40_000, dtype=[("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")])
    events["t"] = np.arange(len(events))  # every event on pixel (0, 0): 40000 counts wrap around in int16
    assert np.array_equal(events_to_frames(events, (4, 4, 1), 1), tonic_frames(events, (4, 4, 1), 4, 1, "number"))
    events["p"][::2] = True
    with pytest.raises(ValueError, match="both polarities"):
        events_to_frames(events, (4, 4, 1), 1)


def test_integration_rejects_events_outside_the_sensor():
    events = np.zeros(100, dtype=[("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")])
    events["t"] = np.arange(100)
    events["x"][57] = 128
    with pytest.raises(ValueError, match=r"event 57 \(x=128, y=0"):
        events_to_frames(events, (128, 128, 2), 4)
    with pytest.raises(ValueError, match=r"event 57 \(x=128, y=0"):
        events_to_frames(events, (128, 128, 2), 4, size=37)  # 128 * 37/128 = 37: outside the downsampled frame too
    events["y"][12] = -1  # negative coordinates too (numpy indexing would wrap them around silently)
    with pytest.raises(ValueError, match=r"event 12 \(x=0, y=-1"):
        events_to_frames(events, (128, 128, 2), 4)
    with pytest.raises(ValueError, match="missing p, t"):
        events_to_frames(np.zeros(4, dtype=[("x", "<i2"), ("y", "<i2")]), (128, 128, 2), 2)


def test_frame_transform_pickles_for_worker_processes():
    import pickle
    transform = pickle.loads(pickle.dumps(EventsToFrames((128, 128, 2), 32, 8, "time")))
    assert (transform.sensor_size, transform.size, transform.frames, transform.split_by) == ((128, 128, 2), 32, 8,
                                                                                               "time")
    with pytest.raises(ValueError, match="split_by must be one of number, time, got 'count'"):
        EventsToFrames((128, 128, 2), 32, 8, "count")


@pytest.mark.timeout(120)
def test_frame_loaders(gesture_prepared):
    loaders = build_loaders(config(gesture_prepared), seed=0)
    assert loaders.num_classes == 4 and loaders.input_kind == "frames"
    assert len(loaders.train) == 460 // 16 and len(loaders.val) == -(-120 // 16)
    inputs, labels = next(iter(loaders.train))
    assert inputs.shape == (16, T, 2, 32, 32) and inputs.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.int64
    val = list(loaders.val)
    assert [len(y) for _, y in val] == [16] * 7 + [8]
    assert torch.equal(torch.cat([y for _, y in val]), torch.from_numpy(np.load(gesture_prepared / "test_labels.npy")))
    # without augmentation, val frames are the stored counts
    assert torch.equal(val[0][0], torch.from_numpy(np.load(gesture_prepared / "test_frames.npy")[:16]).float())


def test_train_order_and_augmentation_are_deterministic(gesture_prepared):
    loaders = build_loaders(config(gesture_prepared, train_frames=5), seed=3)

    def epoch(e):
        loaders.train.set_epoch(e)
        return [(x.clone(), y.clone()) for x, y in loaders.train]

    first, again, other = epoch(2), epoch(2), epoch(3)
    assert first[0][0].shape == (16, 5, 2, 32, 32)  # random subset of 5 of the 8 frames
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other))
    # same batches whether built in worker processes or in this one
    workers = build_loaders(config(gesture_prepared, train_frames=5, workers=2), seed=3)
    workers.train.set_epoch(2)
    assert all(torch.equal(x, inputs) for (x, _), (inputs, _) in zip(first, workers.train))


def test_rank_shards_are_disjoint(gesture_prepared):
    labels_seen = {}
    for rank in (0, 1):
        loaders = build_loaders(config(gesture_prepared, augment=False), rank=rank, world_size=2, seed=1)
        labels_seen[rank] = (loaders.train._order(4), np.arange(rank, 120, 2), len(loaders.train))
        assert sum(len(y) for _, y in loaders.val) == 60
    (train0, _, n0), (train1, _, n1) = labels_seen[0], labels_seen[1]
    assert n0 == n1 == 230 // 16
    assert not set(train0.tolist()) & set(train1.tolist())
    assert set(train0.tolist()) | set(train1.tolist()) == set(range(460))


def test_truncated_frames_file_is_detected(gesture_prepared, tmp_path):
    copy = tmp_path / "prepared"
    shutil.copytree(gesture_prepared, copy)
    with open(copy / "train_frames.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) - 1000)
    with pytest.raises(UsageError, match=r"train_frames\.npy is truncated"):
        build_loaders(config(copy))


def test_config_mismatches_are_errors(gesture_prepared):
    with pytest.raises(UsageError, match=r"data\.frames is 16 but .* holds 8 frames"):
        build_loaders(config(gesture_prepared, frames=16))
    with pytest.raises(UsageError, match=r"data\.train_frames must be between 1 and data\.frames"):
        build_loaders(config(gesture_prepared, train_frames=9))
    with pytest.raises(UsageError, match="needs 'images'"):
        build_loaders(config(gesture_prepared, dataset="demo_images"))


# ---------------------------------------------------------------- bad raw layouts

@pytest.fixture
def gesture_copy(gesture_raw, tmp_path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(gesture_raw, raw)
    return raw


@pytest.mark.parametrize("problem, message", [
    ("no_dataset_folder", r"raw/DVSGesture does not exist -- expected layout \(datasets/dvs_gesture\.yaml\)"),
    ("no_archive", r"ibmGestureTest\.tar\.gz is missing: tonic checks that the archive exists"),
    ("no_split_folder", r"ibmGestureTrain does not exist \(extract ibmGestureTrain\.tar\.gz there\)"),
    ("too_few_files", r"ibmGestureTest holds 96 \.npy files; tonic needs at least 100"),
    ("bad_user_folder", r"raw/DVSGesture/ibmGestureTrain/participant7: expected folders named user<NN>_<lighting>"),
    ("bad_file_name", r"user01_lab/clap\.npy: expected <label>\.npy"),
    ("malformed_events", r"user03_led/2\.npy: cannot read its events"),
])
def test_bad_gesture_layouts(gesture_copy, tmp_path, problem, message):
    base = gesture_copy / "DVSGesture"
    if problem == "no_dataset_folder":
        shutil.rmtree(base)
    elif problem == "no_archive":
        (base / "ibmGestureTest.tar.gz").unlink()
    elif problem == "no_split_folder":
        shutil.rmtree(base / "ibmGestureTrain")
    elif problem == "too_few_files":
        for folder in [*(base / "ibmGestureTest").glob("user29_*"), base / "ibmGestureTest" / "user28_lab"]:
            shutil.rmtree(folder)  # 120 - 6 x 4 files
    elif problem == "bad_user_folder":
        (base / "ibmGestureTrain" / "participant7").mkdir()
    elif problem == "bad_file_name":
        np.save(base / "ibmGestureTrain" / "user01_lab" / "clap.npy", np.zeros((10, 4), np.int32))
    elif problem == "malformed_events":
        np.save(base / "ibmGestureTrain" / "user03_led" / "2.npy", np.zeros((50, 3), np.int32))
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=message):
        prepare_dvs("dvs_gesture", gesture_copy, out, frames=T, size=32, workers=2)
    assert leftovers(out) == []


def test_cli_reports_layout_error_in_one_line(tmp_path, capsys):
    from pipeline.cli import main

    status = main(["data", "dvs", "--dataset", "dvs_gesture", "--raw", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and f"{tmp_path}/DVSGesture does not exist" in err


# ---------------------------------------------------------------- CIFAR10-DVS

@pytest.fixture(scope="module")
def cifar_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("cifar") / "raw"
    write_cifar10_dvs_tree(raw, np.random.default_rng(0))
    return raw


def test_cifar10_dvs_split_is_disjoint_per_class_and_deterministic(cifar_raw, tmp_path):
    out = tmp_path / "out"
    meta = prepare_dvs("cifar10_dvs", cifar_raw, out, frames=4, split_by="time", size=16, workers=2)
    train, test = (meta["splits"][s]["sources"] for s in ("train", "test"))
    assert len(train) == 900 and len(test) == 100 and not set(train) & set(test)
    assert meta["splits"]["train"]["class_counts"] == [90] * 10 and meta["splits"]["test"]["class_counts"] == [10] * 10
    assert np.load(out / "train_frames.npy", mmap_mode="r").shape == (900, 4, 2, 16, 16)
    # the split depends only on the file names: any listing order gives the same one
    paths = [str(cifar_raw / p) for p in train + test]
    targets = [meta["classes"].index(Path(p).parent.name) for p in paths]
    order = list(range(len(paths)))
    random.Random(0).shuffle(order)
    split = cifar10_dvs_split([paths[i] for i in order], [targets[i] for i in order], 0.9)
    assert sorted(str(Path(paths[order[i]]).relative_to(cifar_raw)) for i in split["test"]) == sorted(test)
    # first 90% of each class in sorted name order (SpikingJelly's rule)
    airplane = sorted((p for p in train + test if p.startswith("CIFAR10DVS/airplane/")), key=lambda p: Path(p).name)
    assert set(airplane[:90]) <= set(train) and set(airplane[90:]) <= set(test)


def test_cifar10_dvs_missing_class_folder(cifar_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(cifar_raw, raw)
    shutil.rmtree(raw / "CIFAR10DVS" / "truck")
    with pytest.raises(UsageError, match=r"CIFAR10DVS/truck is missing or holds no \.aedat4 files"):
        prepare_dvs("cifar10_dvs", raw, tmp_path / "out", frames=4, size=16, workers=1)
    assert leftovers(tmp_path / "out") == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_frame_loaders_on_cuda(gesture_prepared):
    gpu = build_loaders(config(gesture_prepared, train_frames=5, workers=2), device="cuda", seed=3)
    cpu = build_loaders(config(gesture_prepared, train_frames=5), device="cpu", seed=3)
    for (xg, yg), (xc, yc) in zip(gpu.train, cpu.train):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
