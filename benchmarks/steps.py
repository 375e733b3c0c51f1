"""Training steps of the models the train-step and memory benchmarks compare (forward, loss, backward, SGD step).

ours      dst's fsnn_resnet18 without the AAP (connect IAND, IF neurons, T steps), DST loss, as the model is built by
          default (channels-last: the image is put in channels-last order on entry)
ours-aap  the same with the AAP (DST: both streams, loss CE(z_F) + CE(z_A))
sj        SpikingJelly 2.0's sew_resnet18 with the same connect function (cnf='IAND'), IFNode(ATan, detach_reset),
          multi-step mode on the image repeated T times, cross-entropy on the time-averaged output; as built by
          default (NCHW)
Variants (to check what pays rather than assume it, and to compare like with like): ours in NCHW (channels_last=False)
against sj, SpikingJelly converted to channels-last against ours, bfloat16 autocast for both, and ours with the
reference neuron loop (backend="torch") to show what the fused kernels bring to a whole step, and ours with the stem's
neuron and max pool run as two modules or as one fused kernel (fused_stem=False / True; the default fuses on CPU
only, dst/kernels/spike_pool.py) to show what the fused stem brings.
Memory options (dst/memory_options.py): ours-ckpt and ours-aap-ckpt run each residual block under activation
checkpointing; the memory benchmark lists ours-ckpt, train_step.py times them only when asked (MEMORY_OPTION_STEPS).
All use SGD(lr=0.1, momentum=0.9, weight_decay=1e-5), the paper's recipe.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch.nn import functional as F

from common import import_spikingjelly

SGD = dict(lr=0.1, momentum=0.9, weight_decay=1e-5)


def _batch(batch: int, res: int, device: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, res, res, generator=g).to(device)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)
    return x, y


def ours_step(T: int, batch: int, res: int, device: str, aap: bool = False, channels_last: bool = True,
              bf16: bool = False, backend: str = "auto",
              fused_stem: bool | None = None,
              activation_checkpointing: str = "none") -> tuple[Callable[[], float], torch.nn.Module]:
    from dst.loss import DSTLoss
    from dst.memory_options import MemoryOptions, apply_memory_options
    from dst.models import create_model
    torch.manual_seed(0)
    model = create_model("fsnn_resnet18", T=T, connect="IAND", aap=aap, neuron="if",
                         neuron_kwargs={"backend": backend}, channels_last=channels_last,
                         fused_stem=fused_stem).to(device)
    apply_memory_options(model, MemoryOptions(activation_checkpointing=activation_checkpointing))
    model.train()
    opt = torch.optim.SGD(model.parameters(), **SGD)
    loss_fn = DSTLoss()
    x, y = _batch(batch, res, device)
    autocast = (lambda: torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)) if bf16 \
        else contextlib.nullcontext

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast():
            logits = model(x)
            loss = loss_fn(logits, y).total
        loss.backward()
        opt.step()
        return loss.detach()
    return step, model


def sj_step(T: int, batch: int, res: int, device: str, bf16: bool = False,
            channels_last: bool = False) -> tuple[Callable[[], float], torch.nn.Module]:
    import_spikingjelly()
    from spikingjelly.activation_based import functional, neuron, surrogate
    from spikingjelly.activation_based.model import sew_resnet
    torch.manual_seed(0)
    model = sew_resnet.sew_resnet18(cnf="IAND", spiking_neuron=neuron.IFNode, surrogate_function=surrogate.ATan(),
                                    detach_reset=True).to(device)
    functional.set_step_mode(model, "m")
    if channels_last:  # weights and input channels-last: every conv (through SeqToANNContainer) then runs so
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), **SGD)
    x, y = _batch(batch, res, device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)) if bf16 \
        else contextlib.nullcontext

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        functional.reset_net(model)
        with autocast():
            out = model(x.unsqueeze(0).repeat(T, 1, 1, 1, 1))   # [T, N, classes]
            loss = F.cross_entropy(out.mean(0).float(), y)
        loss.backward()
        opt.step()
        return loss.detach()
    return step, model


STEPS = {
    "ours": lambda T, b, r, d: ours_step(T, b, r, d),
    "ours-aap": lambda T, b, r, d: ours_step(T, b, r, d, aap=True),
    "sj": sj_step,
    "ours-nchw": lambda T, b, r, d: ours_step(T, b, r, d, channels_last=False),
    "sj-channels-last": lambda T, b, r, d: sj_step(T, b, r, d, channels_last=True),
    "ours-bf16": lambda T, b, r, d: ours_step(T, b, r, d, bf16=True),
    "sj-bf16": lambda T, b, r, d: sj_step(T, b, r, d, bf16=True),
    "ours-reference-neurons": lambda T, b, r, d: ours_step(T, b, r, d, backend="torch"),
    "ours-unfused-stem": lambda T, b, r, d: ours_step(T, b, r, d, fused_stem=False),
    "ours-fused-stem": lambda T, b, r, d: ours_step(T, b, r, d, fused_stem=True),
    "ours-ckpt": lambda T, b, r, d: ours_step(T, b, r, d, activation_checkpointing="blocks"),
    "ours-aap-ckpt": lambda T, b, r, d: ours_step(T, b, r, d, aap=True, activation_checkpointing="blocks"),
}
MEMORY_OPTION_STEPS = ("ours-ckpt", "ours-aap-ckpt")  # not in train_step.py's default contestants


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
