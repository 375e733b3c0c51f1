"""Training-memory options: how a built model runs in training, applied after `create_model` (as torchtitan's
`parallelize` applies its activation checkpointing to a built model), never part of what its weights mean.

    model = create_model("fsnn_resnet18", T=4)
    apply_memory_options(model, MemoryOptions(activation_checkpointing="blocks"))

activation_checkpointing:
  "none"    (default) every activation a backward needs is kept from the forward.
  "blocks"  each residual block (`model.blocks` of the ResNets; each entry of `model.stages` of the DVS nets) runs
            under `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)` while the model trains with grad
            enabled: only the block's inputs are kept, and backward runs the block's forward again before its
            backward. In eval mode, under no_grad/inference_mode and while tracing (torch.compile, torch.export,
            TorchScript) the block runs plainly.

What does not change: the module tree and its names, `state_dict()` keys (no `_checkpoint_wrapped_module.` prefix:
the block's `forward` is replaced on the instance, nothing is wrapped), forward outputs, and gradients (the fused
kernels' forwards are deterministic, so the recomputation reproduces every saved tensor bit for bit). BatchNorm's
running statistics are updated once per step as without the option: the recomputation runs with the block's buffers
restored afterwards. A forward hook on a module inside a block sees the recomputation as a second call in training
(the firing-rate monitor runs in eval, where nothing is recomputed).

Measured trade (fsnn_resnet18 with the AAP, CPU): benchmarks/results/activation-checkpointing.md.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dst.kernels.dispatch import is_tracing

ACTIVATION_CHECKPOINTING = ("none", "blocks")
BLOCK_LISTS = ("blocks", "stages")  # the ModuleList attribute that holds a model's residual blocks


@dataclass(frozen=True)
class MemoryOptions:
    activation_checkpointing: str = "none"

    def __post_init__(self):
        if self.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
            raise ValueError(f"activation_checkpointing must be one of {ACTIVATION_CHECKPOINTING}, "
                             f"got {self.activation_checkpointing!r}")


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) of each residual block, the unit activation checkpointing recomputes."""
    for attr in BLOCK_LISTS:
        blocks = getattr(model, attr, None)
        if isinstance(blocks, nn.ModuleList):
            return [(f"{attr}.{i}", block) for i, block in enumerate(blocks)]
    raise ValueError(f"{type(model).__name__} has no residual blocks to checkpoint "
                     f"(no nn.ModuleList named {' or '.join(BLOCK_LISTS)})")


def apply_memory_options(model: nn.Module, options: MemoryOptions) -> nn.Module:
    """Make `model` run with `options`, in place; returns it. Applying other options later replaces these."""
    for _, block in residual_blocks(model):
        if options.activation_checkpointing == "blocks":
            block.forward = CheckpointedForward(block)
        elif isinstance(block.__dict__.get("forward"), CheckpointedForward):
            del block.forward
    return model


def checkpointed_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks that run under activation checkpointing in training."""
    return [name for name, block in residual_blocks(model)
            if isinstance(block.__dict__.get("forward"), CheckpointedForward)]


class CheckpointedForward:
    """A block's forward as an instance attribute: checkpointed in training with grad enabled, plain otherwise.
    A plain class holding its block (not a closure), so deepcopy and pickle of the model give copies that checkpoint
    their own block."""

    def __init__(self, block: nn.Module):
        self.block = block

    def __call__(self, *args, **kwargs):
        block = self.block
        forward = type(block).forward.__get__(block)  # the class's forward: recomputation does not recurse here
        if not (block.training and torch.is_grad_enabled()) or is_tracing():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False,
                          context_fn=functools.partial(_recompute_keeps_buffers, block), **kwargs)


def _recompute_keeps_buffers(block: nn.Module):
    """checkpoint's (forward context, recomputation context)."""
    return contextlib.nullcontext(), _buffers_restored(block)


@contextlib.contextmanager
def _buffers_restored(module: nn.Module):
    """BatchNorm updates its running statistics (and num_batches_tracked) on every train-mode call, so the
    recomputation would apply a step's momentum twice; the block's buffers are put back as they were before it."""
    saved = [(buf, buf.clone()) for buf in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)
