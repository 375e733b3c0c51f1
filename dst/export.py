"""From a DST training model to deployable artifacts: the AAP-stripped FSNN, the DSNN view, BN folding, TorchScript,
and a file format that rebuilds the model with only torch + dst.

    fsnn = strip_aap(model)                 # a copy without the AAP: fsnn(x) == model(x, stream="fsnn"), bit for bit
    dsnn = dsnn_view(model)                 # the same model predicting from the accumulation stream: z_A
    save_exported(fsnn, "fsnn.pt"); fsnn2 = load_fsnn("fsnn.pt")     # in a fresh process: torch + dst only
    save_torchscript(to_torchscript(fold_bn(fsnn), images), "fsnn.ts")  # loads with torch.jit.load alone
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

import dst
from dst.models import create_model
from dst.models.base import STREAMS, DualStreamNet
from dst.neuron import MultiStepNeuron
from dst.surrogate import Surrogate, heaviside

EXPORT_FORMAT = "dst-export"
EXPORT_VERSION = 1


def _dual_stream(model: nn.Module) -> DualStreamNet:
    if not isinstance(model, DualStreamNet):
        raise TypeError(f"expected a dst DualStreamNet, got {type(model).__name__}")
    return model


def strip_aap(model: nn.Module) -> DualStreamNet:
    """The FSNN alone: a deep copy of `model` with the Auxiliary Accumulation Pathway deleted (no AAP parameters or
    buffers). Its forward returns z_F, equal bit for bit to `model(x, stream="fsnn")`, because the spike stream never
    reads the AAP. The training model is left untouched; a model without AAP comes back as a plain copy."""
    fsnn = copy.deepcopy(_dual_stream(model))
    fsnn.remove_aap()
    if hasattr(fsnn, "model_kwargs"):
        fsnn.model_kwargs = {**fsnn.model_kwargs, "aap": False}
    return fsnn


class StreamView(nn.Module):
    """One stream of a dual-stream model as a plain module: forward(x) returns that stream's logits."""

    def __init__(self, model: DualStreamNet, stream: str):
        super().__init__()
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        if stream == "dsnn" and not model.has_aap:
            raise ValueError("this model has no AAP, so it has no DSNN stream")
        self.model, self.stream = model, stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, stream=self.stream)

    def extra_repr(self) -> str:
        return f"stream={self.stream!r}"


def dsnn_view(model: nn.Module) -> StreamView:
    """The DSNN: the model with its AAP kept, predicting from the accumulation stream (z_A). Shares `model`'s
    parameters (no copy). Raises ValueError for a model without AAP."""
    return StreamView(_dual_stream(model), "dsnn")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------- BN folding
def fold_conv_bn(conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm) -> nn.modules.conv._ConvNd:
    """conv followed by bn (eval statistics) as one conv with bias. Computed in float64, stored in conv's dtype."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm over {bn.num_features} channels cannot follow a conv with {conv.out_channels}")
    dtype = conv.weight.dtype
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    if conv.bias is not None:
        shift = shift + conv.bias.detach().double() * scale
    if parametrize.is_parametrized(conv, "weight"):
        # a stored channels-last weight (dst/models/channels_last.py): the folded conv is a plain Conv2d. (Removing
        # the parametrization from a deep copy would remove it from `conv` too: the copies share their class.)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                          padding_mode=conv.padding_mode, device=conv.weight.device, dtype=dtype).train(conv.training)
    else:
        fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter((conv.weight.detach().double()
                                 * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))).to(dtype))
    fused.bias = nn.Parameter(shift.to(dtype))
    return fused


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and not m.transposed


def fold_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every Conv -> BatchNorm pair folded into one Conv with bias (the BN becomes
    Identity). Pairs are consecutive children of a Sequential (conv_bn's MultiStep, the AAP transitions) and the
    stem (`stem_conv` -> `stem_bn`, which the ResNets call in sequence). Outputs equal the unfolded model's within
    float rounding; a spike can flip where a membrane potential sits at the threshold to within that rounding."""
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, bn = module._modules[first], module._modules[second]
                if _is_conv(conv) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                    setattr(module, first, fold_conv_bn(conv, bn))
                    setattr(module, second, nn.Identity())
        conv, bn = getattr(module, "stem_conv", None), getattr(module, "stem_bn", None)
        if conv is not None and _is_conv(conv) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
            module.stem_conv, module.stem_bn = fold_conv_bn(conv, bn), nn.Identity()
    return folded


