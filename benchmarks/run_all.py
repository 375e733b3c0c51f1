"""Run every benchmark (each in its own process) and write benchmarks/results/latest.json and latest.md.

latest.json maps each benchmark's name (neuron, train-step, loader, dvs-frames, memory) to its result: at least
"ratio" (peer time or memory over ours: above 1 means we are better), "target", "met" and the raw figures. A benchmark
that fails to run is recorded with ratio null, met false and its error.

    python benchmarks/run_all.py                 # all, on CUDA when available
    python benchmarks/run_all.py --only neuron memory --device cpu --out /tmp/results   # keeps the others' results
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

BENCHMARKS = {  # name -> (script, target used when the script cannot report one)
    "neuron": ("neuron.py", {"vs_sj": 3.0, "ours_over_floor_max": 1.5}),
    "train-step": ("train_step.py", {"vs_sj": 1.3, "aap_overhead_max": 0.10}),
    "loader": ("loader.py", 2.0),
    "dvs-frames": ("dvs_frames.py", 20.0),
    "memory": ("memory.py", 1.0),
}


def run_one(name: str, extra: list[str], timeout: float) -> tuple[dict, str]:
    script, target = BENCHMARKS[name]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(BENCH_DIR / script), *extra], capture_output=True, text=True,
                              timeout=timeout, cwd=BENCH_DIR.parent)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, rc = f"timed out after {timeout:.0f} s", -1
    seconds = round(time.perf_counter() - t0, 1)
    lines = out.strip().splitlines()
    result = None
    if rc == 0 and lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if result is None:
        result = {"name": name, "ratio": None, "target": target, "met": False,
                  "error": (err or out)[-3000:] or f"exit status {rc}"}
        text = out + "\n" + (err or "")[-3000:]
    else:
        text = "\n".join(lines[:-1])
    result["seconds"] = seconds
    result.pop("name", None)
    result["output"] = text  # the printed table, so latest.md can be rebuilt when only some benchmarks rerun
    return result, text


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:g}"


def fmt_target(t):
    if isinstance(t, dict):
        return ", ".join(f"{k} {v:g}" for k, v in t.items())
    return f">= {t:g}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    p.add_argument("--device", default=None, help="passed to the benchmarks that take one (neuron, train-step, "
                                                  "memory)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--timeout", type=float, default=900, help="seconds per benchmark")
    p.add_argument("--fresh", action="store_true", help="drop the other benchmarks' results already in --out "
                                                        "(by default a run of --only some keeps them)")
    args = p.parse_args(argv)

    results, texts = {}, {}
    previous = args.out / "latest.json"
    if previous.is_file() and not args.fresh:
        try:
            for name, r in json.loads(previous.read_text()).items():
                if name in BENCHMARKS and name not in args.only:
                    results[name], texts[name] = r, r.get("output", "")
        except (json.JSONDecodeError, AttributeError):
            pass
    for name in args.only:
        extra = ["--device", args.device] if args.device and name in ("neuron", "train-step", "memory") else []
        print(f"== {name}", flush=True)
        results[name], texts[name] = run_one(name, extra, args.timeout)
        print(texts[name], flush=True)
        r = results[name]
        print(f"-> ratio {fmt_ratio(r.get('ratio'))}, target {fmt_target(r.get('target'))}, met {r.get('met')} "
              f"({r['seconds']} s)\n", flush=True)
        write(args.out, results, texts)  # after each one, so a run cut short keeps what it measured
    print(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.md'}")


def write(out: Path, results: dict, texts: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(out=out)
    results = {n: results[n] for n in BENCHMARKS if n in results}
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    md = [f"# Benchmarks ({stamp})", "",
          "Ratios are peer time (or memory) over ours, each benchmark measured in one run on one machine: above 1 "
          "means we are better. Absolute times on a shared machine are noise; the ratios are the figures.", "",
          "| benchmark | ratio | target | met | measured |", "|---|---|---|---|---|"]
    for name, r in results.items():
        env = r.get("env") or {}
        when = f"{env.get('date', '')} (load {env.get('load_avg_1m', '?')})" if env else ""
        md.append(f"| {name} | {fmt_ratio(r.get('ratio'))} | {fmt_target(r.get('target'))} | "
                  f"{'yes' if r.get('met') else 'NO'} | {when} |")
    for name in results:
        text = texts.get(name, "")
        md += ["", f"## {name}", "", text.strip() or "(no output)"]
        if "error" in results[name]:
            md += ["", "```", results[name]["error"].strip()[-1500:], "```"]
    (args.out / "latest.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
