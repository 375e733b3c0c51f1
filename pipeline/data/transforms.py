"""Sample order and frame augmentation: plain functions, deterministic from (seed, epoch, batch)."""
from __future__ import annotations

import numpy as np
import torch


def epoch_order(num_samples: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                shuffle: bool = True) -> np.ndarray:
    """The indices one rank reads in one epoch: torch's DistributedSampler rule (drop_last=False).

    Shuffle with a generator seeded by seed + epoch, pad by repeating the start so every rank gets the
    same count, then take every world_size-th index from `rank`. Ranks are disjoint up to the padding.
    """
    if shuffle:
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(num_samples, generator=generator).numpy()
    else:
        order = np.arange(num_samples)
    per_rank = -(-num_samples // world_size)
    padding = per_rank * world_size - num_samples
    if padding:
        order = np.concatenate([order, np.resize(order, padding)])
    return order[rank::world_size]


def eval_order(num_samples: int, *, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Evaluation order of one rank: sequential and strided, no padding, so every sample is read by
    exactly one rank and metrics summed over ranks count each sample once."""
    return np.arange(rank, num_samples, world_size)


def frames_to_float(frames: torch.Tensor) -> torch.Tensor:
    """Event counts (int16) to float32 network input: the counts themselves, as SEW ResNet feeds them."""
    return frames.to(torch.float32)


def random_crop_with_padding(frames: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """[N, T, P, H, W]: zero-pad H and W by `padding` and crop back at a random offset per sample
    (the same offset for all T frames of a sample: the scene shifts, it does not jitter)."""
    if padding <= 0:
        return frames
    n, _, _, h, w = frames.shape
    padded = torch.nn.functional.pad(frames, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def random_flip(frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror left-right half of the samples (all frames of a sample alike)."""
    flip = torch.rand(frames.shape[0], generator=generator) < 0.5
    if flip.any():
        frames = frames.clone()
        frames[flip] = frames[flip].flip(-1)
    return frames


def random_frame_subset(frames: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    """Keep `keep` of the T frames, chosen at random per batch and kept in time order (SEW's T_train)."""
    total = frames.shape[1]
    if keep >= total:
        return frames
    chosen = torch.randperm(total, generator=generator)[:keep].sort().values
    return frames[:, chosen]