def unfolded_batchnorms(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ---------------------------------------------------------------------------------------------------- TorchScript
class _Heaviside(Surrogate):
    """Inference spike function: the same forward as every surrogate, without the autograd.Function (which tracing
    cannot serialise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return heaviside(x)


def to_torchscript(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace an eval copy of `model` on `example` (the loop over T unrolls: T is fixed, the batch size is not).
    Neurons run the plain PyTorch loop with a plain Heaviside, so the result loads with `torch.jit.load` alone."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, MultiStepNeuron):
            m.surrogate = _Heaviside(m.surrogate.alpha)
            if hasattr(m, "backend"):
                m.backend = "torch"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.jit.trace(model, example, check_trace=False)


def save_torchscript(module: torch.jit.ScriptModule, path: str | os.PathLike) -> None:
    """Serialised in memory, then written by Python: torch.jit.save's own file writer, on a full disk, throws from
    its destructor while the first error unwinds, and the process aborts (SIGABRT, seen with `dst export` onto a
    full tmpfs) where a Python write raises OSError(ENOSPC) and the caller can clean up."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit is deprecated for torch.export
        torch.jit.save(module, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def load_torchscript(path: str | os.PathLike) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")


# ---------------------------------------------------------------------------------------------------- files
def _plain(value, what: str):
    """JSON-able data only, so that the file loads with torch.load(weights_only=True)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be plain JSON-able data to be saved: {err}") from None


def export_payload(model: nn.Module) -> dict:
    """What an exported .pt file holds: the state_dict and the (name, kwargs) to rebuild the model with
    `create_model`. An FSNN (no AAP) is stored with aap=False; a StreamView("dsnn") with its full model."""
    stream = "fsnn"
    if isinstance(model, StreamView):
        stream, model = model.stream, model.model
    model = _dual_stream(model)
    if stream == "fsnn" and model.has_aap:
        raise ValueError("an FSNN export must not carry the AAP: pass strip_aap(model)")
    name, kwargs = getattr(model, "model_name", None), getattr(model, "model_kwargs", None)
    if name is None or kwargs is None:
        raise ValueError("the model was not built by dst.models.create_model (no model_name/model_kwargs)")
    kwargs = _plain({**kwargs, "aap": model.has_aap}, "model_kwargs")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "stream": stream, "model_name": name,
            "model_kwargs": kwargs, "state_dict": state, "dst_version": dst.__version__,
            "torch_version": str(torch.__version__)}


def save_exported(model: nn.Module, path: str | os.PathLike) -> None:
    """Write an FSNN (a model without AAP) or a DSNN (`dsnn_view(model)`) as a self-describing .pt file."""
    torch.save(export_payload(model), path)


def load_exported(path: str | os.PathLike, *, fold: bool = False) -> nn.Module:
    """Rebuild a saved FSNN (returns the DualStreamNet without AAP; forward gives z_F) or DSNN (returns
    StreamView; forward gives z_A) in eval mode. Reads with weights_only=True: data, never code.
    fold=True folds BN after loading (the deployable form)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not a dst export file (no format={EXPORT_FORMAT!r})")
    if payload.get("version") != EXPORT_VERSION:
        raise ValueError(f"{path}: export format version {payload.get('version')} is not {EXPORT_VERSION}")
    model = create_model(payload["model_name"], **payload["model_kwargs"])
    model.load_state_dict(payload["state_dict"], strict=True)
    model.eval()
    if fold:
        model = fold_bn(model)
    return StreamView(model, "dsnn") if payload["stream"] == "dsnn" else model


def load_fsnn(path: str | os.PathLike, *, fold: bool = False) -> DualStreamNet:
    model = load_exported(path, fold=fold)
    if isinstance(model, StreamView):
        raise ValueError(f"{path} holds a DSNN, not an FSNN")
    return model


def load_dsnn(path: str | os.PathLike, *, fold: bool = False) -> StreamView:
    model = load_exported(path, fold=fold)
    if not isinstance(model, StreamView):
        raise ValueError(f"{path} holds an FSNN, not a DSNN")
    return model
