"""`dst export`: a training checkpoint -> the AAP-stripped FSNN (+ DSNN), verified full-spike, with an op/energy report.

    dst export --checkpoint runs/demo/checkpoints --out runs/demo/export [--data-batch val_batch.pt] [--no-dsnn]

Writes into OUT (built in a temporary directory next to it and renamed at the end, so OUT is complete or absent):
    fsnn.pt      state_dict without the AAP + the model name/kwargs to rebuild it (`dst.export.load_fsnn`)
    fsnn.ts      TorchScript of the BN-folded FSNN (`torch.jit.load` alone)
    fsnn.nir     the BN-folded FSNN as a NIR graph (`nir.read`; what neuromorphic toolchains read), executed from
                 the file by a third-party consumer (dst/export/nir_run.py) against the FSNN: report.json's `nir`
    dsnn.pt      the full dual-stream model, read as the DSNN (`dst.export.load_dsnn`); not with --no-dsnn
    report.json  parameters, MACs, ACs, energy, per-layer firing rates, the full-spike check, and what was measured:
                 each artifact loaded back from disk against the training model's stream (`artifacts`), the stripped
                 FSNN against the training stream and the BN folding (`checks`)
Each file is an `Artifact` (a writer and a check that reads the file back) in ARTIFACTS; a new format is one more.
--checkpoint is a run's checkpoints directory (DeepSpeed format, uses `latest`), one tag directory, or a plain
checkpoint file: a torch file holding {"model_name", "model_kwargs", "state_dict", "config" (optional)}.
By default the DSNN is exported when the model has an AAP; --dsnn requires it, --no-dsnn skips it. --format chooses
the FSNN's formats besides fsnn.pt (default: ts,nir). --log-to-mlflow logs the published files to the training run.
Refuses (exit 2, one line, nothing written) an unreadable checkpoint, a model without AAP asked for a DSNN (--dsnn),
an FSNN that fails the full-spike check (e.g. SEW-ResNet ADD) unless --allow-not-full-spike says it is a baseline, and
a stripped FSNN, fsnn.pt or dsnn.pt whose logits differ at all from the training model's (a bug in dst).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch

from pipeline import storage
from pipeline.errors import UsageError

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
    parser.add_argument("--format", default=",".join(FORMATS), type=formats,
                        help=f"formats of the FSNN besides fsnn.pt, comma-separated, from {', '.join(FORMATS)} "
                             f"(default: all); 'pt' alone writes fsnn.pt (and dsnn.pt) only")
    parser.add_argument("--log-to-mlflow", action="store_true",
                        help="log the published files to the training run's MLflow run (its id from RUN/metrics.json "
                             "next to the checkpoints, the tracking URI from the run's config)")


def formats(text: str) -> tuple[str, ...]:
    """--format's value: a comma-separated subset of FORMATS ('pt' names fsnn.pt, which is always written)."""
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in chosen if f not in (*FORMATS, "pt")]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(unknown) or repr(text)}; choose from pt, "
                                         f"{', '.join(FORMATS)}")
    return tuple(f for f in chosen if f != "pt")


# ---------------------------------------------------------------------------------------------------- reading
@dataclass
class Source:
    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    val_batch: Any = None
    description: str = ""
    run_dir: Path | None = None       # the training run's directory (RUN/checkpoints/<tag> -> RUN), if known


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
                  getattr(src, "val_batch", None), f"DeepSpeed checkpoint {src.path}", Path(src.path).parent.parent)


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
        foreign = [p.name for p in out.iterdir() if p.name not in OUTPUT_FILES]
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
def logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def logit_diff(z: torch.Tensor, reference: torch.Tensor) -> dict:
    """What a comparison measured: the largest |z - reference| over the batch, and the batch size."""
    if z.shape != reference.shape:
        raise RuntimeError(f"logits of shape {tuple(z.shape)} cannot be compared with {tuple(reference.shape)}")
    return {"max_abs_logit_diff": float((z - reference).abs().max()), "samples": int(reference.shape[0])}


def require_exact(what: str, reference: str, measured: dict) -> None:
    """Stripping the AAP and saving/loading a .pt file change no arithmetic, so any difference is a bug in dst, not
    a property of the model: refuse the export (nothing is published) and say what was measured."""
    if measured["max_abs_logit_diff"] != 0.0:
        raise UsageError(f"refusing to export: {what} differs from {reference} by up to "
                         f"{measured['max_abs_logit_diff']:.3g} in the logits of {measured['samples']} samples "
                         "(this is a bug in dst)")


