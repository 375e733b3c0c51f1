"""The dst export file (.pt): a state_dict plus the (model_name, model_kwargs) that rebuild the network with
`dst.models.create_model`, so that a fresh process with only torch + dst loads it.

It holds data only (tensors and plain JSON-able values) and is read with torch.load(weights_only=True): loading an
export never runs code from the file. `format` and `version` let a reader refuse a file it does not understand.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

import dst
from dst.export.fold import fold_bn
from dst.export.strip import StreamView, _dual_stream
from dst.models import create_model
from dst.models.base import DualStreamNet

EXPORT_FORMAT = "dst-export"
EXPORT_VERSION = 1


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
