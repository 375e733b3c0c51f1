"""Training and evaluation loaders over prepared data: FFCV for images, memory-mapped frames for DVS.

build_loaders(data, rank=, world_size=, seed=, device=) is what the training engine calls. Both kinds:
- train: each rank reads a disjoint shard (torch DistributedSampler's rule: shuffle with seed + epoch,
  pad to equal counts, stride by rank), drops the last incomplete batch, and has set_epoch(epoch);
  iterating without set_epoch advances the epoch by one, as FFCV does.
- val: sequential, rank-strided without padding (each sample read by exactly one rank), no drop_last.
Batches are (inputs float32, labels int64): images [N, 3, H, W] normalised, frames [N, T, 2, H, W] event counts.
FFCV reuses its output buffers: use a batch before taking the next few, or clone it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from pipeline.data import transforms
from pipeline.data.cards import load_card
from pipeline.data.common import check_file_size, read_meta, resolve_workers
from pipeline.errors import UsageError

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Loaders:
    train: Iterable[Batch]
    val: Iterable[Batch]
    num_classes: int
    input_kind: str  # "image" | "frames"


def build_loaders(data, *, rank: int = 0, world_size: int = 1, seed: int = 0, device: str = "cpu") -> Loaders:
    """Loaders for `data` (duck-typed DataConfig: dataset, root, batch_size, eval_batch_size, workers,
    resolution, frames, train_frames, augment) on one rank."""
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside world_size {world_size}")
    if data.batch_size < 1 or (data.eval_batch_size is not None and data.eval_batch_size < 1):
        raise UsageError("data.batch_size and data.eval_batch_size must be >= 1")
    card = load_card(data.dataset)
    root = Path(data.root)
    meta = read_meta(root)
    expected_kind = "images" if card["kind"] == "images" else "frames"
    if meta.get("kind") != expected_kind:
        raise UsageError(f"data.root {root} holds prepared {meta.get('kind')!r} data, but data.dataset "
                         f"{data.dataset!r} needs {expected_kind!r} (see its meta.json)")
    if expected_kind == "images" and meta.get("num_classes") != card["num_classes"]:
        raise UsageError(f"{root / 'meta.json'} has {meta.get('num_classes')} classes but the card of "
                         f"{data.dataset!r} says {card['num_classes']}: data.root does not hold that dataset")
    # DVS trees are read with the dataset's reader (the demo as dvs_gesture): the labels must fit the card.
    if expected_kind == "frames" and not 0 <= meta.get("max_label", -1) < card["num_classes"]:
        raise UsageError(f"{root / 'meta.json'} has labels up to {meta.get('max_label')} but the card of "
                         f"{data.dataset!r} has {card['num_classes']} classes: data.root does not hold that dataset")
    workers = resolve_workers(data.workers)
    eval_batch_size = data.eval_batch_size or data.batch_size
    if expected_kind == "images":
        train, val = build_image_loaders(root, meta, card, data, workers=workers, eval_batch_size=eval_batch_size,
                                         rank=rank, world_size=world_size, seed=seed, device=device)
        return Loaders(train, val, card["num_classes"], "image")
    train, val = build_frame_loaders(root, meta, card, data, workers=workers, eval_batch_size=eval_batch_size,
                                     rank=rank, world_size=world_size, seed=seed, device=device)
    return Loaders(train, val, card["num_classes"], "frames")


# ---------------------------------------------------------------- images (FFCV)

def image_pipelines(*, train: bool, resolution: int, augment: dict | None, crop_ratio: float, mean, std,
                    device: str, order: str | None = None, seed: int = 0) -> dict:
    """FFCV pipelines for the 'image' and 'label' fields. Training crops and flips are FFCV's, drawn from per-image
    seeds (pipeline/data/seeded_augment.py): the same seed gives the same augmentations, also after a resume.

    order "cpu": decoder -> [flip] -> NormalizeImage -> ToTensor -> ToTorchImage. The ffcv-imagenet order
    (ToTensor, ToDevice, ToTorchImage, then NormalizeImage) puts a jit stage after non-jit ones, which
    makes FFCV 1.0.2's Loader construction loop forever on CPU.
    order "gpu": decoder -> [flip] -> ToTensor -> ToDevice -> ToTorchImage; uint8 goes to the device and
    FfcvLoader normalises there with torch (FFCV's GPU NormalizeImage would need cupy).
    """
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.transforms import NormalizeImage, ToDevice, ToTensor, ToTorchImage

    from pipeline.data.seeded_augment import SeededRandomHorizontalFlip, SeededRandomResizedCrop

    order = order or ("cpu" if device == "cpu" else "gpu")
    size = (resolution, resolution)
    if train and augment:  # train without augmentation reads like val
        image = [SeededRandomResizedCrop(size, scale=tuple(augment["crop_scale"]), ratio=tuple(augment["crop_ratio"]),
                                         seed=seed)]
        if augment["flip"]:
            image.append(SeededRandomHorizontalFlip(seed=seed))
    else:
        image = [CenterCropRGBImageDecoder(size, ratio=crop_ratio)]
    label = [IntDecoder(), ToTensor()]
    if order == "cpu":
        image += [NormalizeImage(np.array(mean) * 255, np.array(std) * 255, np.float32), ToTensor(), ToTorchImage()]
    else:
        image += [ToTensor(), ToDevice(torch.device(device), non_blocking=True), ToTorchImage()]
        label.append(ToDevice(torch.device(device), non_blocking=True))
    return {"image": image, "label": label}


def _rank_order(*, seed: int, rank: int, world_size: int, train: bool):
    """An FFCV traversal order giving `transforms.epoch_order` over the loader's indices. Rank and world
    size are explicit, so it works with or without an initialised torch.distributed process group."""
    from ffcv.traversal_order.base import TraversalOrder

    class RankOrder(TraversalOrder):
        def __init__(self):  # configured here; bound to the loader by __call__
            pass

        def __call__(self, loader):  # FFCV's Loader calls a TraversalOrder instance with itself
            TraversalOrder.__init__(self, loader)
            return self

        def sample_order(self, epoch: int):
            n = len(self.indices)
            if train:
                picked = transforms.epoch_order(n, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
            else:
                picked = transforms.eval_order(n, rank=rank, world_size=world_size)
            return self.indices[picked]

    return RankOrder()


class FfcvLoader:
    """An FFCV Loader yielding (images float32 [N, 3, H, W], labels int64 [N]), with set_epoch."""

    def __init__(self, loader, mean=None, std=None, device: str = "cpu"):
        self.loader = loader
        # Only the GPU order leaves normalisation to torch (uint8 on the device -> float32).
        self.mean = None if mean is None else torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = None if std is None else torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def set_epoch(self, epoch: int) -> None:
        self.loader.next_epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        epoch = iter(self.loader)
        try:
            for images, labels in epoch:
                if self.mean is not None:
                    images = (images.float() - self.mean) / self.std
                yield images, labels.view(-1)
        finally:
            # A consumer that stops early (max_steps_per_epoch, one saved batch) leaves FFCV's prefetch thread
            # running; it would keep writing into the batch buffers that the NEXT epoch's iterator reuses. Stop it
            # and wait for it before anyone iterates again.
            epoch.close()
            epoch.join(timeout=60)


def build_image_loaders(root: Path, meta: dict, card: dict, data, *, workers: int, eval_batch_size: int,
                        rank: int, world_size: int, seed: int, device: str, order: str | None = None):
    from ffcv.loader import Loader

    from pipeline.data.imagenet import check_beton

    if data.resolution < 8:
        raise UsageError(f"data.resolution must be >= 8, got {data.resolution}")
    built = []
    for split, batch_size, train in (("train", data.batch_size, True), ("val", eval_batch_size, False)):
        path = root / f"{split}.beton"
        check_beton(path, meta["splits"][split]["bytes"])
        pipelines = image_pipelines(train=train, resolution=data.resolution,
                                    augment=card["augment"] if data.augment else None,
                                    crop_ratio=card["augment"]["val_crop_ratio"], mean=card["mean"], std=card["std"],
                                    device=device, order=order, seed=seed)
        loader = Loader(str(path), batch_size=batch_size, num_workers=max(workers, 1),
                        order=_rank_order(seed=seed, rank=rank, world_size=world_size, train=train),
                        pipelines=pipelines, drop_last=train)
        gpu_order = (order or ("cpu" if device == "cpu" else "gpu")) == "gpu"
        built.append(FfcvLoader(loader, card["mean"] if gpu_order else None, card["std"] if gpu_order else None,
                                device))
    return built


# ---------------------------------------------------------------- DVS frames (memory-mapped)

class _FrameBatches(torch.utils.data.Dataset):
    """Batch k of one epoch: one read of the memory-mapped samples, then augmentation seeded by
    (seed, epoch, k), so a batch is the same whichever process builds it."""

    def __init__(self, frames: np.ndarray, labels: np.ndarray, batches: list[np.ndarray], augment: dict | None,
                 seed: int, epoch: int):
        self.frames, self.labels, self.batches = frames, labels, batches
        self.augment, self.seed, self.epoch = augment, seed, epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Batch:
        indices = self.batches[k]
        # Sorted reads are sequential on disk; put the samples back in their shuffled order after.
        sorted_at = np.argsort(indices, kind="stable")
        block = np.empty((len(indices), *self.frames.shape[1:]), self.frames.dtype)
        block[sorted_at] = self.frames[indices[sorted_at]]
        inputs = transforms.frames_to_float(torch.from_numpy(block))
        labels = torch.from_numpy(self.labels[indices].astype(np.int64))
        if self.augment:
            seed = int(np.random.SeedSequence([self.seed, self.epoch, k]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed)
            inputs = transforms.random_crop_with_padding(inputs, self.augment["crop_padding"], generator)
            if self.augment["flip"]:
                inputs = transforms.random_flip(inputs, generator)
            if self.augment.get("train_frames"):
                inputs = transforms.random_frame_subset(inputs, self.augment["train_frames"], generator)
        return inputs, labels


class FramesLoader:
    """Batches of prepared DVS frames for one rank: (float32 [N, T, 2, H, W], int64 [N])."""

    def __init__(self, frames_path: Path, labels_path: Path, *, batch_size: int, train: bool, seed: int,
                 rank: int, world_size: int, workers: int, augment: dict | None = None, device: str = "cpu"):
        self.frames = load_npy(frames_path, mmap_mode="r")
        self.labels = load_npy(labels_path)
        if self.frames.ndim != 5 or self.labels.ndim != 1:
            raise UsageError(f"{frames_path} / {labels_path}: arrays of shape {self.frames.shape} / "
                             f"{self.labels.shape}, expected [N, T, 2, H, W] frames and [N] labels: corrupt files?")
        if len(self.labels) != len(self.frames):
            raise UsageError(f"{labels_path} has {len(self.labels)} labels for {len(self.frames)} samples "
                             f"in {frames_path}")
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.augment, self.device = augment, device
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.labels)
        if self.train:
            return transforms.epoch_order(n, seed=self.seed, epoch=epoch, rank=self.rank, world_size=self.world_size)
        return transforms.eval_order(n, rank=self.rank, world_size=self.world_size)

    def _batches(self, epoch: int) -> list[np.ndarray]:
        order = self._order(epoch)
        count = len(order) // self.batch_size if self.train else math.ceil(len(order) / self.batch_size)
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(count)]

    def __len__(self) -> int:
        return len(self._batches(0))

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        batches = _FrameBatches(self.frames, self.labels, self._batches(epoch), self.augment, self.seed, epoch)
        cuda = self.device.startswith("cuda")
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=self.workers,
                                             pin_memory=cuda)
        for inputs, labels in loader:
            if cuda:
                inputs, labels = inputs.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            yield inputs, labels


def load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """np.load naming the file when it fails: a corrupted header (same size, so check_file_size passed) otherwise
    ends in a numpy traceback that says neither which file nor what to do. Never unpickles (allow_pickle=False)."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"prepared file {path} is corrupt ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); prepare it again") from None


