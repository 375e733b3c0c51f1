"""Training steps of the models the train-step and memory benchmarks compare (forward, loss, backward, SGD step).

ours      dst's fsnn_resnet18 without the AAP (connect IAND, IF neurons, T steps), DST loss
ours-aap  the same with the AAP (DST: both streams, loss CE(z_F) + CE(z_A))
sj        SpikingJelly 2.0's sew_resnet18 with the same connect function (cnf='IAND'), IFNode(ATan, detach_reset),
          multi-step mode on the image repeated T times, cross-entropy on the time-averaged output
Variants of ours (to check what pays rather than assume it): channels-last memory format, bfloat16 autocast, and
the reference neuron loop (backend="torch") to show what the fused kernels bring to a whole step.
All use SGD(lr=0.1, momentum=0.9, weight_decay=1e-5), the paper's recipe.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch.nn import functional as F

from common import import_spikingjelly

SGD = dict(lr=0.1, momentum=0.9, weight_decay=1e-5)


def _batch(batch: int, res: int, device: str, channels_last: bool = False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, res, res, generator=g).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)
    return x, y


def ours_step(T: int, batch: int, res: int, device: str, aap: bool = False, channels_last: bool = False,
              bf16: bool = False, backend: str = "auto") -> tuple[Callable[[], float], torch.nn.Module]:
    from dst.loss import DSTLoss
    from dst.models import create_model
    torch.manual_seed(0)
    model = create_model("fsnn_resnet18", T=T, connect="IAND", aap=aap, neuron="if",
                         neuron_kwargs={"backend": backend}).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), **SGD)
    loss_fn = DSTLoss()
    x, y = _batch(batch, res, device, channels_last)
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


def sj_step(T: int, batch: int, res: int, device: str, bf16: bool = False) -> tuple[Callable[[], float], torch.nn.Module]:
    import_spikingjelly()
    from spikingjelly.activation_based import functional, neuron, surrogate
    from spikingjelly.activation_based.model import sew_resnet
    torch.manual_seed(0)
    model = sew_resnet.sew_resnet18(cnf="IAND", spiking_neuron=neuron.IFNode, surrogate_function=surrogate.ATan(),
                                    detach_reset=True).to(device)
    functional.set_step_mode(model, "m")
    model.train()
    opt = torch.optim.SGD(model.parameters(), **SGD)
    x, y = _batch(batch, res, device)
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
    "ours-channels-last": lambda T, b, r, d: ours_step(T, b, r, d, channels_last=True),
    "ours-bf16": lambda T, b, r, d: ours_step(T, b, r, d, bf16=True),
    "sj-bf16": lambda T, b, r, d: sj_step(T, b, r, d, bf16=True),
    "ours-reference-neurons": lambda T, b, r, d: ours_step(T, b, r, d, backend="torch"),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
