"""DVS datasets -> frames: tonic reads the raw events in its own layout; each recording is integrated into
T frames [T, 2, H, W] (pipeline/data/frames.py: tonic's ToFrame counts, computed by compiled loops) and stored in
one memory-mapped .npy per split, so a training sample is one read.

<out>/train_frames.npy, test_frames.npy   int16 event counts [N, T, 2, H, W]
<out>/train_labels.npy, test_labels.npy   int64 [N]
<out>/meta.json                           frames, split rule, prepared sensor size, byte sizes, source files

split_by "number": T frames with equal event counts (SEW ResNet's "split by number"; tonic's n_event_bins,
which leaves out the last N mod T events). split_by "time": T frames of equal duration (tonic's n_time_bins).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import math
import multiprocessing
import os
import re
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from pipeline.data.cards import load_card
from pipeline.data.common import (META_FILE, atomic_outputs, resolve_workers, sigterm_deferred, stop_processes,
                                  write_meta)
from pipeline.data.frames import SPLIT_BY, EventsToFrames
from pipeline.errors import UsageError

DATASETS = ("dvs_gesture", "cifar10_dvs")
SPLITS = ("train", "test")
TONIC_MIN_FILES = {"dvs_gesture": 100, "cifar10_dvs": 1000}  # what tonic's _check_exists requires


# ---------------------------------------------------------------- raw layout checks (before tonic, which
# would otherwise try to download the dataset when something is missing)

def _layout_error(card: dict, problem: str) -> UsageError:
    """One line: the problem, then the layout the dataset card expects."""
    layout = "; ".join(" ".join(line.split()) for line in card["raw_layout"].splitlines() if line.strip())
    return UsageError(f"{problem} -- expected layout (datasets/{card['name']}.yaml): {layout}")


def check_gesture_layout(raw: Path, card: dict) -> None:
    base = raw / "DVSGesture"
    if not base.is_dir():
        hint = f" ({raw} looks like the DVSGesture folder itself: pass its parent)" if (
            raw / card["splits"]["train"]).is_dir() else ""
        raise _layout_error(card, f"{base} does not exist{hint}")
    for folder_name in card["splits"].values():
        archive = base / f"{folder_name}.tar.gz"
        if not archive.is_file():
            raise _layout_error(card, f"{archive} is missing: tonic checks that the archive exists before reading "
                                      f"the extracted files (an empty file of that name will do)")
        folder = base / folder_name
        if not folder.is_dir():
            raise _layout_error(card, f"{folder} does not exist (extract {archive.name} there)")
        count = 0
        for user_dir in sorted(folder.iterdir()):
            if not user_dir.is_dir():
                continue
            if not re.fullmatch(r"user\d+_\w+", user_dir.name):
                raise _layout_error(card, f"{user_dir}: expected folders named user<NN>_<lighting>")
            for item in sorted(user_dir.iterdir()):
                if item.is_dir():
                    raise _layout_error(card, f"{item}: unexpected folder (tonic reads one level of user folders)")
                if item.suffix != ".npy":
                    continue
                if not item.stem.isdigit() or int(item.stem) >= card["num_classes"]:
                    raise _layout_error(card, f"{item}: expected <label>.npy with label 0..{card['num_classes'] - 1}")
                count += 1
        if count < TONIC_MIN_FILES["dvs_gesture"]:
            raise _layout_error(card, f"{folder} holds {count} .npy files; tonic needs at least "
                                      f"{TONIC_MIN_FILES['dvs_gesture']} (incomplete extraction?)")


def check_cifar10_layout(raw: Path, card: dict) -> None:
    base = raw / "CIFAR10DVS"
    if not base.is_dir():
        raise _layout_error(card, f"{base} does not exist")
    archive = base / "CIFAR10DVS.zip"
    if not archive.is_file():
        raise _layout_error(card, f"{archive} is missing: tonic checks that the archive exists before reading "
                                  f"the extracted files (an empty file of that name will do)")
    total = 0
    for path in sorted(base.rglob("*.aedat4")):
        if path.parent.parent != base or path.parent.name not in card["classes"]:
            raise _layout_error(card, f"{path}: .aedat4 files must lie in a class folder directly under {base} "
                                      f"(one of {', '.join(card['classes'])})")
        total += 1
    for class_name in card["classes"]:
        folder = base / class_name
        if not folder.is_dir() or not any(folder.glob("*.aedat4")):
            raise _layout_error(card, f"{folder} is missing or holds no .aedat4 files")
    if total < TONIC_MIN_FILES["cifar10_dvs"]:
        raise _layout_error(card, f"{base} holds {total} .aedat4 files; tonic needs at least "
                                  f"{TONIC_MIN_FILES['cifar10_dvs']} (incomplete extraction?)")


# ---------------------------------------------------------------- reading and splitting

def cifar10_dvs_split(paths: list[str], targets: list[int], train_fraction: float) -> dict[str, list[int]]:
    """Deterministic per-class split: within each class, sorted by file name, the first
    ceil(train_fraction * n) recordings train and the rest test (SpikingJelly's rule, used by SEW ResNet)."""
    split = {"train": [], "test": []}
    for label in sorted(set(targets)):
        members = sorted((i for i, t in enumerate(targets) if t == label), key=lambda i: Path(paths[i]).name)
        cut = math.ceil(len(members) * train_fraction)
        split["train"] += members[:cut]
        split["test"] += members[cut:]
    return split


def open_raw(dataset: str, raw: Path, card: dict) -> dict[str, tuple[object, list[int]]]:
    """split -> (tonic dataset, indices into it)."""
    import tonic

    if dataset == "dvs_gesture":
        check_gesture_layout(raw, card)
        return {split: (ds, list(range(len(ds)))) for split, ds in
                (("train", tonic.datasets.DVSGesture(str(raw), train=True)),
                 ("test", tonic.datasets.DVSGesture(str(raw), train=False)))}
    check_cifar10_layout(raw, card)
    ds = tonic.datasets.CIFAR10DVS(str(raw))
    split = cifar10_dvs_split(ds.data, ds.targets, card["split"]["train_fraction"])
    return {name: (ds, split[name]) for name in SPLITS}


# ---------------------------------------------------------------- integration (pipeline/data/frames.py)

_WORK: dict = {}  # per process: the tonic dataset and the EventsToFrames (set directly, or by _init_worker)


def _init_worker(dataset, transform, frames: int) -> None:
    _WORK.update(dataset=dataset, transform=transform, frames=frames)


def _convert(index: int) -> tuple[np.ndarray, int]:
    dataset, transform, frames = _WORK["dataset"], _WORK["transform"], _WORK["frames"]
    source = dataset.data[index]
    try:
        events, label = dataset[index]
    except Exception as err:  # numpy / aedat / tonic raise many types for a malformed file
        raise UsageError(f"{source}: cannot read its events ({type(err).__name__}: {err})") from None
    if len(events) < frames:
        raise UsageError(f"{source}: {len(events)} events, fewer than the {frames} frames asked for")
    try:
        return transform(events), int(label)
    except Exception as err:
        raise UsageError(f"{source}: cannot integrate its events into frames ({type(err).__name__}: {err})") from None


@contextlib.contextmanager
def _converted(dataset, indices: list[int], transform, frames: int, workers: int) -> Iterator[Iterator[tuple]]:
    """(frames, label) of each recording, in order; with workers > 1 from a process pool that is gone afterwards."""
    _WORK.update(dataset=dataset, transform=transform, frames=frames)
    pool = None
    try:
        if workers > 1:
            # spawn, not fork: forking a process that already runs threads (tqdm's monitor, a previous pool's
            # handlers, OpenMP) can deadlock the child on a lock held at fork time; seen on the second split.
            # concurrent.futures, not multiprocessing.Pool: after a worker raised, Pool.terminate() can wait forever
            # on the task queue's read lock that an idle worker holds (cpython#78178); seen once in CI, in the test
            # whose recording is malformed.
            # SIGTERM deferred while the pool starts and takes the work: raised inside submit() while it holds the
            # pool's shutdown lock, it would make any shutdown wait forever.
            with sigterm_deferred():
                pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=_init_worker,
                                                              mp_context=multiprocessing.get_context("spawn"),
                                                              initargs=(dataset, transform, frames))
                results = pool.map(_convert, indices, chunksize=8)
            yield results
        else:
            yield map(_convert, indices)
    except (SystemExit, KeyboardInterrupt):  # a signal (`dst data` raises SystemExit on SIGTERM): the process ends next
        if pool is not None:
            _stop_workers(pool)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)   # the chunks running finish; the rest never start
        _WORK.clear()


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop the pool's workers without waiting for their work. Not shutdown(wait=True): a worker that died of the
    signal breaks the pool, and CPython's broken-pool handling then joins every worker, including one that a
    submit() racing with it had just started and that was never told to stop; that worker blocks on a full result
    pipe nobody reads (seen: 16 of 40 `dst data dvs` runs hung when SIGTERM reached the group as the pool started,
    under the deferral above, which spawns the workers after the signal). The pool's workers are this process's
    only multiprocessing children while frames are converted."""
    pool.shutdown(wait=False, cancel_futures=True)
    stop_processes(multiprocessing.active_children())


def _write_split(name: str, dataset, indices: list[int], transform, shape: tuple, frames_tmp: Path,
                 labels_tmp: Path, workers: int, frames: int) -> np.ndarray:
    labels = np.empty(len(indices), np.int64)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int16)), "fortran_order": False,
              "shape": (len(indices), *shape)}
    # The recordings come back in order, so the .npy is written as a stream rather than through a writable memmap:
    # a full disk then fails a write() with ENOSPC, where storing into a memmap's sparse pages kills the process
    # with SIGBUS (seen: `dst data dvs` onto a full tmpfs died with "Bus error" and left its temp file).
    with open(frames_tmp, "wb") as out, _converted(dataset, indices, transform, frames, workers) as results:
        np.lib.format.write_array_header_1_0(out, header)
        for i, (frame, label) in enumerate(tqdm(results, total=len(indices), desc=f"{name} frames", unit="rec",
                                                mininterval=1.0)):
            if frame.shape != tuple(shape):
                raise AssertionError(f"{dataset.data[indices[i]]}: frames of shape {frame.shape}, not {tuple(shape)}")
            out.write(np.ascontiguousarray(frame, dtype=np.int16).tobytes())
            labels[i] = label
    with open(labels_tmp, "wb") as f:
        np.save(f, labels)
    return labels


def prepare_dvs(dataset: str, raw: Path, out: Path, *, frames: int = 16, split_by: str = "number",
                size: int | None = None, workers: int | None = None) -> dict:
    if dataset not in DATASETS:
        raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if split_by not in SPLIT_BY:
        raise UsageError(f"--split-by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    if frames < 1:
        raise UsageError(f"--frames must be >= 1, got {frames}")
    card = load_card(dataset)
    raw_sensor = tuple(card["sensor_size"])
    size = size or raw_sensor[0]
    if not 1 <= size <= min(raw_sensor[:2]):
        raise UsageError(f"--size must be between 1 and the sensor's {min(raw_sensor[:2])}, got {size}")
    if not raw.is_dir():
        raise _layout_error(card, f"raw folder {raw} does not exist")
    workers = resolve_workers(workers)
    splits = open_raw(dataset, raw, card)
    transform = EventsToFrames(raw_sensor, size, frames, split_by)
    shape = (frames, raw_sensor[2], size, size)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    names = [f"{s}_{kind}.npy" for s in SPLITS for kind in ("frames", "labels")]
    info, max_label = {}, 0
    with atomic_outputs([out / n for n in names] + [out / META_FILE]) as temps:
        for k, split in enumerate(SPLITS):
            ds, indices = splits[split]
            frames_tmp, labels_tmp = temps[2 * k], temps[2 * k + 1]
            labels = _write_split(split, ds, indices, transform, shape, frames_tmp, labels_tmp, workers, frames)
            max_label = max(max_label, int(labels.max(initial=0)))
            info[split] = {
                "samples": len(indices),
                "frames_file": f"{split}_frames.npy", "frames_bytes": frames_tmp.stat().st_size,
                "labels_file": f"{split}_labels.npy", "labels_bytes": labels_tmp.stat().st_size,
                "class_counts": np.bincount(labels, minlength=card["num_classes"]).tolist(),
                "sources": [os.path.relpath(ds.data[i], raw) for i in indices],
            }
        meta = {"format": "frames", "kind": "frames", "dataset": dataset, "raw": str(raw), "frames": frames,
                "split_by": split_by, "sensor_size": [size, size, raw_sensor[2]], "raw_sensor_size": list(raw_sensor),
                "dtype": "int16", "num_classes": card["num_classes"], "classes": card["classes"],
                "max_label": max_label, "splits": info, "seconds": round(time.time() - started, 1)}
        write_meta(temps[-1], meta)
    return meta
