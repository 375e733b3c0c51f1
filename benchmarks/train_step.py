"""Benchmark 2, train-step: one full training step (forward, loss, backward, SGD step), no DeepSpeed.

fsnn_resnet18 without the AAP against SpikingJelly's SEW-ResNet-18 with the same connect function (IAND), IF neurons,
T = 4, same batch and resolution (see steps.py), each as its library builds it by default (ours channels-last,
SpikingJelly NCHW); and the AAP's overhead: fsnn_resnet18 with vs without the AAP.
Like-for-like rows: both in NCHW (sj / ours-nchw) and both channels-last (sj-channels-last / ours), so the part of
the ratio that is only the memory format is visible. Extra rows: bfloat16 autocast for both, what the fused
neurons bring (ours with the reference neuron loop), and what the fused stem brings (ours-unfused-stem against
ours-fused-stem; ours fuses it on CPU only).

OpenMP: dst is imported before torch (by common.py), as the `dst` command does, so both contestants run with dst's
GOMP_SPINCOUNT default (dst/__init__.py; a user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY is kept). On CPU, ours and
SpikingJelly are timed once more in a child process under libgomp's own default spin (GOMP_SPINCOUNT=300000), and
that ratio is printed and kept beside the headline.

Targets: SpikingJelly / ours >= 1.3 (defaults against defaults); AAP overhead (with / without - 1) < 10%.
Prints a table, then one JSON line {"name": "train-step", "ratio": ..., "target": ..., "met": ..., ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (best_ratio, emit, environment, median_ms, min_ms, paired_ratio, table,  # noqa: E402
                    time_interleaved)

import torch  # noqa: E402

from steps import MEMORY_OPTION_STEPS, STEPS, n_params  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 64 on GPU")
    p.add_argument("--res", type=int, default=None, help="default 128 on CPU, 224 on GPU")
    p.add_argument("--rounds", type=int, default=None, help="default 10 on CPU and GPU")
    p.add_argument("--contestants", nargs="+", default=[n for n in STEPS if n not in MEMORY_OPTION_STEPS],
                   help=f"default: all but {MEMORY_OPTION_STEPS} (activation checkpointing; "
                        f"benchmarks/results/activation-checkpointing.md)")
    p.add_argument("--no-openmp-default-check", action="store_true",
                   help="skip the child run under libgomp's default spin")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    device = "cuda" if cuda else "cpu"
    batch = args.batch or (64 if cuda else 8)
    res = args.res or (224 if cuda else 128)
    rounds = args.rounds or 10  # SpikingJelly's best of 6 ranged 757-868 ms across runs on a 2-core CPU

    steps, params, errors = {}, {}, {}
    for name in args.contestants:
        try:
            steps[name], model = STEPS[name](args.T, batch, res, device)
            params[name] = n_params(model)
            del model
        except Exception as e:  # noqa: BLE001 - a contestant that cannot run is reported, the others still run
            errors[name] = f"{type(e).__name__}: {e}"
    times = time_interleaved(steps, rounds, warmup=2, device=device)

    rows = []
    for name, ts in times.items():
        row = {"contestant": name, "ms/step": min_ms(ts), "median ms/step": median_ms(ts),
               "params (M)": round(params[name] / 1e6, 3)}
        if name != "ours":
            row["time / ours"] = best_ratio(ts, times["ours"])
            row["time / ours (median of rounds)"] = paired_ratio(ts, times["ours"])
        rows.append(row)
    ratio = best_ratio(times["sj"], times["ours"]) if "sj" in times else None
    aap_overhead = round(best_ratio(times["ours-aap"], times["ours"]) - 1.0, 3) if "ours-aap" in times else None
    pays = {}
    for variant in ("ours-nchw", "ours-bf16"):
        if variant in times:
            pays[variant] = best_ratio(times["ours"], times[variant])  # > 1: the variant is faster
    if "ours-unfused-stem" in times and "ours-fused-stem" in times:  # > 1: the fused stem pays
        pays["fused stem (ours-unfused-stem / ours-fused-stem)"] = best_ratio(times["ours-unfused-stem"],
                                                                              times["ours-fused-stem"])
    like_for_like = {}
    for peer, mine, label in (("sj", "ours-nchw", "nchw: sj / ours-nchw"),
                              ("sj-channels-last", "ours", "channels-last: sj-channels-last / ours"),
                              ("sj-bf16", "ours-bf16", "bf16: sj-bf16 / ours-bf16")):
        if peer in times and mine in times:
            like_for_like[label] = best_ratio(times[peer], times[mine])

    openmp_default = None
    if not cuda and not args.no_openmp_default_check and ratio is not None:
        openmp_default = _ratio_under_libgomp_default(args, batch, res, rounds)

    env = environment(args.device)
    print(f"train step, T={args.T}, batch {batch}, {res}x{res}, device {device}, {env['threads']} threads, "
          f"load {env.get('load_avg_1m')}, GOMP_SPINCOUNT={env['GOMP_SPINCOUNT']}, "
          f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}")
    print(f"best of {rounds} interleaved rounds")
    print(table(rows, ["contestant", "ms/step", "median ms/step", "time / ours", "time / ours (median of rounds)",
                       "params (M)"]))
    if errors:
        print(f"could not run: {errors}")
    print(f"\nSpikingJelly / ours = {ratio} (target >= 1.3, each library's default layout); AAP overhead = "
          f"{aap_overhead} (target < 0.10)\nlike for like: {like_for_like}\nspeedup of variants over ours: {pays}")
    if openmp_default is not None:
        print(f"under libgomp's default spin (GOMP_SPINCOUNT={LIBGOMP_DEFAULT_SPIN}, child process): SpikingJelly / "
              f"ours = {openmp_default.get('ratio')} (ms/step {openmp_default.get('ms_per_step_best')})")
    emit({
        "name": "train-step", "ratio": ratio, "target": {"vs_sj": 1.3, "aap_overhead_max": 0.10},
        "met": bool(ratio is not None and ratio >= 1.3 and aap_overhead is not None and aap_overhead < 0.10),
        "aap_overhead": aap_overhead, "like_for_like": like_for_like, "variant_speedup_over_ours": pays,
        "ms_per_step_best": {n: min_ms(t) for n, t in times.items()},
        "ms_per_step_median": {n: median_ms(t) for n, t in times.items()}, "params": params,
        "config": {"T": args.T, "batch": batch, "res": res, "rounds": rounds},
        "errors": errors, "env": env,
        "under_libgomp_default_spin": openmp_default,
    })


LIBGOMP_DEFAULT_SPIN = "300000"


def _ratio_under_libgomp_default(args, batch: int, res: int, rounds: int) -> dict | None:
    """ours and SpikingJelly timed again in a child process whose OpenMP spins as libgomp does by default."""
    child = subprocess.run(
        [sys.executable, __file__, "--device", "cpu", "--T", str(args.T), "--batch", str(batch), "--res", str(res),
         "--rounds", str(rounds), "--contestants", "ours", "sj", "--no-openmp-default-check"],
        capture_output=True, text=True, timeout=1800,
        env={k: v for k, v in {**os.environ, "GOMP_SPINCOUNT": LIBGOMP_DEFAULT_SPIN}.items()
             if k != "OMP_WAIT_POLICY"})
    if child.returncode != 0:
        print(f"the child run under libgomp's default spin failed:\n{child.stderr[-2000:]}", file=sys.stderr)
        return None
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return {"ratio": result["ratio"], "ms_per_step_best": result["ms_per_step_best"],
            "GOMP_SPINCOUNT": LIBGOMP_DEFAULT_SPIN}


if __name__ == "__main__":
    main()
