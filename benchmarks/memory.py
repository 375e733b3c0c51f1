"""Benchmark 5, memory: peak memory of one training step of the models of the train-step benchmark (steps.py).

Each model runs in a fresh child process: build it, run one warm-up step (so SGD's momentum buffers exist), then
measure one step.
  CPU: peak resident memory during the step (VmHWM, reset through /proc/self/clear_refs) minus the resident memory
       before the model was built (so the libraries' import footprints do not count): model, optimizer state,
       activations and transients of the step.
  GPU: torch.cuda.max_memory_allocated() during the step (model, optimizer state, activations, transients).
Also, noise-free: the bytes autograd keeps for backward (saved tensors, unique storages) after the forward.

ours-ckpt is ours with activation checkpointing per block (dst/memory_options.py; its peak / ours is what the option
saves; ours-aap-ckpt on request). Target: ours at or below SpikingJelly's (ratio = SpikingJelly / ours >= 1).
Prints a table, then one JSON line {"name": "memory", "ratio": ..., "target": 1.0, "met": ..., ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, environment, table  # noqa: E402

CONTESTANTS = ["ours", "sj", "ours-aap", "ours-reference-neurons", "ours-unfused-stem", "ours-fused-stem", "ours-bf16",
               "sj-bf16", "ours-ckpt"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(name: str, device: str, T: int, batch: int, res: int) -> dict:
    import torch
    rss_idle = _status_kib("VmRSS") if device == "cpu" else 0
    from steps import STEPS
    step, model = STEPS[name](T, batch, res, device)
    step()  # warm-up: optimizer state, lazy inits, kernel compilation

    # what autograd keeps for backward after the forward (unique storages), measured on a separate forward
    seen: dict[int, int] = {}

    def pack(t):
        try:
            ptr = t.untyped_storage().data_ptr()
            seen[ptr] = t.untyped_storage().nbytes()
        except RuntimeError:
            pass
        return t

    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()  # records what the forward saves; the step's backward frees it again
    saved = sum(n for p, n in seen.items() if p not in param_ptrs)

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"name": name, "peak_bytes": peak, "saved_for_backward_bytes": saved, "method": "max_memory_allocated"}
    ok = _reset_peak_rss()
    step()
    peak_kib = _status_kib("VmHWM")
    return {"name": name, "peak_bytes": (peak_kib - rss_idle) * 1024, "peak_rss_bytes": peak_kib * 1024,
            "rss_before_model_bytes": rss_idle * 1024, "saved_for_backward_bytes": saved,
            "method": "VmHWM during the step minus VmRSS before the model" if ok else "VmHWM (no reset available)"}


def main(argv=None):
    import torch
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 64 on GPU (as train-step)")
    p.add_argument("--res", type=int, default=None, help="default 128 on CPU, 224 on GPU (as train-step)")
    p.add_argument("--contestants", nargs="+", default=None, help=f"default {CONTESTANTS} (on GPU without "
                   "ours-reference-neurons, to fit a short lease)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    batch = args.batch or (64 if device == "cuda" else 8)
    res = args.res or (224 if device == "cuda" else 128)
    if args.child:
        print(json.dumps(child(args.child, device, args.T, batch, res)), flush=True)
        return

    contestants = args.contestants or [c for c in CONTESTANTS
                                        if device == "cpu" or c != "ours-reference-neurons"]
    results = {}
    for name in contestants:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--device", device, "--T", str(args.T),
                               "--batch", str(batch), "--res", str(res)], capture_output=True, text=True,
                              timeout=900, env=dict(os.environ))
        if proc.returncode != 0:
            print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = []
    for name, r in results.items():
        row = {"contestant": name, "peak MiB": round(r["peak_bytes"] / 2**20, 1),
               "saved for backward MiB": round(r["saved_for_backward_bytes"] / 2**20, 1)}
        if "ours" in results and name != "ours":
            row["peak / ours"] = round(r["peak_bytes"] / results["ours"]["peak_bytes"], 3)
        rows.append(row)
    ratio = round(results["sj"]["peak_bytes"] / results["ours"]["peak_bytes"], 3) \
        if "sj" in results and "ours" in results else None
    ratio_bf16 = round(results["sj-bf16"]["peak_bytes"] / results["ours-bf16"]["peak_bytes"], 3) \
        if "sj-bf16" in results and "ours-bf16" in results else None
    env = environment(args.device)
    method = next(iter(results.values()))["method"] if results else ""
    print(f"peak memory of one training step, T={args.T}, batch {batch}, {res}x{res}, device {device} ({method})")
    print(table(rows, ["contestant", "peak MiB", "peak / ours", "saved for backward MiB"]))
    print(f"\nSpikingJelly / ours = {ratio} (target >= 1: ours at or below SpikingJelly's); bf16 autocast: {ratio_bf16}")
    emit({"name": "memory", "ratio": ratio, "target": 1.0, "met": bool(ratio is not None and ratio >= 1.0),
          "ratio_bf16": ratio_bf16, "results": results,
          "config": {"T": args.T, "batch": batch, "res": res}, "env": env})


if __name__ == "__main__":
    main()
