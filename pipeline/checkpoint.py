"""Checkpoints: DeepSpeed's directory format plus our client state, with crash-safe pointers.

Layout of <run>/checkpoints/:
    epoch0003/            one DeepSpeed checkpoint per saved epoch (tag)
    latest                text file naming the newest COMPLETE tag (written to a temp name, then renamed)
    best                  text file naming the tag with the best validation metric
A process killed while saving leaves at most a partial tag directory that no pointer names, so resuming and
exporting always read a complete checkpoint. Old tags are pruned except latest, best and every K-th epoch.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from dst.models.channels_last import standard_state_dict
from pipeline import storage
from pipeline.errors import UsageError

TAG_RE = re.compile(r"^epoch(\d{4,})$")


def tag_for_epoch(epoch: int) -> str:
    return f"epoch{epoch:04d}"


def write_pointer(ckpt_dir: Path, name: str, tag: str) -> None:
    storage.write_atomically(Path(ckpt_dir) / name, f"the {name!r} pointer", lambda tmp: tmp.write_text(tag + "\n"))


def read_pointer(ckpt_dir: Path, name: str = "latest") -> str | None:
    pointer = Path(ckpt_dir) / name
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    if not (Path(ckpt_dir) / tag).is_dir():
        raise UsageError(f"{pointer} names checkpoint {tag!r}, which does not exist in {ckpt_dir}")
    return tag


def prune(ckpt_dir: Path, keep_every: int) -> None:
    """Delete epoch tags other than latest, best and every keep_every-th epoch (1-based epoch numbers)."""
    keep = {read_pointer(ckpt_dir, "latest"), read_pointer(ckpt_dir, "best")}
    for entry in Path(ckpt_dir).iterdir():
        m = TAG_RE.match(entry.name)
        if m and entry.is_dir() and entry.name not in keep and int(m.group(1)) % keep_every != 0:
            shutil.rmtree(entry, ignore_errors=True)


@dataclass
class ExportSource:
    """What export needs from a training checkpoint, as plain data."""

    state_dict: dict[str, torch.Tensor]
    model_name: str
    model_kwargs: dict[str, Any]
    config: dict[str, Any]
    tag: str
    path: Path
    val_batch: Any = None


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """A run's checkpoints dir (uses `latest`), a run dir containing checkpoints/, or one tag dir -> (dir, tag)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    if (path / "checkpoints").is_dir() and not (path / "latest").exists():
        path = path / "checkpoints"
    if (path / "latest").is_file():
        return path, read_pointer(path, "latest")
    if path.is_dir() and any(path.glob("*model_states.pt")):
        return path.parent, path.name
    raise UsageError(f"{path} is not a checkpoint: expected a 'latest' file or DeepSpeed *model_states.pt files")


# DeepSpeed 0.19 checkpoints hold tensors and builtins, except ZeRO optimizer states, which also pickle these few
# DeepSpeed types (found with torch.serialization.get_unsafe_globals_in_checkpoint on ZeRO-1/2/3 checkpoints; model
# states of every stage need none). Allowlisting exactly these lets every load use weights_only=True.
DEEPSPEED_SAFE_GLOBALS = (("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                          ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                          ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                          ("deepspeed.utils.tensor_fragment", "fragment_address"))


def deepspeed_safe_globals() -> list[Any]:
    found = []
    for module, name in DEEPSPEED_SAFE_GLOBALS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # another DeepSpeed version: the load names what it refuses
            pass
    return found


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every torch.load in this block reads with weights_only=True (tensors, builtins and DEEPSPEED_SAFE_GLOBALS).

    DeepSpeed's own loaders (engine.load_checkpoint's TorchCheckpointEngine, zero_to_fp32) pass weights_only=False
    explicitly; torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD (read at each call) overrides that, so resuming or exporting a
    checkpoint never unpickles arbitrary objects from a file someone else may have put in the run directory."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def describe_load_error(err: BaseException) -> str:
    """One line for a failed torch.load: the refused global of a weights-only load, else the first line."""
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"a weights-only load refuses its pickled global {refused.group(1)}; not written by `dst train`?"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first}"


def model_states_file(tag_dir: Path) -> Path:
    files = sorted(Path(tag_dir).glob("mp_rank_*_model_states.pt")) or sorted(Path(tag_dir).glob("*model_states.pt"))
    if not files:
        raise UsageError(f"{tag_dir}: no DeepSpeed model_states file (an incomplete checkpoint?)")
    return files[0]


def _load_module_states(tag_dir: Path, mmap: bool = False) -> dict[str, Any]:
    path = model_states_file(tag_dir)
    mmap = mmap and zipfile.is_zipfile(path)  # torch can memory-map only its zip format (DeepSpeed's default)
    try:
        # weights_only: DeepSpeed's model states (every ZeRO stage) hold only tensors and builtins (see
        # DEEPSPEED_SAFE_GLOBALS); mmap: reading the client state alone need not read the weights.
        with weights_only_loads():
            states = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # truncated, corrupted, or holding objects a weights-only load refuses
        raise UsageError(f"{path}: cannot read checkpoint ({describe_load_error(err)})") from None
    if not isinstance(states, dict):
        raise UsageError(f"{path}: not a DeepSpeed checkpoint (holds a {type(states).__name__}, not a dict)")
    return states


def read_client_state(tag_dir: Path) -> dict[str, Any]:
    """Our client state ("dst": epoch, model name/kwargs, config, ...) of a tag, without reading the weights."""
    client = _load_module_states(tag_dir, mmap=True).get("dst")
    if not isinstance(client, dict) or "model_name" not in client:
        raise UsageError(f"{tag_dir}: no DST client state (model_name, model_kwargs): not written by `dst train`")
    return client


def load_for_export(path: str | Path) -> ExportSource:
    ckpt_dir, tag = resolve_checkpoint(path)
    tag_dir = ckpt_dir / tag
    states = _load_module_states(tag_dir)
    client = states.get("dst", {})
    if "model_name" not in client:
        raise UsageError(f"{tag_dir}: no DST client state (model_name, model_kwargs): not written by `dst train`")
    # With ZeRO (stage >= 1) the fp32 master weights live in the optimizer partitions: consolidate those.
    if client.get("zero_stage", 0) > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        try:
            with weights_only_loads():  # zero_to_fp32 itself would unpickle with weights_only=False
                state_dict = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        except Exception as err:
            raise UsageError(f"{tag_dir}: cannot consolidate ZeRO checkpoint ({describe_load_error(err)})") from None
        # it names tensors by parameter: channels-last conv weights come back in their stored [O, kh, kw, I] form
        state_dict = standard_state_dict(state_dict)
    else:
        state_dict = states["module"]
    state_dict = {k.removeprefix("module."): (v.float() if v.is_floating_point() else v)
                  for k, v in state_dict.items()}
    return ExportSource(state_dict=state_dict, model_name=client["model_name"],
                        model_kwargs=dict(client["model_kwargs"]), config=client.get("config", {}),
                        tag=tag, path=tag_dir, val_batch=_load_val_batch(ckpt_dir.parent / "val_batch.pt"))


def _load_val_batch(path: Path) -> dict | None:
    """The validation inputs `dst train` saved next to its checkpoints (None when absent)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(f"{path}: cannot read the saved validation batch ({type(err).__name__}: {err})") from None

