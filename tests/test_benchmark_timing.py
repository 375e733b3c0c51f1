"""benchmarks/common.py's interleaved timing: the order of the rounds that every ratio in benchmarks/results rests on."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("bench_common", REPO / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n", [2, 3, 5])
def test_every_contestant_runs_in_every_position_after_varying_others(common, n):
    names = [f"c{i}" for i in range(n)]
    rounds = [common.round_order(names, r) for r in range(2 * n)]
    assert all(sorted(order) == names for order in rounds)
    for pos in range(n):
        assert {order[pos] for order in rounds} == set(names)
    if n > 2:   # no contestant runs mostly after the same one (a fixed cyclic order: always after the same one)
        for name in names:
            before = [order[order.index(name) - 1] for order in rounds if order[0] != name]
            assert max(before.count(b) for b in set(before)) <= len(before) / 2, (name, before)


def test_time_interleaved_times_each_call(common):
    calls = []
    contestants = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = common.time_interleaved(contestants, rounds=7, warmup=2)
    assert {name: len(ts) for name, ts in times.items()} == {"a": 7, "b": 7, "c": 7}
    assert all(t >= 0 for ts in times.values() for t in ts)
    assert calls[:6] == ["a", "b", "c"] * 2                                      # warm-up in the given order
    assert calls[6:] == [name for r in range(7) for name in common.round_order(["a", "b", "c"], r)]
