"""Shared pieces of the benchmarks: paired timing, environment facts, the table and the JSON result line.

Environment: importing this module imports dst before torch, so the benchmarks run as the `dst` command does (see
below); environment() records the OpenMP settings in force.

Timing: contestants run in interleaved rounds after warm-up (A B C, B C A, C A B, then reversed: C B A, A C B, B A C,
...: see round_order). On a shared machine other
jobs only ever add time, so a headline ratio compares the best (minimum) time of each contestant; the median of the
per-round ratios is kept beside it as a check. Absolute times are noise here; the ratios are the figures.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Before torch, as the `dst` command does: every benchmark (ours and the peers, in the same process) runs with dst's
# OpenMP spin default (dst/__init__.py; a GOMP_SPINCOUNT or OMP_WAIT_POLICY of the user's is kept).
import dst  # noqa: E402, F401


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def round_order(names: list[str], r: int) -> list[str]:
    """The order of round r: rotated by r, and reversed every other cycle of len(names) rounds. Over the rounds every
    contestant runs in every position and after two different contestants. What a call costs can depend on the one
    before it: in the neuron benchmark (T = 4, THP_MEM_ALLOC_ENABLE=1) ours took 11.5-14.3 ms right after the floor
    and 8.0-10.2 ms after anything else, and a fixed cyclic order hands such a cost to the same contestant in every
    round."""
    n = len(names)
    order = names[r % n:] + names[:r % n]
    return order[::-1] if (r // n) % 2 else order


def time_interleaved(contestants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                     device: str = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each contestant, `rounds` values each, measured in varying order (see round_order)."""
    names = list(contestants)
    for _ in range(warmup):
        for name in names:
            contestants[name]()
            synchronize(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in round_order(names, r):
            synchronize(device)
            t0 = time.perf_counter()
            contestants[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1e3, 3)


def min_ms(values: list[float]) -> float:
    return round(min(values) * 1e3, 3)


def best_ratio(numerator: list[float], denominator: list[float]) -> float:
    """min(numerator) / min(denominator): each contestant at its least disturbed."""
    return round(min(numerator) / min(denominator), 3)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator[i] / denominator[i]."""
    return round(statistics.median(a / b for a, b in zip(numerator, denominator)), 3)


def environment(device: str = "cpu") -> dict:
    import torch
    env = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "device": device,
        "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        env["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
        try:
            import triton
            env["triton"] = triton.__version__
        except ImportError:
            pass
    try:
        from importlib.metadata import version
        env["spikingjelly"] = version("spikingjelly")
    except Exception:  # noqa: BLE001 - not installed is fine
        pass
    return env


def import_spikingjelly():
    """SpikingJelly 2.0 (installed with --no-deps for benchmarking only). Its model zoo imports torchvision for
    pretrained-weight downloads, which we never use: a stub module stands in so no torchvision is needed."""
    import importlib.util
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        stub = types.ModuleType("torchvision")
        utils = types.ModuleType("torchvision._internally_replaced_utils")
        utils.load_state_dict_from_url = None
        stub._internally_replaced_utils = utils
        sys.modules["torchvision"] = stub
        sys.modules["torchvision._internally_replaced_utils"] = utils
    try:
        from spikingjelly.logger import logger
        logger.remove()  # its per-call INFO lines would drown the table
    except Exception:  # noqa: BLE001
        pass
    import spikingjelly.activation_based as sj
    return sj


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of rows (dicts) with the given columns."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def emit(result: dict) -> None:
    """The last line a benchmark prints: one JSON object (run_all.py reads it)."""
    print(json.dumps(result, sort_keys=False), flush=True)
