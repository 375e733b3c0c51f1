"""The embedded default's raw data, generated in the real on-disk layouts (deterministic from a seed).

- demo_images/: an ImageNet-style class-folder tree of JPEGs: scikit-learn's handwritten digits rendered to
  64x64 RGB with random colours, scale and position (10 classes).
- demo_dvs/: a tonic DVSGesture tree (DVSGesture/ibmGestureTrain|ibmGestureTest/user<NN>_<lighting>/<label>.npy)
  of synthetic event streams: a bright square or disc moving across a 128x128 sensor. The class is the
  direction of motion; a moving edge makes ON events where it arrives and OFF events where it leaves, so
  a single frame's two polarity channels already show the direction.
- optionally cifar10_dvs/: a tonic CIFAR10DVS tree of .aedat4 files (10 classes, direction of motion),
  the minimum 1000 files tonic accepts, for testing the CIFAR10-DVS path without the real data.
"""
from __future__ import annotations

import shutil
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.aedat4 import write_aedat4
from pipeline.data.cards import load_card
from pipeline.data.common import remove_stale_temps
from pipeline.storage import temp_name

LIGHTINGS = ("fluorescent", "fluorescent_led", "lab", "led", "natural")  # as in DVS128 Gesture
TRAIN_USERS = range(1, 24)  # DVS128 Gesture: users 1-23 train, 24-29 test
TEST_USERS = range(24, 30)


