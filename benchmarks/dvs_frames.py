"""Benchmark 4, dvs-frames: event streams -> frames, ours against tonic's ToFrame on the same events.

Events: DVS128-Gesture-like recordings (128 x 128 sensor, 2 polarities, ~300k events each, time-sorted), integrated
into T = 16 frames of equal event count (SEW ResNet's "split by number" = tonic's n_event_bins).
  ours       the integration the pipeline runs (pipeline/data/frames.py events_to_frames: tonic's slice bounds,
             then one compiled counting pass)
  tonic      tonic.transforms.ToFrame(sensor_size, n_event_bins=T)
  candidate  a plain numpy bincount written here, as a yardstick for what the pipeline could reach (not used by it)
Frames must be identical (int16 [T, 2, H, W]); the table says whether they are.

Target: ours >= 20x faster than tonic. Prints a table, then one JSON line {"name": "dvs-frames", ...}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_ratio, emit, environment, min_ms, paired_ratio, table, time_interleaved  # noqa: E402

import numpy as np  # noqa: E402

SENSOR = (128, 128, 2)  # tonic's order: W, H, P


def make_events(n_events: int, seed: int) -> np.ndarray:
    """A time-sorted stream with the structured dtype tonic's DVSGesture yields (x, y, p, t)."""
    import tonic
    rng = np.random.default_rng(seed)
    ev = np.empty(n_events, dtype=tonic.datasets.DVSGesture.dtype)
    # activity concentrated in a moving blob, as a gesture: x, y around a drifting centre
    t = np.sort(rng.integers(0, 6_000_000, n_events))
    cx = 64 + 30 * np.sin(t / 1e6)
    cy = 64 + 20 * np.cos(t / 7e5)
    ev["x"] = np.clip(np.round(cx + rng.normal(0, 12, n_events)), 0, SENSOR[0] - 1)
    ev["y"] = np.clip(np.round(cy + rng.normal(0, 12, n_events)), 0, SENSOR[1] - 1)
    ev["p"] = rng.integers(0, 2, n_events)
    ev["t"] = t
    return ev


def bincount_frames(events: np.ndarray, sensor_size=SENSOR, n_bins: int = 16) -> np.ndarray:
    """Equal-count bins (the last len % n_bins events left out, as tonic) counted with one np.bincount."""
    W, H, P = sensor_size
    per = len(events) // n_bins
    m = per * n_bins
    idx = (events["p"][:m].astype(np.int64) * H + events["y"][:m]) * W + events["x"][:m]
    idx = idx.reshape(n_bins, per) + (np.arange(n_bins, dtype=np.int64) * (P * H * W))[:, None]
    counts = np.bincount(idx.ravel(), minlength=n_bins * P * H * W)
    return counts.astype(np.int16).reshape(n_bins, P, H, W)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--recordings", type=int, default=8)
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    import tonic.transforms as TT

    streams = [make_events(args.events + 37 * i, seed=i) for i in range(args.recordings)]
    tonic_tf = TT.ToFrame(sensor_size=SENSOR, n_event_bins=args.T)
    from pipeline.data.frames import events_to_frames
    ours_desc = "pipeline.data.frames.events_to_frames"
    contestants = {"ours": lambda ev: events_to_frames(ev, SENSOR, args.T, "number"), "tonic": tonic_tf,
                   "candidate": lambda ev: bincount_frames(ev, SENSOR, args.T)}

    reference = [tonic_tf(ev) for ev in streams]
    identical = {}
    for name, fn in contestants.items():
        identical[name] = all(np.array_equal(fn(ev), ref) and fn(ev).dtype == ref.dtype
                              for ev, ref in zip(streams, reference))

    def over_all(fn):
        return lambda: [fn(ev) for ev in streams]
    times = time_interleaved({n: over_all(f) for n, f in contestants.items()}, args.rounds, warmup=1)
    per_rec = {n: round(min_ms(t) / len(streams), 3) for n, t in times.items()}
    rows = [{"integration": n, "ms / recording": per_rec[n], "tonic / this": best_ratio(times["tonic"], t),
             "identical frames": identical[n]} for n, t in times.items()]
    ratio = best_ratio(times["tonic"], times["ours"]) if identical["ours"] else None
    env = environment("cpu")
    print(f"events -> {args.T} frames (split by number), {args.recordings} recordings of ~{args.events} events, "
          f"sensor {SENSOR}; ours = {ours_desc}; best of {args.rounds} rounds")
    print(table(rows, ["integration", "ms / recording", "tonic / this", "identical frames"]))
    emit({"name": "dvs-frames", "ratio": ratio, "target": 20.0, "met": bool(ratio is not None and ratio >= 20.0),
          "ours": ours_desc, "identical_frames": identical, "ms_per_recording": per_rec,
          "candidate_ratio": best_ratio(times["tonic"], times["candidate"]),
          "ratio_median_of_rounds": paired_ratio(times["tonic"], times["ours"]),
          "config": {"events": args.events, "recordings": args.recordings, "T": args.T, "sensor": SENSOR},
          "env": env})


if __name__ == "__main__":
    main()
