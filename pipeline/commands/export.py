"""`dst export`: a training checkpoint -> the AAP-stripped FSNN (+ DSNN), verified full-spike, with an op/energy report.

    dst export --checkpoint runs/demo/checkpoints --out runs/demo/export [--data-batch val_batch.pt] [--no-dsnn]

Writes into OUT (built in a temporary directory next to it and renamed at the end, so OUT is complete or absent):
    fsnn.pt      state_dict without the AAP + the model name/kwargs to rebuild it (`dst.export.load_fsnn`)
    fsnn.ts      TorchScript of the BN-folded FSNN (`torch.jit.load` alone)
    dsnn.pt      the full dual-stream model, read as the DSNN (`dst.export.load_dsnn`); not with --no-dsnn
    report.json  parameters, MACs, ACs, energy, per-layer firing rates, the full-spike check and consistency checks
--checkpoint is a run's checkpoints directory (DeepSpeed format, uses `latest`), one tag directory, or a plain
checkpoint file: a torch file holding {"model_name", "model_kwargs", "state_dict", "config" (optional)}.
By default the DSNN is exported when the model has an AAP; --dsnn requires it, --no-dsnn skips it.
Refuses (exit 2, one line) an unreadable checkpoint, a model without AAP asked for a DSNN (--dsnn), and an FSNN that
fails the full-spike check (e.g. SEW-ResNet ADD) unless --allow-not-full-spike says it is a baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline import storage
from pipeline.errors import UsageError

ARTIFACTS = ("fsnn.pt", "fsnn.ts", "dsnn.pt", "report.json")


EXAMPLES = """examples:
  dst export --checkpoint runs/demo/demo_fsnn_resnet18/checkpoints --out runs/demo/demo_fsnn_resnet18/export
  dst export --checkpoint runs/demo/demo_sew_resnet18_add --out /tmp/sew --allow-not-full-spike   # a baseline
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="run checkpoints dir (uses `latest`), one tag dir, or a plain checkpoint .pt file")
    parser.add_argument("--out", required=True, type=Path, help="output directory (replaced if it holds an export)")
    parser.add_argument("--data-batch", type=Path, default=None,
                        help="torch file with a batch of validation inputs (a tensor, (inputs, targets), or "
                             "{'inputs': ...}) on which firing rates and ops are measured")
    parser.add_argument("--input-shape", default=None,
                        help="per-sample input shape for random Gaussian input when no data is given, e.g. 3,224,224 "
                             "or 16,2,128,128 (default: from the run config)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples to measure on (default 4)")
    dsnn = parser.add_mutually_exclusive_group()
    dsnn.add_argument("--dsnn", dest="dsnn", action="store_true", default=None,
                      help="require the DSNN too (refused for a model without AAP)")
    dsnn.add_argument("--no-dsnn", dest="dsnn", action="store_false", help="export the FSNN only")
    parser.add_argument("--allow-not-full-spike", action="store_true",
                        help="export a model that fails the full-spike check anyway (baselines such as SEW-ResNet "
                             "ADD), recording the failure in report.json; refused by default")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")


# ---------------------------------------------------------------------------------------------------- reading
@dataclass
class Source:
    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    val_batch: Any = None
    description: str = ""


