"""`dst data imagenet | dvs | demo`: turn raw datasets into the files the loaders read."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

from pipeline import storage
from pipeline.errors import UsageError

DEMO_NEXT_STEPS = """next:
  dst data imagenet --raw {out}/demo_images --out {prepared}/demo_images --max-resolution 64
  dst data dvs --dataset dvs_gesture --raw {out}/demo_dvs --out {prepared}/demo_dvs --frames 16 --size 32"""


EXAMPLES = """examples:
  dst data demo --out datasets/raw/demo
  dst data imagenet --raw datasets/raw/demo/demo_images --out datasets/prepared/demo_images --max-resolution 64
  dst data imagenet --raw /data/imagenet --out datasets/prepared/imagenet --workers 32
  dst data dvs --dataset dvs_gesture --raw /data/dvs --out datasets/prepared/dvs_gesture --frames 16 --split-by number
"""


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="DATASET")
    sub.required = True

    p = sub.add_parser("imagenet", help="ImageNet-style class folders -> train.beton, val.beton (FFCV)",
                       description="ImageNet in class-folder layout (train/ and val/; val may be the official flat "
                                   "folder with LOC_val_solution.csv or the devkit ground truth) -> FFCV files.")
    p.add_argument("--raw", type=Path, required=True, help="folder holding train/ and val/")
    p.add_argument("--out", type=Path, required=True, help="output folder (train.beton, val.beton, meta.json)")
    p.add_argument("--max-resolution", type=int, default=500, help="longest side stored (default 500)")
    p.add_argument("--compress-probability", type=float, default=0.5,
                   help="fraction of images stored as JPEG, the rest raw (default 0.5)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=int, default=None,
                   help="writer processes (default: SLURM_CPUS_PER_TASK or the CPUs this process may use)")
    p.add_argument("--val-labels", type=Path, default=None,
                   help="labels of a flat val/ folder: LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out undecodable images (listed in <out>/bad_images.txt) instead of failing")

    p = sub.add_parser("dvs", help="DVS Gesture / CIFAR10-DVS (tonic layout) -> memory-mapped frames",
                       description="Read a DVS dataset with tonic, integrate each recording into T frames and store "
                                   "each split as one memory-mapped array.")
    p.add_argument("--dataset", required=True, choices=["dvs_gesture", "cifar10_dvs"])
    p.add_argument("--raw", type=Path, required=True, help="tonic's save_to folder (holding DVSGesture/ or CIFAR10DVS/)")
    p.add_argument("--out", type=Path, required=True, help="output folder ({train,test}_frames.npy, ..., meta.json)")
    p.add_argument("--frames", type=int, default=16, help="frames per recording, T (default 16)")
    p.add_argument("--split-by", choices=["number", "time"], default="number",
                   help="number: equal event counts per frame (SEW ResNet); time: equal durations")
    p.add_argument("--size", type=int, default=None,
                   help="downsample the sensor to SIZE x SIZE (default: the sensor's size, 128)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes (default: SLURM_CPUS_PER_TASK or the CPUs this process may use)")

    p = sub.add_parser("demo", help="generate the demo raw data (ImageNet-style JPEGs, DVS-Gesture-style events)",
                       description="Generate the embedded default's raw datasets in the real layouts, in seconds.")
    p.add_argument("--out", type=Path, required=True, help="output folder (demo_images/, demo_dvs/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cifar10-dvs", action="store_true",
                   help="also write a CIFAR10-DVS-style tree of 1000 .aedat4 files (cifar10_dvs/)")


class Terminated(SystemExit):
    """SIGTERM (SLURM preemption or time limit, scancel, Snakemake stopping): unwinds like an exception."""


@contextlib.contextmanager
def exit_cleanly_on_sigterm() -> Iterator[None]:
    """Python's default SIGTERM action ends the process at once: no `finally` runs, so writer processes are orphaned
    and temporary files stay behind. Raise instead, so atomic_outputs deletes its temporaries and the writer pools
    are stopped; the final names never appear (they only ever hold complete files). Forked workers inherit the
    handler and keep the default action. A SIGKILL cannot be caught: the next run removes what it left
    (common.remove_stale_temps)."""
    main_pid = os.getpid()
    announced = []

    def handler(signum, frame):
        if os.getpid() != main_pid:  # a forked worker: die as the default action would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not announced:
            announced.append(signum)
            # os.write, not print: the signal may have landed inside a write to sys.stderr (tqdm's progress bar),
            # and a buffered stream refuses a re-entrant write with a RuntimeError.
            os.write(2, f"dst data: {signal.Signals(signum).name} received: stopping; partial outputs are "
                        f"removed\n".encode())
        raise Terminated(128 + signum)

    def unraisable(info) -> None:
        # Raised where Python ignores exceptions (an os.fork hook, a finaliser: seen when the signal lands while the
        # FFCV writer forks its workers): the run would go on as if nothing happened. Deliver the signal again.
        if isinstance(info.exc_value, Terminated) and os.getpid() == main_pid:
            again = threading.Timer(0.2, os.kill, (main_pid, signal.SIGTERM))
            again.daemon = True
            again.start()
            return
        previous_hook(info)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous, previous_hook = signal.signal(signal.SIGTERM, handler), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    except Terminated as stop:
        _exit_without_exit_handlers(stop.code)
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_hook


def _exit_without_exit_handlers(status: int) -> None:
    """End the process once Terminated has unwound to here (temporaries removed, writer processes stopped), without
    the interpreter's exit handlers. The exception was raised wherever the main thread happened to be, possibly
    between a lock's acquire and the `with` that releases it: seen with a multiprocessing Queue's lock, on which the
    exit-time finaliser of that queue then waits forever (about 1 run in 10 when SIGTERM lands as the FFCV writer
    fills its work queue). Nothing of ours is left for those handlers to do."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def run(args: argparse.Namespace) -> int:
    with exit_cleanly_on_sigterm(), storage.writing(args.out, "prepared data under"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.data_command == "imagenet":
        from pipeline.data.imagenet import prepare_imagenet

        meta = prepare_imagenet(args.raw, args.out, max_resolution=args.max_resolution,
                                compress_probability=args.compress_probability, jpeg_quality=args.jpeg_quality,
                                workers=args.workers, val_labels=args.val_labels, skip_bad=args.skip_bad)
        for split, info in meta["splits"].items():
            print(f"{args.out / info['file']}: {info['samples']} images, {meta['num_classes']} classes, "
                  f"{info['bytes'] / 2**20:.1f} MiB")
        if meta["skipped"]:
            print(f"skipped {len(meta['skipped'])} undecodable image(s): listed in {args.out / 'bad_images.txt'}")
        return 0
    if args.data_command == "dvs":
        from pipeline.data.dvs import prepare_dvs

        meta = prepare_dvs(args.dataset, args.raw, args.out, frames=args.frames, split_by=args.split_by,
                           size=args.size, workers=args.workers)
        w, h, p = meta["sensor_size"]
        for split, info in meta["splits"].items():
            print(f"{args.out / info['frames_file']}: {info['samples']} x [{meta['frames']}, {p}, {h}, {w}] int16, "
                  f"{info['frames_bytes'] / 2**20:.1f} MiB")
        return 0
    if args.data_command == "demo":
        from pipeline.data.demo import generate_demo

        written = generate_demo(args.out, seed=args.seed, cifar10_dvs=args.cifar10_dvs)
        for name, path in written.items():
            print(f"{path}: {sum(1 for f in path.rglob('*') if f.is_file())} files")
        prepared = args.out.parent / "prepared" if args.out.name == "raw" else args.out / "prepared"
        print(DEMO_NEXT_STEPS.format(out=args.out, prepared=prepared))
        return 0
    raise UsageError(f"unknown data command {args.data_command!r}")

