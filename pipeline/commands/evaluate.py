"""`dst evaluate`: the exported FSNN (AAP stripped) and DSNN on the run's validation split.

    dst evaluate --run runs/demo/demo_fsnn_7b [--export-dir DIR] [--out FILE] [--max-batches N] [--device D] \
                 [data.root=... data.eval_batch_size=...]

Loads EXPORT_DIR/fsnn.pt (`dst.export.load_fsnn`) and, when present, EXPORT_DIR/dsnn.pt (`dst.export.load_dsnn`),
rebuilds the validation loader from RUN/config.yaml's data section (trailing `key.path=value` overrides apply, e.g.
data.root=/scratch/prepared/imagenet), and writes OUT (default RUN/eval.json) atomically (temp name + rename):
    {"fsnn_top1", "fsnn_top5", "dsnn_top1", "dsnn_top5" (null without dsnn.pt), "firing_rate", "samples",
     "export_dir", ...}
Accuracies are percentages; firing_rate is the FSNN's mean spikes per neuron per time step on these samples. This
checks that the deployable artifact performs as the training-time stream did: the last training-time validation
numbers from RUN/metrics.json are copied under "training" for comparison.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from pipeline import storage
from pipeline.errors import UsageError


EXAMPLES = """examples:
  dst evaluate --run runs/demo/demo_fsnn_resnet18
  dst evaluate --run runs/demo/demo_fsnn_resnet18 --max-batches 2 data.root=/scratch/prepared/demo_images
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="training run directory (holds config.yaml)")
    parser.add_argument("--export-dir", type=Path, default=None, help="exported artifacts (default: RUN/export)")
    parser.add_argument("--out", type=Path, default=None, help="output JSON (default: RUN/eval.json)")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="evaluate at most N validation batches (default: the whole split)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of the run config, e.g. data.root=/scratch/prepared data.eval_batch_size=64")


# ------------------------------------------------------------------------------------------------ loading
def load_models(export_dir: Path):
    """(fsnn, dsnn or None) from an export directory; errors name the file."""
    from dst.export import load_dsnn, load_fsnn

    if not export_dir.is_dir():
        raise UsageError(f"export directory {export_dir} does not exist (run `dst export` first)")
    fsnn_path, dsnn_path = export_dir / "fsnn.pt", export_dir / "dsnn.pt"
    if not fsnn_path.is_file():
        raise UsageError(f"{fsnn_path} is missing (run `dst export` first)")

    def load(fn, path):
        try:
            return fn(path)
        except Exception as err:  # torch's unpickler raises many types for a damaged file
            detail = " ".join(str(err).split())[:200]
            raise UsageError(f"cannot load exported model {path} ({type(err).__name__}: {detail})") from None

    fsnn = load(load_fsnn, fsnn_path)
    dsnn = load(load_dsnn, dsnn_path) if dsnn_path.exists() else None
    return fsnn, dsnn


def _num_classes(model) -> int:
    return int(model.fc.out_features)


def check_matches_config(cfg, fsnn, dsnn, export_dir: Path, num_classes: int, config_path: Path) -> None:
    for label, model in (("fsnn.pt", fsnn), ("dsnn.pt", None if dsnn is None else dsnn.model)):
        if model is None:
            continue
        if model.model_name != cfg.model.name:
            raise UsageError(f"{export_dir / label} holds model {model.model_name}, but {config_path} trains "
                             f"{cfg.model.name}: --export-dir belongs to another run")
        if _num_classes(model) != num_classes:
            raise UsageError(f"{export_dir / label} predicts {_num_classes(model)} classes, but the validation data "
                             f"({cfg.data.dataset} at {cfg.data.root}) has {num_classes}")


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(fsnn, dsnn, loader, device: torch.device, max_batches: int | None) -> dict[str, Any]:
    """Top-1/top-5 of both models and the FSNN's firing rate over the loader (at most max_batches batches)."""
    from dst.monitor import FiringRateMonitor

    models = {"fsnn": fsnn} if dsnn is None else {"fsnn": fsnn, "dsnn": dsnn}
    hits = {s: [0, 0] for s in models}
    samples = batches = 0
    exhausted = False
    # Hooks on the FSNN's neurons only: the DSNN is a separate module, its forwards are not counted.
    with FiringRateMonitor(fsnn) as monitor:
        for x, y in loader:
            if max_batches is not None and batches >= max_batches:
                break
            x, y = x.to(device, torch.float32), y.to(device)
            for stream, model in models.items():
                logits = model(x)
                k = min(5, logits.shape[1])
                top = logits.float().topk(k, dim=1).indices.eq(y[:, None])
                hits[stream][0] += int(top[:, 0].sum())
                hits[stream][1] += int(top.any(dim=1).sum())
            samples += int(y.shape[0])
            batches += 1
        else:
            exhausted = True
        rates, mean_rate = monitor.rates, monitor.mean_rate
    if samples == 0:
        raise UsageError("the validation loader produced no batch")
    result: dict[str, Any] = {}
    for stream in ("fsnn", "dsnn"):
        top1, top5 = hits.get(stream, (None, None))
        result[f"{stream}_top1"] = None if top1 is None else 100.0 * top1 / samples
        result[f"{stream}_top5"] = None if top5 is None else 100.0 * top5 / samples
    result.update(firing_rate=mean_rate, samples=samples, batches=batches, complete_split=exhausted,
                  layer_firing_rates=rates)
    return result


