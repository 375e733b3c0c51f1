"""Synaptic operation counts and energy, measured with forward hooks (PAPER.md, "Energy model").

A synaptic layer (Conv/Linear) does `dense` = outputs x fan-in multiply-accumulates per call. When its input on that
call is binary (only 0/1), only the inputs that spiked cost anything, and each costs an accumulate: ACs = dense x
(input firing rate = share of non-zero inputs). Otherwise the layer does `dense` MACs. The classifier head (`fc`) reads
time-averaged rates, so it always counts as MACs (also when every rate happens to be 0 or 1).
BN folds into the preceding conv (0 ops); pooling, neurons, connect functions and the AAP's additions are not synaptic
operations (0 ops). A layer run on [T*N, ...] does T times the work of one step: counts are per sample (one image or
one frame sequence, all T steps summed), like the authors' table, so divide-by-N happens here, not in the model.

    report = count_ops(model, images)     # report.macs, report.acs, report.energy_mj, report.rows
E = mac_pj x MACs + ac_pj x ACs, with the 45 nm figures 4.6 pJ and 0.9 pJ by default (`EnergyModel`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dst.verify import SynapticHooks, batches, head_modules, is_binary, run_model, synaptic_kind


@dataclass(frozen=True)
class EnergyModel:
    mac_pj: float = 4.6   # one multiply-accumulate (32-bit float, 45 nm)
    ac_pj: float = 0.9    # one accumulate

    def energy_mj(self, macs: float, acs: float) -> float:
        return (self.mac_pj * macs + self.ac_pj * acs) * 1e-9


@dataclass
class LayerOps:
    layer: str
    kind: str                  # conv | linear
    op: str                    # MAC | AC | mixed (a layer called on binary and non-binary inputs, e.g. a shared one)
    input_firing_rate: float   # share of non-zero input elements (the mean, for binary input)
    binary_input: bool         # every call saw only 0/1
    calls: int                 # calls per forward (a head shared by both streams runs twice)
    dense_ops: float           # per sample, all calls and time steps
    macs: float                # per sample
    acs: float                 # per sample


@dataclass
class OpsReport:
    macs: float                # per sample
    acs: float                 # per sample
    energy_mj: float           # per sample
    rows: list[LayerOps]
    samples: int
    energy_model: EnergyModel = field(default_factory=EnergyModel)

    def to_dict(self) -> dict:
        return {"macs": self.macs, "acs": self.acs, "energy_mj": self.energy_mj, "samples": self.samples,
                "energy_model": asdict(self.energy_model), "layers": [asdict(r) for r in self.rows]}

    def summary(self) -> str:
        return f"{self.macs / 1e9:.4f} G MACs, {self.acs / 1e9:.4f} G ACs, {self.energy_mj:.4f} mJ per sample"


def dense_ops(module: nn.Module, y: torch.Tensor) -> int:
    """Multiply-accumulates of one dense call: every output element times its fan-in."""
    if isinstance(module, nn.Linear):
        return y.numel() * module.in_features
    return y.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def count_ops(model: nn.Module, inputs: torch.Tensor, *, energy: EnergyModel | None = None,
              batch_size: int | None = None) -> OpsReport:
    """Run `model(inputs)` (in chunks of `batch_size` samples, under no_grad) and count its synaptic operations per
    sample. `inputs` is a batch: images [N, C, H, W] or frames [N, T, 2, H, W]; N = inputs.shape[0]."""
    energy = energy or EnergyModel()
    heads = head_modules(model)
    acc: dict[str, dict] = {}

    def on_call(name, module, x, y):
        e = acc.setdefault(name, {"kind": synaptic_kind(module), "calls": 0, "binary_calls": 0, "dense": 0,
                                  "macs": 0, "acs": 0.0, "nonzero": 0, "numel": 0})
        dense = dense_ops(module, y)
        nonzero, numel = int((x != 0).sum()), x.numel()
        e["calls"] += 1
        e["dense"] += dense
        e["nonzero"] += nonzero
        e["numel"] += numel
        if id(module) not in heads and is_binary(x):
            e["binary_calls"] += 1
            e["acs"] += dense * nonzero / numel if numel else 0.0
        else:
            e["macs"] += dense

    chunks = list(batches(inputs, batch_size))
    samples = sum(c.shape[0] for c in chunks)
    if samples == 0:
        raise ValueError("count_ops needs at least one input sample")
    with SynapticHooks(model, on_call) as hooks:
        for chunk in chunks:
            run_model(model, chunk)

    rows = []
    for name in hooks.order:
        e = acc[name]
        op = "AC" if e["binary_calls"] == e["calls"] else ("MAC" if e["binary_calls"] == 0 else "mixed")
        rows.append(LayerOps(layer=name, kind=e["kind"], op=op,
                             input_firing_rate=e["nonzero"] / e["numel"] if e["numel"] else 0.0,
                             binary_input=e["binary_calls"] == e["calls"], calls=e["calls"] // len(chunks),
                             dense_ops=e["dense"] / samples, macs=e["macs"] / samples, acs=e["acs"] / samples))
    macs = sum(r.macs for r in rows)
    acs = sum(r.acs for r in rows)
    return OpsReport(macs=macs, acs=acs, energy_mj=energy.energy_mj(macs, acs), rows=rows, samples=samples,
                     energy_model=energy)