def generate_demo(out: Path, seed: int = 0, cifar10_dvs: bool = False) -> dict[str, Path]:
    """Write the demo raw datasets under `out` (each folder appears complete or not at all)."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    jobs = [("demo_images", write_digit_images), ("demo_dvs", write_gesture_tree)]
    if cifar10_dvs:
        jobs.append(("cifar10_dvs", write_cifar10_dvs_tree))
    for i, (name, write) in enumerate(jobs):
        final = out / name
        remove_stale_temps(final)  # left by a killed run
        tmp = temp_name(final)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write(tmp, np.random.default_rng([seed, i]))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        written[name] = final
    return written


# ---------------------------------------------------------------- images

def write_digit_images(root: Path, rng: np.random.Generator, sizes: dict[str, int] | None = None) -> None:
    """The demo image tree; `sizes` ({"train": n, "val": n}) overrides the card's (tests use fewer)."""
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    card = load_card("demo_images")
    size = card["image_size"]
    digits = load_digits()
    sizes = sizes or card["sizes"]
    per_class = {split: n // card["num_classes"] for split, n in sizes.items()}
    for label, class_name in enumerate(card["classes"]):
        pool = rng.permutation(np.flatnonzero(digits.target == label))
        start = 0
        for split in ("train", "val"):
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for k, index in enumerate(pool[start:start + per_class[split]]):
                image = render_digit(digits.images[index], size, rng)
                image.save(folder / f"{class_name}_{k:05d}.JPEG", quality=90)
            start += per_class[split]


def render_digit(digit: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """An 8x8 digit (0..16) as a size x size RGB image: random colours, scale, position and noise."""
    scale = int(rng.integers(size * 5 // 8, size * 7 // 8 + 1))
    alpha = Image.fromarray((digit / 16 * 255).astype(np.uint8)).resize((scale, scale), Image.BICUBIC)
    canvas_alpha = np.zeros((size, size), np.float32)
    top, left = rng.integers(0, size - scale + 1, size=2)
    canvas_alpha[top:top + scale, left:left + scale] = np.asarray(alpha, np.float32) / 255
    # Random colours, but always a bright digit on a dark background: the class is the shape, learnable from
    # 600 images in a few CPU minutes (a per-channel contrast of random sign made the demo too hard to learn).
    background = rng.uniform(0, 90, 3)
    foreground = rng.uniform(165, 255, 3)
    pixels = background + canvas_alpha[..., None] * (foreground - background)
    pixels += rng.normal(0, 8, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------- events

def moving_shape_events(rng: np.random.Generator, angle: float, sensor: int = 128, steps: int = 20,
                        duration_ms: float = 1000.0, noise: float = 0.1) -> np.ndarray:
    """Events [N, 4] = (x, y, p, t_ms) of a bright shape moving at `angle` (radians, image axes: y down),
    sorted by time. p = 1 (ON) where the shape arrives, 0 (OFF) where it leaves."""
    radius = rng.uniform(0.08, 0.13) * sensor
    square = rng.random() < 0.5
    step = rng.uniform(1.5, 2.5) * sensor / 128 * np.array([np.cos(angle), np.sin(angle)])
    start = sensor / 2 - step * steps / 2 + rng.uniform(-0.15, 0.15, 2) * sensor
    yy, xx = np.mgrid[0:sensor, 0:sensor]

    def mask(k: int) -> np.ndarray:
        cx, cy = start + step * k
        if square:
            return (np.abs(xx - cx) <= radius) & (np.abs(yy - cy) <= radius)
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2

    dt = duration_ms / steps
    chunks = []
    previous = mask(0)
    for k in range(1, steps + 1):
        current = mask(k)
        for polarity, changed in ((1, current & ~previous), (0, previous & ~current)):
            y, x = np.nonzero(changed)
            t = (k - 1 + rng.random(len(x))) * dt
            chunks.append(np.stack([x, y, np.full_like(x, polarity), t], axis=1))
        previous = current
    signal = np.concatenate(chunks)
    n_noise = int(noise * len(signal))
    noise_events = np.stack([rng.integers(0, sensor, n_noise), rng.integers(0, sensor, n_noise),
                             rng.integers(0, 2, n_noise), rng.uniform(0, duration_ms, n_noise)], axis=1)
    events = np.concatenate([signal, noise_events])
    events = events[np.argsort(events[:, 3], kind="stable")]
    return events


def _direction(label: int, num_classes: int, rng: np.random.Generator) -> float:
    """Demo DVS: right, left, down, up (+-15 degrees); CIFAR10-DVS-style: 10 evenly spaced directions."""
    if num_classes == 4:
        base = (0.0, np.pi, np.pi / 2, -np.pi / 2)[label]
    else:
        base = 2 * np.pi * label / num_classes
    return base + rng.uniform(-1, 1) * np.pi / 12


def _placeholder_archive(path: Path, note: str) -> None:
    """tonic checks that the downloaded archive exists before it reads the extracted files."""
    with tarfile.open(path, "w:gz") as tar:
        data = note.encode()
        info = tarfile.TarInfo("README.txt")
        info.size = len(data)
        tar.addfile(info, BytesIO(data))


def write_gesture_tree(root: Path, rng: np.random.Generator) -> None:
    card = load_card("demo_dvs")
    sensor = card["sensor_size"][0]
    base = root / "DVSGesture"
    for split, users in (("train", TRAIN_USERS), ("test", TEST_USERS)):
        folder_name = card["splits"][split]
        base.mkdir(parents=True, exist_ok=True)
        _placeholder_archive(base / f"{folder_name}.tar.gz",
                             "Placeholder for the demo: tonic only checks that this archive exists.\n")
        for user in users:
            for lighting in LIGHTINGS:
                folder = base / folder_name / f"user{user:02d}_{lighting}"
                folder.mkdir(parents=True)
                for label in range(card["num_classes"]):
                    events = moving_shape_events(rng, _direction(label, card["num_classes"], rng), sensor)
                    events[:, 3] = np.round(events[:, 3])  # tonic's release stores t in ms
                    np.save(folder / f"{label}.npy", events.astype(np.int32))


def write_cifar10_dvs_tree(root: Path, rng: np.random.Generator, per_class: int = 100) -> None:
    card = load_card("cifar10_dvs")
    sensor = card["sensor_size"][0]
    base = root / "CIFAR10DVS"
    base.mkdir(parents=True)
    with open(base / "CIFAR10DVS.zip", "wb") as f:  # placeholder: tonic checks that it exists
        f.write(b"PK\x05\x06" + b"\0" * 18)  # an empty zip archive
    for label, class_name in enumerate(card["classes"]):
        (base / class_name).mkdir()
        for k in range(per_class):
            events = moving_shape_events(rng, _direction(label, card["num_classes"], rng), sensor,
                                         steps=8, noise=0.05)
            t_us = np.round(events[:, 3] * 1000).astype(np.int64)
            write_aedat4(base / class_name / f"cifar10_{class_name}_{k}.aedat4", t_us,
                         events[:, 0], events[:, 1], events[:, 2] > 0, sensor, sensor)
