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

When EXPORT_DIR/fsnn.nir exists (and unless --no-nir), the NIR file is evaluated on the same batches: read once from
disk and stepped by the third-party consumer of `dst export`'s check (dst/export/nir_run.py: nirtorch + Norse), its
logits the mean of the Output over the T steps. It is compared with the network the file holds, the BN-folded FSNN
(`load_fsnn(fsnn.pt, fold=True)`), under "nir":
    {"top1", "top5", "prediction_agreement" (fraction of samples whose top-1 equals the BN-folded FSNN's),
     "max_abs_logit_diff" (against it), "prediction_agreement_vs_fsnn_pt" (against the unfolded fsnn.pt that
     fsnn_top1 measures), "bn_folded_fsnn_top1", "seconds" (the consumer's stepping), "samples", ...}
"nir" is null without the file. "seconds" at the top level stays the FSNN/DSNN evaluation's, the NIR's excluded.
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


NIR_FILE = "fsnn.nir"

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
    parser.add_argument("--no-nir", action="store_true",
                        help="do not evaluate EXPORT_DIR/fsnn.nir even when it exists (eval.json's nir is null)")
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


def _one_line_error(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def load_nir(export_dir: Path, device: torch.device):
    """(path, the BN-folded FSNN, the consumer's module stepping EXPORT_DIR/fsnn.nir); errors name the file."""
    from dst.export import load_fsnn
    from dst.export import nir_run

    path = export_dir / NIR_FILE
    try:
        _, module = nir_run.load(path)
    except ImportError as err:
        raise UsageError(f"cannot evaluate {path}: {err} (--no-nir skips it)") from None
    except Exception as err:  # h5py and nir raise many types for a damaged file
        raise UsageError(f"cannot load NIR graph {path} ({_one_line_error(err)})") from None
    try:
        folded = load_fsnn(export_dir / "fsnn.pt", fold=True)
    except Exception as err:
        raise UsageError(f"cannot load exported model {export_dir / 'fsnn.pt'} ({_one_line_error(err)})") from None
    return path, folded.to(device).eval(), consumer_to(module.eval(), device)


def consumer_to(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The consumer's module on `device`. Norse's cells keep their parameters in a NamedTuple `p` of tensors, which
    Module.to does not move: those are moved here."""
    module.to(device)
    for sub in module.modules():
        p = getattr(sub, "p", None)
        if isinstance(p, tuple) and hasattr(p, "_fields"):
            sub.p = type(p)(*(v.to(device) if torch.is_tensor(v) else v for v in p))
    return module


class NIREvaluation:
    """Accumulates, batch by batch, the NIR file run by the consumer against the BN-folded FSNN (the network the file
    holds) and against fsnn.pt's logits (what fsnn_top1 is computed from)."""

    def __init__(self, path: Path, folded, module):
        self.path, self.folded, self.module = path, folded, module
        self.samples = self.batches = 0
        self.hits = {"nir": [0, 0], "bn_folded_fsnn": [0, 0]}
        self.agree_folded = self.agree_fsnn_pt = 0
        self.max_diff = self.max_logit = 0.0
        self.seconds = self.folded_seconds = 0.0
        self.time_steps = None

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """The consumer's logits for batch x: the mean of its Output over the T steps, from rest."""
        from dst.export.nir import graph_steps
        steps = graph_steps(self.folded, x)
        state, total = None, None
        try:
            for x_t in steps:
                y, state = self.module(x_t.float(), state)
                total = y.float() if total is None else total + y.float()
        except Exception as err:  # a graph for another input shape: conv/linear shape errors
            raise UsageError(f"{self.path}: the consumer cannot step it on the validation batch of shape "
                             f"{tuple(x.shape)} ({_one_line_error(err)})") from None
        self.time_steps = int(steps.shape[0])
        return total / steps.shape[0]

    def update(self, x: torch.Tensor, y: torch.Tensor, fsnn_logits: torch.Tensor) -> None:
        started = time.perf_counter()
        nir_logits = self.step(x)
        self.seconds += time.perf_counter() - started
        started = time.perf_counter()
        ref = self.folded(x).float()
        self.folded_seconds += time.perf_counter() - started
        if nir_logits.shape != ref.shape:
            raise UsageError(f"{self.path} gives outputs of shape {tuple(nir_logits.shape[1:])} per sample, the "
                             f"FSNN {tuple(ref.shape[1:])}: the file holds another network")
        for name, logits in (("nir", nir_logits), ("bn_folded_fsnn", ref)):
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(y[:, None])
            self.hits[name][0] += int(top[:, 0].sum())
            self.hits[name][1] += int(top.any(dim=1).sum())
        predicted = nir_logits.argmax(1)
        self.agree_folded += int((predicted == ref.argmax(1)).sum())
        self.agree_fsnn_pt += int((predicted == fsnn_logits.float().argmax(1)).sum())
        self.max_diff = max(self.max_diff, float((nir_logits - ref).abs().max()))
        self.max_logit = max(self.max_logit, float(ref.abs().max()))
        self.samples += int(y.shape[0])
        self.batches += 1

    def result(self, device: torch.device) -> dict[str, Any]:
        from dst.export import nir_run
        n = max(self.samples, 1)
        pct = {f"{name}_top{k}": 100.0 * self.hits[name][i] / n
               for name in self.hits for i, k in enumerate((1, 5))}
        return {
            "file": str(self.path), "consumer": nir_run.CONSUMER, "read_from": f"nir.read({str(self.path)!r})",
            "reference": "BN-folded FSNN: load_fsnn(fsnn.pt, fold=True), the network the file holds",
            "samples": self.samples, "batches": self.batches, "time_steps": self.time_steps,
            "top1": pct["nir_top1"], "top5": pct["nir_top5"],
            "prediction_agreement": self.agree_folded / n,
            "max_abs_logit_diff": self.max_diff, "max_abs_logit": self.max_logit,
            "bn_folded_fsnn_top1": pct["bn_folded_fsnn_top1"], "bn_folded_fsnn_top5": pct["bn_folded_fsnn_top5"],
            "prediction_agreement_vs_fsnn_pt": self.agree_fsnn_pt / n,
            "device": str(device), "seconds": round(self.seconds, 3),
            "bn_folded_fsnn_seconds": round(self.folded_seconds, 3),
        }


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
def evaluate(fsnn, dsnn, loader, device: torch.device, max_batches: int | None,
             nir: NIREvaluation | None = None) -> dict[str, Any]:
    """Top-1/top-5 of both models and the FSNN's firing rate over the loader (at most max_batches batches); with
    `nir`, also the NIR file on the same batches (nir.seconds and nir.folded_seconds say how long that took)."""
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
                if nir is not None and stream == "fsnn":
                    nir.update(x, y, logits)
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

    nir = None
    if not args.no_nir and (export_dir / NIR_FILE).exists():
        nir = NIREvaluation(*load_nir(export_dir, device))

    started = time.perf_counter()
    result = evaluate(fsnn, dsnn, loaders.val, device, args.max_batches, nir)
    seconds = time.perf_counter() - started - (0.0 if nir is None else nir.seconds + nir.folded_seconds)
    nir_result = None if nir is None else nir.result(device)
    for key in ("fsnn_top1", "fsnn_top5", "dsnn_top1", "dsnn_top5", "firing_rate"):
        value = result[key]
        if value is not None and not math.isfinite(value):
            raise UsageError(f"evaluation of {export_dir} gave a non-finite {key}")
    if nir_result is not None and not math.isfinite(nir_result["max_abs_logit_diff"]):
        raise UsageError(f"evaluation of {nir_result['file']} gave non-finite logits")
    training = training_numbers(run_dir / "metrics.json")
    report = {
        "fsnn_top1": result["fsnn_top1"], "fsnn_top5": result["fsnn_top5"],
        "dsnn_top1": result["dsnn_top1"], "dsnn_top5": result["dsnn_top5"],
        "firing_rate": result["firing_rate"], "samples": result["samples"], "export_dir": str(export_dir),
        "format": "dst-eval", "version": 1,
        "run_dir": str(run_dir), "experiment": cfg.name, "model": cfg.model.name,
        "files": {"fsnn": str(export_dir / "fsnn.pt"),
                  "dsnn": None if dsnn is None else str(export_dir / "dsnn.pt"),
                  "nir": None if nir is None else str(export_dir / NIR_FILE)},
        "dataset": cfg.data.dataset, "data_root": cfg.data.root, "split": "validation",
        "batches": result["batches"], "max_batches": args.max_batches, "complete_split": result["complete_split"],
        "device": str(device), "seconds": round(seconds, 3),
        "layer_firing_rates": result["layer_firing_rates"],
        "training": training,
        "fsnn_top1_minus_training": None if training is None or training.get("val/fsnn_top1") is None
        else result["fsnn_top1"] - training["val/fsnn_top1"],
        "nir": nir_result,
    }
    text = json.dumps(report, indent=2) + "\n"
    storage.write_atomically(out, "the evaluation", lambda tmp: tmp.write_text(text))
    dsnn_text = "" if dsnn is None else f"; DSNN top-1 {report['dsnn_top1']:.2f}% top-5 {report['dsnn_top5']:.2f}%"
    nir_text = "" if nir_result is None else (
        f"; fsnn.nir (run by the consumer) top-1 {nir_result['top1']:.2f}%, top-1 agreement "
        f"{nir_result['prediction_agreement']:.4f} with the BN-folded FSNN, logits within "
        f"{nir_result['max_abs_logit_diff']:.3g}, {nir_result['seconds']:.1f} s")
    print(f"evaluated {export_dir} on {report['samples']} {cfg.data.dataset} validation samples: "
          f"FSNN top-1 {report['fsnn_top1']:.2f}% top-5 {report['fsnn_top5']:.2f}%{dsnn_text}{nir_text}; "
          f"firing rate {report['firing_rate']:.4f} -> {out}")
    return 0