def check_frames_file(path: Path, expected_bytes: int) -> None:
    """A truncated .npy fails here (size recorded at preparation) instead of deep inside np.load."""
    check_file_size(path, expected_bytes)


def build_frame_loaders(root: Path, meta: dict, card: dict, data, *, workers: int, eval_batch_size: int,
                        rank: int, world_size: int, seed: int, device: str):
    if data.frames != meta["frames"]:
        raise UsageError(f"data.frames is {data.frames} but {root} holds {meta['frames']} frames per sample "
                         f"(prepare again with --frames {data.frames}, or set data.frames={meta['frames']})")
    if data.train_frames is not None and not 1 <= data.train_frames <= data.frames:
        raise UsageError(f"data.train_frames must be between 1 and data.frames ({data.frames}), "
                         f"got {data.train_frames}")
    augment = None
    if data.augment or data.train_frames:
        augment = {"crop_padding": card["augment"]["crop_padding"] if data.augment else 0,
                   "flip": bool(card["augment"]["flip"]) and data.augment, "train_frames": data.train_frames}
    built = []
    for split, batch_size, train in (("train", data.batch_size, True), ("test", eval_batch_size, False)):
        info = meta["splits"][split]
        for key in ("frames", "labels"):
            check_frames_file(root / info[f"{key}_file"], info[f"{key}_bytes"])
        built.append(FramesLoader(root / info["frames_file"], root / info["labels_file"], batch_size=batch_size,
                                  train=train, seed=seed, rank=rank, world_size=world_size, workers=workers,
                                  augment=augment if train else None, device=device))
    return built
