"""From a DST training model to deployable artifacts, each of which a fresh process rebuilds without dst's training
code (and, for TorchScript, without dst at all).

    fsnn = strip_aap(model)                 # a copy without the AAP: fsnn(x) == model(x, stream="fsnn"), bit for bit
    dsnn = dsnn_view(model)                 # the same model predicting from the accumulation stream: z_A
    save_exported(fsnn, "fsnn.pt"); fsnn2 = load_fsnn("fsnn.pt")     # in a fresh process: torch + dst only
    save_torchscript(to_torchscript(fold_bn(fsnn), images), "fsnn.ts")  # loads with torch.jit.load alone

The package, one job a module:
    strip.py        the FSNN (AAP deleted) and the DSNN view of a training model; parameter counts
    fold.py         Conv -> BatchNorm folding, the form a deployment target runs
    payload.py      the .pt export file: state_dict + the create_model call that rebuilds it (data only)
    torchscript.py  the traced TorchScript writer and loader
Further formats belong beside these as their own modules: a torch.export program (program.py) and the NIR graph that
neuromorphic toolchains read (nir.py). Everything public is importable from `dst.export` itself.
"""
from dst.export.fold import fold_bn, fold_conv_bn, unfolded_batchnorms
from dst.export.payload import (EXPORT_FORMAT, EXPORT_VERSION, export_payload, load_dsnn, load_exported, load_fsnn,
                                save_exported)
from dst.export.strip import StreamView, count_parameters, dsnn_view, strip_aap
from dst.export.torchscript import load_torchscript, save_torchscript, to_torchscript

__all__ = [
    "strip_aap", "StreamView", "dsnn_view", "count_parameters",
    "fold_conv_bn", "fold_bn", "unfolded_batchnorms",
    "EXPORT_FORMAT", "EXPORT_VERSION", "export_payload", "save_exported", "load_exported", "load_fsnn", "load_dsnn",
    "to_torchscript", "save_torchscript", "load_torchscript",
]