def read_plain_checkpoint(path: Path) -> Source:
    """A plain checkpoint file: {"model_name", "model_kwargs", "state_dict", "config" (optional)}."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(f"cannot read checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    missing = [k for k in ("model_name", "model_kwargs", "state_dict")
               if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise UsageError(f"{path} is not a checkpoint: a plain checkpoint file needs keys model_name, model_kwargs, "
                         f"state_dict (missing: {', '.join(missing)})")
    state = {k.removeprefix("module."): (v.float() if v.is_floating_point() else v)
             for k, v in payload["state_dict"].items()}
    return Source(payload["model_name"], dict(payload["model_kwargs"]), state, dict(payload.get("config") or {}),
                  None, f"plain checkpoint file {path}")


def read_checkpoint(path: Path) -> Source:
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    if path.is_file():
        return read_plain_checkpoint(path)
    from pipeline.checkpoint import load_for_export
    try:
        src = load_for_export(path)
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"cannot read checkpoint {path} ({type(err).__name__}: {err})") from None
    return Source(src.model_name, dict(src.model_kwargs), src.state_dict, dict(src.config or {}),
                  getattr(src, "val_batch", None), f"DeepSpeed checkpoint {src.path}")


def build_model(src: Source):
    from dst.models import create_model
    try:
        model = create_model(src.model_name, **src.model_kwargs)
    except (TypeError, ValueError) as err:
        raise UsageError(f"checkpoint names a model that cannot be built: {src.model_name} "
                         f"{src.model_kwargs}: {err}") from None
    try:
        model.load_state_dict(src.state_dict, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise UsageError(f"checkpoint weights do not fit {src.model_name}: {detail[:300]}") from None
    return model.eval()


# ---------------------------------------------------------------------------------------------------- inputs
def _tensor_from(obj: Any, what: str) -> torch.Tensor:
    if isinstance(obj, dict):
        for key in ("inputs", "images", "frames", "x"):
            if key in obj:
                return _tensor_from(obj[key], what)
        raise UsageError(f"{what}: a dict needs an 'inputs' key")
    if isinstance(obj, (tuple, list)) and obj:
        return _tensor_from(obj[0], what)
    if isinstance(obj, torch.Tensor):
        return obj
    raise UsageError(f"{what}: expected a tensor, (inputs, targets) or {{'inputs': tensor}}, got {type(obj).__name__}")


def default_sample_shape(model, config: dict) -> tuple[int, ...]:
    from dst.models.dvs import DVSNet
    data = config.get("data") or {}
    if isinstance(model, DVSNet):
        return (int(data.get("frames", 16)), 2, 128, 128)
    res = int(data.get("resolution", 224))
    return (3, res, res)


def measurement_inputs(args, model, src: Source) -> tuple[torch.Tensor, dict]:
    n = args.batch_size
    if n < 1:
        raise UsageError(f"--batch-size must be >= 1, got {n}")
    if args.data_batch is not None:
        try:
            obj = torch.load(args.data_batch, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UsageError(f"cannot read --data-batch {args.data_batch} ({type(err).__name__})") from None
        x, source = _tensor_from(obj, f"--data-batch {args.data_batch}"), f"data batch file {args.data_batch}"
    elif src.val_batch is not None:
        x, source = _tensor_from(src.val_batch, "checkpoint validation batch"), "validation batch from the checkpoint"
    else:
        if args.input_shape:
            try:
                shape = tuple(int(d) for d in args.input_shape.replace("x", ",").split(","))
            except ValueError:
                raise UsageError(f"--input-shape must be integers like 3,224,224, got {args.input_shape!r}") from None
        else:
            shape = default_sample_shape(model, src.config)
        x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(args.seed))
        source = "random Gaussian N(0, 1) input (no data given): firing rates are not those of real data"
    if x.dim() < 2 or x.shape[0] < 1:
        raise UsageError(f"measurement inputs need a batch dimension, got shape {tuple(x.shape)}")
    x = x[:n].float()
    return x, {"source": source, "shape": list(x.shape), "samples": int(x.shape[0])}


# ---------------------------------------------------------------------------------------------------- output dir
def prepare_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a directory")
        foreign = [p.name for p in out.iterdir() if p.name not in ARTIFACTS]
        if foreign:
            raise UsageError(f"--out {out} holds files that are not an export ({', '.join(sorted(foreign)[:3])}); "
                             "choose another directory")
    out.parent.mkdir(parents=True, exist_ok=True)


def publish(tmp: Path, out: Path) -> None:
    """Swap the finished temp dir into place; a previous export is replaced as a whole."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "export")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- export
def _stream_logits(model, x):
    with torch.no_grad():
        return model(x)


