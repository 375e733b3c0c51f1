"""Full-spike verification: forward hooks check that every synaptic layer (Conv/Linear) receives only {0, 1}.

Two layers are exempt, as in every spiking ResNet (PAPER.md, "Full-spike property"):
- the encoding layer: the first synaptic layer to run (the stem conv on the analog image, or the DVS nets' first
  conv on raw frame counts);
- the head: each DualStreamNet's `fc`, which sees time-averaged pooled spikes (rates), not spikes.

    report = verify_full_spike(strip_aap(model).eval(), images)
    report.ok, report.offenders   # offenders: the layers that saw non-binary input, with what they saw
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dst.connect import SPIKE_ONLY
from dst.hooks import ForwardHooks
from dst.models.base import DualStreamNet
from dst.neuron import MultiStepNeuron


def is_synaptic(module: nn.Module) -> bool:
    """Layers whose work is synaptic operations: convolutions (not transposed) and linear layers."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return not module.transposed
    return isinstance(module, nn.Linear)


def synaptic_kind(module: nn.Module) -> str:
    return "linear" if isinstance(module, nn.Linear) else "conv"


def head_modules(model: nn.Module) -> set[int]:
    """ids of the classifier heads: the `fc` of every DualStreamNet inside `model` (they read rates, not spikes)."""
    return {id(m.fc) for m in model.modules() if isinstance(m, DualStreamNet) and isinstance(m.fc, nn.Module)}


def is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


@dataclass
class LayerCheck:
    layer: str
    kind: str
    non_binary_fraction: float   # share of input elements outside {0, 1}
    min: float
    max: float
    examples: list[float]        # a few of the offending values


@dataclass
class FullSpikeReport:
    ok: bool
    offenders: list[LayerCheck]                  # layers that received non-binary input
    checked: list[str]                           # layers whose inputs were all in {0, 1}
    exempt: dict[str, str] = field(default_factory=dict)  # layer -> why it may see non-binary input
    connect_violations: list[str] = field(default_factory=list)  # blocks joined by a non-spike-only connect (ADD)
    silent: list[str] = field(default_factory=list)  # checked layers that saw no spike at all (a vacuous pass)

    @property
    def offending_layers(self) -> list[str]:
        return [o.layer for o in self.offenders]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "offending_layers": self.offending_layers,
                "offenders": [asdict(o) for o in self.offenders], "connect_violations": list(self.connect_violations),
                "checked": list(self.checked), "silent": list(self.silent), "exempt": dict(self.exempt)}

    def summary(self, limit: int = 5) -> str:
        if self.ok:
            return f"full-spike: ok ({len(self.checked)} synaptic layers receive only 0/1)"
        parts = []
        if self.offenders:
            names = ", ".join(self.offending_layers[:limit])
            more = f" and {len(self.offenders) - limit} more" if len(self.offenders) > limit else ""
            parts.append(f"{len(self.offenders)} layers receive non-binary input: {names}{more}")
        if self.connect_violations:
            parts.append(f"{len(self.connect_violations)} blocks use a connect function that is not spike-only "
                         f"({self.connect_violations[0]}{', ...' if len(self.connect_violations) > 1 else ''})")
        return "not full-spike: " + "; ".join(parts)


class SynapticHooks(ForwardHooks):
    """Forward hooks on every synaptic layer: `on_call(name, module, x, y)` sees each call's input and output.
    `order` lists the layers in the order they first ran."""

    def __init__(self, model: nn.Module, on_call):
        super().__init__(model)
        self.on_call = on_call
        self.order: list[str] = []

    def select(self, module: nn.Module) -> bool:
        return is_synaptic(module)

    def _hook(self, name: str):
        name = name or type(self.model).__name__  # a bare layer passed as the model has no name of its own
        seen = False

        def hook(module, args, y):
            nonlocal seen
            if not seen:
                seen = True
                self.order.append(name)
            self.on_call(name, module, args[0].detach(), y)
        return hook


def batches(inputs: torch.Tensor, batch_size: int | None):
    if batch_size is None or batch_size >= inputs.shape[0]:
        yield inputs
    else:
        yield from inputs.split(batch_size)


