"""Run a NIR file outside this project: read it from disk with `nir.read` and execute it with third-party code, so
that what is checked is the file a neuromorphic toolchain would get, read by someone else's importer.

The consumer is nirtorch 2.6's `nir_to_torch` (the graph interpreter of the NIR project: node order, edge sums,
state carried across steps) with Norse 1.1's NIR importer for the nodes it reads (Conv2d, Affine, IF as IAFCell, LIF
as LIFBoxCell, at dt = 1). Neither reads Scale or Threshold, and both drop SumPool2d's padding and treat Flatten's
dims as batched; those four nodes get small map entries here, each following the NIR definition (Threshold: 1 where
v > threshold). Norse 1.1 is installed without its dependencies (it declares torchvision, which it does not import
for this): see scripts/bootstrap.sh.
"""
from __future__ import annotations

import os
from functools import partial

import numpy as np
import torch
from torch import nn

CONSUMER = "nirtorch 2.6 nir_to_torch + norse 1.1 NIR importer (dt = 1)"


class NIRScale(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.register_buffer("scale", torch.from_numpy(np.asarray(scale, dtype=np.float32)))

    def forward(self, x):
        return x * self.scale


class NIRThreshold(nn.Module):
    """NIR's Threshold: 1 where the input exceeds the threshold (strictly), else 0."""

    def __init__(self, threshold):
        super().__init__()
        self.register_buffer("threshold", torch.from_numpy(np.asarray(threshold, dtype=np.float32)))

    def forward(self, x):
        return (x > self.threshold).to(x.dtype)


def _sum_pool(node) -> nn.Module:
    """A sum over each window, padding included (AvgPool2d with divisor 1)."""
    k, s, p = (tuple(int(v) for v in np.atleast_1d(a)) for a in (node.kernel_size, node.stride, node.padding))
    return nn.AvgPool2d(k, s, p, count_include_pad=True, divisor_override=1)


def _flatten(node) -> nn.Module:
    """NIR's dims index one sample; the consumer's tensors have a batch dimension in front."""
    start, end = int(node.start_dim), int(node.end_dim)
    return nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)


def check_wiring(graph) -> None:
    """One Input, one Output, and every node between them: nirtorch's interpreter waits forever on a graph with a
    second Output or a node whose output nothing reads, so such a file is refused before it runs."""
    import nir
    for kind in (nir.Input, nir.Output):   # nir.read adds an Output for a node that fed nothing
        found = sorted(name for name, node in graph.nodes.items() if isinstance(node, kind))
        if len(found) != 1:
            raise ValueError(f"NIR graph: {len(found)} {kind.__name__} nodes ({', '.join(found[:4])}), not one")
    sources = {s for s, _ in graph.edges}
    targets = {t for _, t in graph.edges}
    for name, node in graph.nodes.items():
        if not isinstance(node, nir.Output) and name not in sources:
            raise ValueError(f"NIR graph: node {name!r} ({type(node).__name__}) feeds no other node")
        if not isinstance(node, nir.Input) and name not in targets:
            raise ValueError(f"NIR graph: node {name!r} ({type(node).__name__}) has no input")


def load(path: str | os.PathLike):
    """(the NIR graph read from `path`, the consumer's torch.fx module that steps it)."""
    try:
        import nir
        import nirtorch
        from norse.torch.utils.import_nir import _import_norse_module
    except ImportError as err:
        raise ImportError(f"running a NIR file needs nir, nirtorch and norse ({err}); "
                          "install them as scripts/bootstrap.sh does") from None
    graph = nir.read(str(path))
    check_wiring(graph)
    norse_node = partial(_import_norse_module, dt=1.0, ignore_warnings=True)
    node_map = {nir.Conv2d: norse_node, nir.Affine: norse_node, nir.IF: norse_node, nir.LIF: norse_node,
                nir.Scale: lambda n: NIRScale(n.scale), nir.Threshold: lambda n: NIRThreshold(n.threshold),
                nir.SumPool2d: _sum_pool, nir.Flatten: _flatten}
    return graph, nirtorch.nir_to_torch(graph, node_map)


def run(path: str | os.PathLike, steps: torch.Tensor, record: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict]:
    """Step the NIR file at `path` over steps [T, N, ...] (the input of each step), from rest.
    Returns (Output at every step [T, N, K], {node: its outputs [T, N, ...]} for the nodes in `record`)."""
    _, module = load(path)
    recorded: dict[str, list] = {name: [] for name in record}
    handles = []
    for name, sub in module.named_children():
        if name in recorded:
            handles.append(sub.register_forward_hook(
                lambda m, args, out, name=name: recorded[name].append(
                    (out[0] if isinstance(out, tuple) else out).detach().clone())))
    missing = set(record) - {name for name, _ in module.named_children()}
    if missing:
        raise KeyError(f"the consumer's module has no node {sorted(missing)[:3]}")
    state, outputs = None, []
    try:
        with torch.no_grad():
            for x in steps:
                y, state = module(x.float(), state)
                outputs.append(y)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(outputs), {name: torch.stack(v) for name, v in recorded.items()}
