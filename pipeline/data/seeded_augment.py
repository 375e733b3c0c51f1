"""FFCV training augmentations whose random draws are seeded per image, so runs and resumed runs repeat them.

FFCV's RandomResizedCropRGBImageDecoder and RandomHorizontalFlip draw from numba's per-thread generators, which
nothing seeds: two runs with the same seed see different crops, and a run resumed from a checkpoint does not see the
crops the uninterrupted run would have. Here each image's draws come from a generator seeded with
(seed, the batch's indices, the image's index) just before they are made, in whichever thread decodes the image:

- the same batch gets the same crops and flips in any process, thread or attempt. The training order is itself
  seeded by (seed, epoch) (pipeline/data/transforms.epoch_order), so a resumed run repeats the uninterrupted one;
- an image gets new draws every epoch, because it lands in a different batch.

The draws themselves are FFCV's: `get_random_crop` (torchvision's RandomResizedCrop rule) and `rand() < p`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder, get_random_crop
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from numba import njit

_JPG = IMAGE_MODES["jpg"]  # the field stores a JPEG (else raw RGB)


@njit(cache=True, inline="always")
def _mix(z):
    """splitmix64's finaliser: a well-spread 64-bit hash of z."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def batch_key(seed, indices) -> np.uint64:
    """One hash of the seed and every index of the batch (in order)."""
    key = _mix(np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15))
    for i in range(indices.shape[0]):
        key = _mix(key ^ np.uint64(indices[i]))
    return key


@njit(cache=True)
def seed_for(key, index) -> np.uint32:
    """The generator seed of one image of a batch (np.random.seed takes 32 bits)."""
    return np.uint32(_mix(key ^ (np.uint64(index) * np.uint64(0x9E3779B97F4A7C15))) >> np.uint64(32))


class SeededRandomResizedCrop(ResizedCropRGBImageDecoder):
    """RandomResizedCropRGBImageDecoder (decode, random crop, resize) with the crop drawn from a per-image seed."""

    def __init__(self, output_size, scale=(0.08, 1.0), ratio=(0.75, 4 / 3), seed: int = 0):
        super().__init__(output_size)
        self.scale, self.ratio, self.seed = scale, ratio, int(seed)

    @property
    def get_crop_generator(self):
        return get_random_crop

    def generate_code(self) -> Callable:
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        get_crop_c = Compiler.compile(self.get_crop_generator)
        scale, ratio, seed = np.array(self.scale), np.array(self.ratio), self.seed

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            key = batch_key(seed, batch_indices)
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                if field["mode"] == _JPG:
                    decoded = temp_storage[dst_ix]
                    imdecode_c(image_data, decoded, height, width, height, width, 0, 0, 1, 1, False, False)
                    image = decoded.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                np.random.seed(seed_for(key, source_ix))  # this thread's generator, for this image
                i, j, h, w = get_crop_c(height, width, scale, ratio)
                resize_crop_c(image, i, i + h, j, j + w, destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class SeededRandomHorizontalFlip(Operation):
    """RandomHorizontalFlip (HWC uint8 images) with each image's coin drawn from a per-image seed."""

    def __init__(self, flip_prob: float = 0.5, seed: int = 0):
        super().__init__()
        self.flip_prob, self.seed = float(flip_prob), int(seed)

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        # a different stream from the crop's for the same image: the crop and the flip must not be correlated
        flip_prob, seed = self.flip_prob, self.seed ^ 0x5F1F

        def flip(images, dst, indices):
            key = batch_key(seed, indices)
            for i in my_range(images.shape[0]):
                np.random.seed(seed_for(key, indices[i]))
                if np.random.rand() < flip_prob:
                    dst[i] = images[i, :, ::-1]
                else:
                    dst[i] = images[i]
            return dst

        flip.is_parallel = True
        flip.with_indices = True
        return flip

    def declare_state_and_memory(self, previous_state: State):
        return replace(previous_state, jit_mode=True), AllocationQuery(previous_state.shape, previous_state.dtype)
