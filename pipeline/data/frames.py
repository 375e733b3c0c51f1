"""Event streams -> frames with two compiled loops over the events.

Computes exactly what tonic's `Downsample(sensor_size, target_size)` followed by `ToFrame(n_event_bins=T)` (split by
number) or `ToFrame(n_time_bins=T)` (split by time) computes: int16 counts [T, P, H, W]. tonic copies the events for
the downsample, copies every slice, and counts each slice with `np.add.at` (slow, unbuffered); here the slice
boundaries come from tonic's own slicers (so the binning is tonic's by construction: its rounding, its dropped
remainder), one numba loop computes every event's pixel and a second counts them straight into the frame tensor.
Measured in benchmarks/dvs_frames.py.

Exactness details mirrored from tonic:
- downsampling multiplies x and y by target/sensor (float64) and truncates back to the coordinate's integer type;
- counts are int16 and wrap on overflow as numpy's int16 does;
- a 1-polarity sensor counts every event in polarity 0 and refuses streams with both polarities.
Unlike tonic (IndexError, or silent wrap-around for negative coordinates), an event outside the sensor is an error
naming the event.
"""
from __future__ import annotations

import numpy as np
from numba import njit

SPLIT_BY = ("number", "time")
FIELDS = ("x", "y", "p", "t")


@njit(cache=True, nogil=True, inline="always")
def _coordinate(v, factor, scale):
    # float64 product truncated toward zero: what numpy does when tonic writes x * factor back into the field
    if scale:
        return np.int32(np.float64(v) * factor)
    return np.int32(v)


@njit(cache=True, nogil=True)
def _pixel_indices(x, y, p, fx, fy, scale, single_polarity, n_pol, height, width, out):
    """out[i] = the flat (p, y', x') index of event i within one frame; returns False if any event falls outside.

    A loop of its own, in int32, with no early exit (the range checks are and'ed into one flag): written so, it ran
    2.4x faster than int64 arithmetic (0.48 against 1.16 ms for 300k events here)."""
    w, h, npol = np.uint32(width), np.uint32(height), np.uint32(n_pol)
    plane, row = np.int32(height * width), np.int32(width)
    inside = True
    for i in range(out.shape[0]):
        xi = _coordinate(x[i], fx, scale)
        yi = _coordinate(y[i], fy, scale)
        pi = np.int32(0) if single_polarity else np.int32(p[i])
        inside &= (np.uint32(xi) < w) & (np.uint32(yi) < h) & (np.uint32(pi) < npol)
        out[i] = pi * plane + yi * row + xi
    return inside


@njit(cache=True, nogil=True)
def _scatter(pixel, lo, starts, ends, frames):
    """frames[b].flat[pixel[i - lo]] += 1 for every event i of bin b (int16: wraps as numpy's add.at does)."""
    flat = frames.reshape(-1)
    size = flat.shape[0] // frames.shape[0]
    for b in range(frames.shape[0]):
        base = b * size
        for i in range(starts[b], ends[b]):
            flat[base + pixel[i - lo]] += np.int16(1)


def slice_bounds(events: np.ndarray, frames: int, split_by: str) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) event indices of each frame, from tonic's slicers (n_event_bins / n_time_bins, no overlap)."""
    from tonic.slicers import SliceByEventBins, SliceByTimeBins

    if split_by == "number":
        bounds = SliceByEventBins(bin_count=frames).get_slice_metadata(events, None)
    elif split_by == "time":
        bounds = SliceByTimeBins(bin_count=frames).get_slice_metadata(events, None)
    else:
        raise ValueError(f"split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    starts = np.fromiter((s for s, _ in bounds), np.int64, len(bounds))
    ends = np.fromiter((e for _, e in bounds), np.int64, len(bounds))
    return starts, ends


def _outside_message(events, lo, hi, factors, frame, sensor) -> str:
    """Names the first event of [lo, hi) outside the frame (the slow path, run only to word the error)."""
    x = (events["x"][lo:hi] * factors[0]).astype(np.int64)
    y = (events["y"][lo:hi] * factors[1]).astype(np.int64)
    p = np.zeros_like(x) if frame[2] == 1 else events["p"][lo:hi].astype(np.int64)
    outside = (x < 0) | (x >= frame[0]) | (y < 0) | (y >= frame[1]) | (p < 0) | (p >= frame[2])
    bad = lo + int(np.flatnonzero(outside)[0])
    ev = events[bad]
    return f"event {bad} (x={ev['x']}, y={ev['y']}, p={ev['p']}) lies outside the sensor {sensor}"


def events_to_frames(events: np.ndarray, sensor_size: tuple[int, int, int], frames: int, split_by: str = "number",
                     size: int | None = None) -> np.ndarray:
    """Structured events (fields x, y, p, t; time-sorted) from a (W, H, P) sensor -> int16 [frames, P, size, size]
    (size defaults to the sensor's own; a smaller size downsamples the coordinates as tonic's Downsample does)."""
    missing = [f for f in FIELDS if events.dtype.names is None or f not in events.dtype.names]
    if missing:
        raise ValueError(f"events need the fields {', '.join(FIELDS)}; missing {', '.join(missing)}")
    width, height, n_pol = (int(v) for v in sensor_size)
    out_w, out_h = (width, height) if size is None else (int(size), int(size))
    # tonic: spatial_factor = np.asarray(target_size) / sensor_size[:-1], in float64
    fx, fy = (np.asarray((out_w, out_h), dtype=np.float64) / np.asarray((width, height), dtype=np.float64)).tolist()
    single_polarity = n_pol == 1
    if single_polarity and np.unique(events["p"]).size > 1:
        raise ValueError("single polarity sensor, but the events contain both polarities")
    starts, ends = slice_bounds(events, frames, split_by)
    out = np.zeros((len(starts), n_pol, out_h, out_w), dtype=np.int16)
    lo, hi = (int(starts.min()), int(ends.max())) if len(starts) else (0, 0)
    # Two passes, each a tight loop: one computing every event's pixel, then the scatter. Fused into one
    # loop they ran 1.2x slower (0.90 against 0.78 ms for 300k events here).
    scale = (fx, fy) != (1.0, 1.0)  # at the sensor's own size the product is exact: skip it
    pixel = np.empty(max(hi - lo, 0), dtype=np.int32)  # a frame has far fewer than 2**31 pixels
    window = events[lo:hi]
    if not _pixel_indices(window["x"], window["y"], window["p"], fx, fy, scale, single_polarity, n_pol, out_h, out_w,
                          pixel):
        raise ValueError(_outside_message(events, lo, hi, (fx, fy), (out_w, out_h, n_pol), (width, height, n_pol)))
    _scatter(pixel, lo, starts, ends, out)
    return out


class EventsToFrames:
    """The per-recording transform the DVS preparation runs (picklable, for its worker processes)."""

    def __init__(self, sensor_size: tuple[int, int, int], size: int, frames: int, split_by: str):
        if split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
        self.sensor_size, self.size, self.frames, self.split_by = tuple(sensor_size), size, frames, split_by

    def __call__(self, events: np.ndarray) -> np.ndarray:
        return events_to_frames(events, self.sensor_size, self.frames, self.split_by, self.size)

    def __repr__(self) -> str:
        return (f"EventsToFrames(sensor_size={self.sensor_size}, size={self.size}, frames={self.frames}, "
                f"split_by={self.split_by!r})")