def training_numbers(metrics_path: Path) -> dict[str, Any] | None:
    """The last training-time validation of RUN/metrics.json, for comparison (None when absent or unreadable)."""
    try:
        history = json.loads(metrics_path.read_text()).get("history") or []
    except (OSError, ValueError, AttributeError):
        return None
    evaluated = [h for h in history if isinstance(h, dict) and "val/fsnn_top1" in h]
    if not evaluated:
        return None
    last = evaluated[-1]
    keys = ("val/fsnn_top1", "val/fsnn_top5", "val/dsnn_top1", "val/dsnn_top5", "firing_rate")
    return {"epoch": last.get("epoch"), **{k: last.get(k) for k in keys}}


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here")
    return device


def run(args: argparse.Namespace) -> int:
    from pipeline.data import build_loaders
    from pipeline.report.runs import load_run_config, one_line

    if args.max_batches is not None and args.max_batches < 1:
        raise UsageError(f"--max-batches must be >= 1, got {args.max_batches}")
    run_dir: Path = args.run
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist")
    config_path = run_dir / "config.yaml"
    cfg = load_run_config(config_path, args.overrides)
    export_dir = args.export_dir or run_dir / "export"
    out = args.out or run_dir / "eval.json"
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a directory")
    device = _device(args.device)

    fsnn, dsnn = load_models(export_dir)
    try:
        loaders = build_loaders(cfg.data, rank=0, world_size=1, seed=cfg.trainer.seed, device=str(device))
    except UsageError as err:
        raise UsageError(one_line(str(err))) from None
    check_matches_config(cfg, fsnn, dsnn, export_dir, loaders.num_classes, config_path)
    fsnn.to(device).eval()
    if dsnn is not None:
        dsnn.to(device).eval()

    started = time.perf_counter()
    result = evaluate(fsnn, dsnn, loaders.val, device, args.max_batches)
    seconds = time.perf_counter() - started
    for key in ("fsnn_top1", "fsnn_top5", "dsnn_top1", "dsnn_top5", "firing_rate"):
        value = result[key]
        if value is not None and not math.isfinite(value):
            raise UsageError(f"evaluation of {export_dir} gave a non-finite {key}")
    training = training_numbers(run_dir / "metrics.json")
    report = {
        "fsnn_top1": result["fsnn_top1"], "fsnn_top5": result["fsnn_top5"],
        "dsnn_top1": result["dsnn_top1"], "dsnn_top5": result["dsnn_top5"],
        "firing_rate": result["firing_rate"], "samples": result["samples"], "export_dir": str(export_dir),
        "format": "dst-eval", "version": 1,
        "run_dir": str(run_dir), "experiment": cfg.name, "model": cfg.model.name,
        "files": {"fsnn": str(export_dir / "fsnn.pt"),
                  "dsnn": None if dsnn is None else str(export_dir / "dsnn.pt")},
        "dataset": cfg.data.dataset, "data_root": cfg.data.root, "split": "validation",
        "batches": result["batches"], "max_batches": args.max_batches, "complete_split": result["complete_split"],
        "device": str(device), "seconds": round(seconds, 3),
        "layer_firing_rates": result["layer_firing_rates"],
        "training": training,
        "fsnn_top1_minus_training": None if training is None or training.get("val/fsnn_top1") is None
        else result["fsnn_top1"] - training["val/fsnn_top1"],
    }
    text = json.dumps(report, indent=2) + "\n"
    storage.write_atomically(out, "the evaluation", lambda tmp: tmp.write_text(text))
    dsnn_text = "" if dsnn is None else f"; DSNN top-1 {report['dsnn_top1']:.2f}% top-5 {report['dsnn_top5']:.2f}%"
    print(f"evaluated {export_dir} on {report['samples']} {cfg.data.dataset} validation samples: "
          f"FSNN top-1 {report['fsnn_top1']:.2f}% top-5 {report['fsnn_top5']:.2f}%{dsnn_text}; "
          f"firing rate {report['firing_rate']:.4f} -> {out}")
    return 0