def run_model(model: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return model(x)


def verify_full_spike(model: nn.Module, inputs: torch.Tensor, *, batch_size: int | None = None,
                      max_examples: int = 5) -> FullSpikeReport:
    """Run `model(inputs)` (in chunks of `batch_size` samples) and check the inputs of every synaptic layer.

    A model with its AAP still attached fails, naming the AAP's convs (they read accumulations, not spikes): check the
    stripped FSNN (`dst.export.strip_aap`). SEW-ResNet ADD fails at the layers that read an ADD output, and, whatever
    the batch, through `connect_violations` (blocks whose connect function is not spike-only).
    `silent` lists checked layers that saw only zeros: the check says nothing about them on this batch.
    """
    heads = head_modules(model)
    seen: dict[str, dict] = {}

    def on_call(name, module, x, _y):
        entry = seen.setdefault(name, {"kind": synaptic_kind(module), "head": id(module) in heads,
                                       "bad": 0, "nonzero": 0, "total": 0, "min": float("inf"), "max": float("-inf"),
                                       "examples": []})
        bad = (x != 0) & (x != 1)
        entry["bad"] += int(bad.sum())
        entry["nonzero"] += int((x != 0).sum())
        entry["total"] += x.numel()
        if x.numel():
            entry["min"] = min(entry["min"], float(x.min()))
            entry["max"] = max(entry["max"], float(x.max()))
        if len(entry["examples"]) < max_examples and bool(bad.any()):
            values = x[bad].unique()[:max_examples].tolist()
            entry["examples"] = sorted(set(entry["examples"]) | set(values))[:max_examples]

    with SynapticHooks(model, on_call) as rec:
        for chunk in batches(inputs, batch_size):
            run_model(model, chunk)
    if not rec.order:
        raise ValueError("the model ran no Conv/Linear layer, so there is nothing to verify")

    exempt = {rec.order[0]: "encoding layer (first synaptic layer: reads the analog image or frame counts)"}
    offenders, checked, silent = [], [], []
    for name in rec.order:
        entry = seen[name]
        if entry["head"]:
            exempt[name] = "classifier head (reads time-averaged pooled spikes: firing rates)"
        if name in exempt:
            continue
        if entry["bad"]:
            offenders.append(LayerCheck(name, entry["kind"], entry["bad"] / entry["total"], entry["min"],
                                        entry["max"], [float(v) for v in entry["examples"]]))
        else:
            checked.append(name)
            if entry["nonzero"] == 0:
                silent.append(name)
    # Structural check as well: a block joined by ADD is not full-spike even on a batch where no 2 happens to occur
    # (deep SEW nets with random weights often go silent, which would make the hook check pass vacuously).
    violations = [f"{name or type(m).__name__}: connect {m.connect_name}" for name, m in model.named_modules()
                  if isinstance(getattr(m, "connect_name", None), str) and m.connect_name not in SPIKE_ONLY]
    return FullSpikeReport(ok=not offenders and not violations, offenders=offenders, checked=checked, exempt=exempt,
                           connect_violations=violations, silent=silent)


def spike_agreement(model_a: nn.Module, model_b: nn.Module, inputs: torch.Tensor) -> float:
    """Share of neuron output spikes that agree between two models with the same neuron names (e.g. before and after
    BN folding, where float rounding can flip a spike whose membrane potential sits exactly at the threshold)."""
    def record(model):
        outs: dict[str, list[torch.Tensor]] = {}
        handles = [m.register_forward_hook(lambda _m, _i, o, n=name: outs.setdefault(n, []).append(o.detach()))
                   for name, m in model.named_modules() if isinstance(m, MultiStepNeuron)]
        try:
            run_model(model, inputs)
        finally:
            for h in handles:
                h.remove()
        return outs

    a, b = record(model_a), record(model_b)
    if a.keys() != b.keys():
        raise ValueError("the two models do not have the same spiking neurons")
    same = total = 0
    for name in a:
        for xa, xb in zip(a[name], b[name]):
            same += int((xa == xb).sum())
            total += xa.numel()
    return same / total if total else 1.0