def export(model, x: torch.Tensor, out_dir: Path, *, with_dsnn: bool, allow_not_full_spike: bool = False) -> dict:
    """Write the artifacts of `model` (the eval-mode training model) into out_dir; return the report."""
    from dst.energy import count_ops
    from dst.export import (count_parameters, dsnn_view, fold_bn, load_fsnn, load_torchscript, save_exported,
                            save_torchscript, strip_aap, to_torchscript, unfolded_batchnorms)
    from dst.monitor import FiringRateMonitor
    from dst.verify import spike_agreement, verify_full_spike

    fsnn = strip_aap(model).eval()
    check = verify_full_spike(fsnn, x)
    if not check.ok and not allow_not_full_spike:
        raise UsageError(f"refusing to export {model.model_name}: the FSNN is {check.summary()} "
                         "(--allow-not-full-spike exports a baseline anyway)")

    z_f = _stream_logits(fsnn, x)
    with torch.no_grad():
        z_train = model(x, stream="fsnn")
    if not torch.equal(z_f, z_train):
        raise RuntimeError("stripped FSNN differs from the training model's FSNN stream: this is a bug in dst")

    with FiringRateMonitor(fsnn) as monitor:
        fsnn_ops = count_ops(fsnn, x)
    fsnn_section = {**fsnn_ops.to_dict(), "neuron_firing_rates": monitor.rates,
                    "mean_neuron_firing_rate": monitor.mean_rate}

    save_exported(fsnn, out_dir / "fsnn.pt")
    reloaded = load_fsnn(out_dir / "fsnn.pt")
    reload_equal = torch.equal(_stream_logits(reloaded, x), z_f)
    if not reload_equal:
        raise RuntimeError("fsnn.pt does not reproduce the FSNN logits: this is a bug in dst")

    folded = fold_bn(fsnn)
    z_folded = _stream_logits(folded, x)
    ts = to_torchscript(folded, x[:1])
    save_torchscript(ts, out_dir / "fsnn.ts")
    z_ts = _stream_logits(load_torchscript(out_dir / "fsnn.ts"), x)

    dsnn_section = None
    if with_dsnn:
        with FiringRateMonitor(model) as monitor:
            dsnn_ops = count_ops(model, x)  # the dual-stream model as evaluated: both heads (the shared fc twice)
        dsnn_section = {**dsnn_ops.to_dict(), "counted": "dual-stream model (AAP + both heads, fc counted twice)",
                        "neuron_firing_rates": monitor.rates, "mean_neuron_firing_rate": monitor.mean_rate}
        save_exported(dsnn_view(model), out_dir / "dsnn.pt")

    params_fsnn, params_model = count_parameters(fsnn), count_parameters(model)
    return {
        "model": {"name": model.model_name, "kwargs": model.model_kwargs, "has_aap": model.has_aap},
        "parameters": {"fsnn": params_fsnn, "dsnn": params_model if with_dsnn else None,
                       "aap": params_model - params_fsnn},
        "full_spike_check": check.to_dict(),
        "exported_despite_failed_check": not check.ok,
        "fsnn": fsnn_section,
        "dsnn": dsnn_section,
        "checks": {
            "fsnn_equals_training_stream": True,
            "fsnn_pt_reproduces_logits": reload_equal,
            "bn_folded": not unfolded_batchnorms(folded),
            "bn_fold_max_abs_logit_diff": float((z_folded - z_f).abs().max()),
            "bn_fold_spike_agreement": spike_agreement(fsnn, folded, x),
            "torchscript_max_abs_logit_diff": float((z_ts - z_folded).abs().max()),
        },
        "files": {"fsnn.pt": "state_dict without AAP + model_name/model_kwargs (dst.export.load_fsnn)",
                  "fsnn.ts": "TorchScript of the BN-folded FSNN, traced with T fixed (torch.jit.load)",
                  **({"dsnn.pt": "full dual-stream model read as the DSNN, predicts z_A (dst.export.load_dsnn)"}
                     if with_dsnn else {})},
    }


def run(args: argparse.Namespace) -> int:
    prepare_out(args.out)
    src = read_checkpoint(args.checkpoint)
    model = build_model(src)
    if args.dsnn and not model.has_aap:
        raise UsageError(f"{src.model_name} has no AAP, so there is no DSNN to export (drop --dsnn)")
    with_dsnn = model.has_aap if args.dsnn is None else args.dsnn
    x, inputs_info = measurement_inputs(args, model, src)

    tmp = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=f".{args.out.name}.tmp-"))
    try:
        with storage.writing(args.out, "the export to"):
            report = export(model, x, tmp, with_dsnn=with_dsnn, allow_not_full_spike=args.allow_not_full_spike)
            report = {"format": "dst-export-report", "version": 1, "checkpoint": str(args.checkpoint),
                      "checkpoint_kind": src.description, "inputs": inputs_info, **report,
                      "config": json.loads(json.dumps(src.config, default=str))}
            (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            publish(tmp, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fs = report["fsnn"]
    print(f"exported {src.model_name} to {args.out}: "
          f"{'full-spike ok' if report['full_spike_check']['ok'] else 'NOT full-spike (baseline)'}; "
          f"FSNN {fs['macs'] / 1e9:.4f} G MACs, {fs['acs'] / 1e9:.4f} G ACs, {fs['energy_mj']:.4f} mJ per sample"
          + (f"; DSNN {report['dsnn']['macs'] / 1e9:.4f} G MACs, {report['dsnn']['acs'] / 1e9:.4f} G ACs, "
             f"{report['dsnn']['energy_mj']:.4f} mJ" if report["dsnn"] else ""))
    return 0