@dataclass
class ExportContext:
    """What every artifact's writer and check reads, each computed once: the eval-mode training model, its stripped
    FSNN, the measurement inputs, and (on first use) the reference logits and the BN-folded FSNN."""
    model: Any             # the training model, a DualStreamNet in eval mode
    fsnn: Any              # strip_aap(model)
    x: torch.Tensor        # the measurement inputs
    with_dsnn: bool
    formats: tuple[str, ...] = ()          # the optional formats wanted (FORMATS)
    allow_not_full_spike: bool = False

    @cached_property
    def reference(self) -> torch.Tensor:
        """The training model's FSNN stream on x: what every FSNN artifact is measured against."""
        with torch.no_grad():
            return self.model(self.x, stream="fsnn")

    @cached_property
    def dsnn_reference(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model(self.x, stream="dsnn")

    @cached_property
    def folded(self):
        from dst.export import fold_bn
        return fold_bn(self.fsnn)

    @cached_property
    def folded_logits(self) -> torch.Tensor:
        return logits(self.folded, self.x)


@dataclass(frozen=True)
class Artifact:
    """One file of an export. write(ctx, path) writes it; check(ctx, path) loads it back from disk and returns what
    it measured: at least the reference it compared against and that comparison's max_abs_logit_diff and samples.
    exact: any difference is a bug in dst and refuses the export. A new format is one more entry in ARTIFACTS."""
    filename: str
    description: str
    write: Callable[[ExportContext, Path], None]
    check: Callable[[ExportContext, Path], dict]
    exact: bool = False
    wanted: Callable[[ExportContext], bool] = lambda ctx: True


FSNN_STREAM, DSNN_STREAM = "the training model's FSNN stream", "the training model's DSNN stream"


def write_fsnn_pt(ctx: ExportContext, path: Path) -> None:
    from dst.export import save_exported
    save_exported(ctx.fsnn, path)


def check_fsnn_pt(ctx: ExportContext, path: Path) -> dict:
    from dst.export import load_fsnn
    return {"reference": FSNN_STREAM, **logit_diff(logits(load_fsnn(path), ctx.x), ctx.reference)}


def write_fsnn_ts(ctx: ExportContext, path: Path) -> None:
    from dst.export import save_torchscript, to_torchscript
    save_torchscript(to_torchscript(ctx.folded, ctx.x[:1]), path)


def check_fsnn_ts(ctx: ExportContext, path: Path) -> dict:
    from dst.export import load_torchscript
    z = logits(load_torchscript(path), ctx.x)  # the whole batch, though traced on one sample: no batch size is fixed
    return {"reference": FSNN_STREAM, **logit_diff(z, ctx.reference),  # BN folding's rounding included
            "max_abs_logit_diff_vs_bn_folded_fsnn": logit_diff(z, ctx.folded_logits)["max_abs_logit_diff"]}


def write_fsnn_nir(ctx: ExportContext, path: Path) -> None:
    from dst.export.nir import to_nir, write_nir
    try:
        graph, _ = to_nir(ctx.folded, tuple(ctx.x.shape[1:]), allow_not_full_spike=ctx.allow_not_full_spike)
    except (TypeError, ValueError) as err:
        raise UsageError(f"refusing to export {ctx.model.model_name} to NIR: {err} (a --format without nir skips fsnn.nir)") \
            from None
    write_nir(graph, path)


NIR_LOGIT_TOLERANCE = 1e-4     # relative to max(1, the largest |logit|): float summation order, nothing more


def require_nir_agreement(model_name: str, run: dict) -> None:
    """The NIR file, executed by the consumer, must predict what the FSNN predicts (top-1 on every sample) with
    logits equal within float tolerance; otherwise the file does not hold the FSNN, and the export is refused."""
    tolerance = NIR_LOGIT_TOLERANCE * max(1.0, run["max_abs_logit"])
    if run["argmax_agreement"] != 1.0 or run["max_abs_logit_diff_vs_bn_folded_fsnn"] > tolerance:
        raise UsageError(f"refusing to export {model_name}: fsnn.nir, run from the file by {run['consumer']}, "
                         f"disagrees with the FSNN: top-1 agreement {run['argmax_agreement']:.3f} on "
                         f"{run['samples']} samples, logits up to {run['max_abs_logit_diff_vs_bn_folded_fsnn']:.3g} "
                         f"apart (tolerance {tolerance:.3g}), {run['spike_mismatches']} of {run['spikes_compared']} "
                         "spikes differ (a --format without nir skips fsnn.nir)")


def check_fsnn_nir(ctx: ExportContext, path: Path) -> dict:
    """The file read back by nir.read and stepped by a third-party consumer, against the BN-folded FSNN (the
    network the file holds: spikes must agree bit for bit) and the training model's FSNN stream."""
    from dst.export.nir import graph_summary, run_and_compare
    try:
        result = run_and_compare(path, ctx.folded, ctx.x)
    except ValueError as err:
        raise UsageError(f"refusing to export {ctx.model.model_name}: fsnn.nir cannot be run: {err}") from None
    graph = result.pop("graph")
    require_nir_agreement(ctx.model.model_name, result)
    return {"reference": FSNN_STREAM, **logit_diff(result.pop("logits"), ctx.reference), **graph_summary(graph),
            "dt": float(graph.metadata["dt"]), "dt_convention": str(graph.metadata["dt_convention"]),
            "readout": str(graph.metadata["readout"]),
            "inexact_decays": {k: float(v) for k, v in dict(graph.metadata.get("inexact_decays", {})).items()},
            "execution": result}


def write_dsnn_pt(ctx: ExportContext, path: Path) -> None:
    from dst.export import dsnn_view, save_exported
    save_exported(dsnn_view(ctx.model), path)


def check_dsnn_pt(ctx: ExportContext, path: Path) -> dict:
    from dst.export import load_dsnn
    return {"reference": DSNN_STREAM, **logit_diff(logits(load_dsnn(path), ctx.x), ctx.dsnn_reference)}


ARTIFACTS = (
    Artifact("fsnn.pt", "state_dict without AAP + model_name/model_kwargs (dst.export.load_fsnn)",
             write_fsnn_pt, check_fsnn_pt, exact=True),
    Artifact("fsnn.ts", "TorchScript of the BN-folded FSNN, traced with T fixed (torch.jit.load)",
             write_fsnn_ts, check_fsnn_ts, wanted=lambda ctx: "ts" in ctx.formats),
    Artifact("fsnn.nir", "NIR graph of the BN-folded FSNN, one step per time step at dt = 1 (nir.read)",
             write_fsnn_nir, check_fsnn_nir, wanted=lambda ctx: "nir" in ctx.formats),
    Artifact("dsnn.pt", "full dual-stream model read as the DSNN, predicts z_A (dst.export.load_dsnn)",
             write_dsnn_pt, check_dsnn_pt, exact=True, wanted=lambda ctx: ctx.with_dsnn),
)
FORMATS = ("ts", "nir")
REPORT = "report.json"
OUTPUT_FILES = (*(a.filename for a in ARTIFACTS), REPORT)


def ops_section(model, x: torch.Tensor, **extra) -> dict:
    """MACs, ACs, energy and per-layer rows of `model` on x, with the firing rate of every neuron."""
    from dst.energy import count_ops
    from dst.monitor import FiringRateMonitor
    with FiringRateMonitor(model) as monitor:
        ops = count_ops(model, x)
    return {**ops.to_dict(), **extra, "neuron_firing_rates": monitor.rates,
            "mean_neuron_firing_rate": monitor.mean_rate}


def export(model, x: torch.Tensor, out_dir: Path, *, with_dsnn: bool, allow_not_full_spike: bool = False,
           formats: tuple[str, ...] = FORMATS) -> dict:
    """Write the artifacts of `model` (the eval-mode training model) into out_dir, each loaded back and measured
    against the training model; return the report."""
    from dst.export import count_parameters, strip_aap, unfolded_batchnorms
    from dst.verify import spike_agreement, verify_full_spike

    ctx = ExportContext(model, strip_aap(model).eval(), x, with_dsnn, formats, allow_not_full_spike)
    check = verify_full_spike(ctx.fsnn, x)
    if not check.ok and not allow_not_full_spike:
        raise UsageError(f"refusing to export {model.model_name}: the FSNN is {check.summary()} "
                         "(--allow-not-full-spike exports a baseline anyway)")
    stripped = logit_diff(logits(ctx.fsnn, x), ctx.reference)
    require_exact("the stripped FSNN", FSNN_STREAM, stripped)

    fsnn_section = ops_section(ctx.fsnn, x)
    # The DSNN is counted as the dual-stream model is evaluated: the AAP and both heads (the shared fc twice).
    dsnn_section = (ops_section(model, x, counted="dual-stream model (AAP + both heads, fc counted twice)")
                    if with_dsnn else None)

    artifacts = [a for a in ARTIFACTS if a.wanted(ctx)]
    measured = {}
    for artifact in artifacts:
        path = out_dir / artifact.filename
        artifact.write(ctx, path)
        result = measured[artifact.filename] = artifact.check(ctx, path)
        if artifact.exact:
            require_exact(artifact.filename, result["reference"], result)

    params_fsnn, params_model = count_parameters(ctx.fsnn), count_parameters(model)
    return {
        "model": {"name": model.model_name, "kwargs": model.model_kwargs, "has_aap": model.has_aap},
        "parameters": {"fsnn": params_fsnn, "dsnn": params_model if with_dsnn else None,
                       "aap": params_model - params_fsnn},
        "full_spike_check": check.to_dict(),
        "exported_despite_failed_check": not check.ok,
        "fsnn": fsnn_section,
        "dsnn": dsnn_section,
        "checks": {
            "fsnn_vs_training_stream": stripped,
            "bn_fold": {"unfolded_batchnorms": unfolded_batchnorms(ctx.folded),
                        **logit_diff(ctx.folded_logits, ctx.reference),
                        "spike_agreement": spike_agreement(ctx.fsnn, ctx.folded, x)},
        },
        "artifacts": measured,
        # The NIR file's own section (what it holds and how the third-party consumer ran it), None without it.
        "nir": measured.get("fsnn.nir"),
        "files": {a.filename: a.description for a in artifacts},
    }


def mlflow_run_of(src: Source) -> tuple[str, str]:
    """(tracking URI, run id) of the training run a DeepSpeed checkpoint belongs to: the run id from the run
    directory's metrics.json (RUN/checkpoints/<tag> -> RUN/metrics.json), the URI from the run's config."""
    from pipeline.tracking import tracking_uri
    if src.run_dir is None:
        raise UsageError("--log-to-mlflow needs a training run's checkpoint (a plain checkpoint file has no run)")
    metrics = src.run_dir / "metrics.json"
    try:
        run_id = json.loads(metrics.read_text())["final"]["mlflow_run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        run_id = None
    if not run_id:
        raise UsageError(f"--log-to-mlflow: {metrics} names no MLflow run (final.mlflow_run_id)")
    return tracking_uri((src.config.get("tracking") or {}).get("uri")), str(run_id)


def log_to_mlflow(target: tuple[str, str], out: Path, files: list[str]) -> None:
    """Log the published files under `export/` of the training run. The export is already complete: a tracking
    store that fails now costs a warning, not the export."""
    from mlflow.tracking import MlflowClient
    from pipeline.tracking import _quiet_mlflow_env, redact_uri
    _quiet_mlflow_env()
    uri, run_id = target
    try:
        client = MlflowClient(tracking_uri=uri)
        for name in files:
            client.log_artifact(run_id, str(out / name), "export")
    except Exception as err:
        print(f"dst export: warning: the export is complete in {out}, but logging it to MLflow run {run_id} at "
              f"{redact_uri(uri)} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
              file=sys.stderr)
        return
    print(f"logged {', '.join(files)} to MLflow run {run_id} (artifacts under export/)")


def run(args: argparse.Namespace) -> int:
    prepare_out(args.out)
    src = read_checkpoint(args.checkpoint)
    target = mlflow_run_of(src) if args.log_to_mlflow else None
    model = build_model(src)
    if args.dsnn and not model.has_aap:
        raise UsageError(f"{src.model_name} has no AAP, so there is no DSNN to export (drop --dsnn)")
    with_dsnn = model.has_aap if args.dsnn is None else args.dsnn
    x, inputs_info = measurement_inputs(args, model, src)

    tmp = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=f".{args.out.name}.tmp-"))
    try:
        with storage.writing(args.out, "the export to"):
            report = export(model, x, tmp, with_dsnn=with_dsnn, allow_not_full_spike=args.allow_not_full_spike,
                            formats=args.format)
            report = {"format": "dst-export-report", "version": 1, "checkpoint": str(args.checkpoint),
                      "checkpoint_kind": src.description, "inputs": inputs_info, **report,
                      "config": json.loads(json.dumps(src.config, default=str))}
            (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
            publish(tmp, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fs = report["fsnn"]
    print(f"exported {src.model_name} to {args.out}: "
          f"{'full-spike ok' if report['full_spike_check']['ok'] else 'NOT full-spike (baseline)'}; "
          f"FSNN {fs['macs'] / 1e9:.4f} G MACs, {fs['acs'] / 1e9:.4f} G ACs, {fs['energy_mj']:.4f} mJ per sample"
          + (f"; DSNN {report['dsnn']['macs'] / 1e9:.4f} G MACs, {report['dsnn']['acs'] / 1e9:.4f} G ACs, "
             f"{report['dsnn']['energy_mj']:.4f} mJ" if report["dsnn"] else ""))
    nir_check = report["artifacts"].get("fsnn.nir")
    if nir_check is not None:
        run = nir_check["execution"]
        print(f"fsnn.nir: {nir_check['nodes']} nodes, {nir_check['edges']} edges; run from the file by "
              f"{run['consumer']}: {run['spike_mismatches']} of {run['spikes_compared']} spikes differ, logits within "
              f"{nir_check['max_abs_logit_diff']:.3g} of the training model's FSNN stream")
    if target is not None:
        log_to_mlflow(target, args.out, sorted(report["files"]) + [REPORT])
    return 0
