"""The FSNN as a NIR graph (Neuromorphic Intermediate Representation, https://neuroir.org): the file that
neuromorphic simulators and chips read (Norse, snnTorch, Sinabs/Speck, Rockpool/Xylo, Lava/Loihi, SpiNNaker2, Spyx).

    graph = to_nir(fold_bn(fsnn), sample_shape=(3, 224, 224))     # an eval FSNN, AAP stripped, BN folded
    write_nir(graph, "fsnn.nir")                                   # HDF5, read back with nir.read

NIR models are continuous-time and carry no T or batch: a consumer steps the graph once per time step, with its own
state. The translation below is exact (not approximate) for forward Euler at dt = 1 step (the graph's metadata says
so), so a consumer that steps it that way reproduces our spikes bit for bit; `dst.export.nir_run` runs a written file
in a third-party consumer and measures that.

The mapping, module by module (the FSNN must be in eval mode with BN folded into the convs, `fold_bn`):
- Conv2d (BN folded: weight and bias) -> nir.Conv2d with the same stride, padding, dilation and groups.
- The analog stem: the image is the graph's Input, presented at every step (the DVS nets: frame t at step t); it goes
  into the first Conv2d, then the neuron, as in the model.
- Neurons (hard reset only; NIR's neurons reset to v_reset):
  - IF  (H = V + X)                 -> nir.IF(r = 1, v_threshold, v_reset): v' = R I, Euler at dt = 1 is V + X.
  - LIF (H = V + (X - (V - v_reset)) / tau, decay_input) -> nir.LIF(tau, r = 1, v_leak = v_reset, v_threshold,
    v_reset): tau v' = (v_leak - v) + R I, Euler at dt = 1. PLIF becomes LIF with its learned tau = 1 / sigmoid(w).
    tau is written as the float32 whose reciprocal, rounded to float32, is the decay k the neuron multiplies by
    (a consumer that multiplies by 1/tau then uses our k exactly; one that divides by tau rounds differently). For
    a learned k between 0.5 and 1 no float32 tau may give k exactly: the nearest is written, and the graph's
    metadata lists those neurons (`inexact_decays`), whose membranes can then differ in the last bit.
  - The threshold: our neurons fire at H >= v_threshold, NIR's at v > v_threshold. The graph holds the largest
    float32 below v_threshold: for float32 H, H > nextafter(v_th, -inf) holds exactly when H >= v_th, so a membrane
    that lands exactly on the threshold fires in both.
  - decay_input=False (V - (V - rest) / tau + X) and a soft reset have no exact NIR form: refused.
- Max pooling of spikes -> SumPool2d, then Threshold(0.5) (exact on binary input: the max is 1 where the sum is >= 1).
  Padding: several consumers ignore SumPool2d's padding (Norse, Sinabs, nirtorch's default map), so a padded pool is
  written as an identity 1x1 Conv2d with that padding (zeros around the spikes, exact), then an unpadded SumPool2d.
  A ceil-mode pool (the DVS nets) is exact where every window is whole (even sizes) or the map is 1x1 (an identity,
  so no node); other sizes are refused.
- Connect functions as edge sums (a node sums the edges into it), Scale(-1) and Threshold nodes, on binary s, d:
    IAND(s, d) = Threshold_0.5(d - s)     AND(s, d) = Threshold_1.5(s + d)     OR(s, d) = Threshold_0.5(s + d)
    XOR(s, d)  = Threshold_0.5(OR(s, d) - AND(s, d))
  ADD (SEW-ResNet, not full-spike) is the edge sum itself: s and d both feed the next nodes (allow_not_full_spike).
  Spiking ResNet's SN(residual + D(x)) is the edge sum into its neuron.
- The head: the model's logits are FC(mean over T of the global average pool). Per step the graph computes
  SumPool2d over the whole map, Flatten, then Affine(W / (H W), b): the Output at step t is FC(GAP(o_t)), and the
  logits are the mean of the Output over the T steps (an affine map commutes with the mean), equal to the model's up
  to float summation order. The readout is the consumer's: average (or sum) the Output over the T steps.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dst.layers import MultiStep
from dst.models.base import DualStreamNet
from dst.neuron import MultiStepIF, MultiStepLIF, MultiStepNeuron

DT_CONVENTION = ("forward Euler at dt = 1 model time step; hard reset to v_reset; a neuron fires when v > "
                 "v_threshold (the exported value is the largest float32 below the model's threshold, so v >= "
                 "threshold in float32 fires exactly)")
READOUT = "logits = mean over the T steps of Output (FC of the global average pool of the last spikes at each step)"


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def strict_threshold(v_threshold: float) -> np.float32:
    """The largest float32 below v_threshold: `h > it` is `h >= v_threshold` for every float32 h."""
    return np.nextafter(np.float32(v_threshold), np.float32(-np.inf))


def tau_for_decay(k: float) -> tuple[np.float32, bool]:
    """(tau, exact): a float32 tau whose reciprocal, computed in float32, is the float32 decay k (1/tau as the
    neuron multiplies), if one exists, else the one whose reciprocal is nearest. Not every k has one: for k in (0.5, 1)
    (tau between 1 and 2) float32 reciprocals of float32 taus hit only about every other float32 k."""
    k32 = np.float32(k)
    centre = np.float32(1.0 / np.float64(k32))
    candidates = [centre]
    below = above = centre
    for _ in range(8):
        below, above = np.nextafter(below, np.float32(0)), np.nextafter(above, np.float32(np.inf))
        candidates += [below, above]
    def miss(t):
        return abs(np.float64(np.float32(1.0) / t) - np.float64(k32)), abs(np.float64(t) - 1.0 / np.float64(k32))
    tau = min(candidates, key=miss)
    return tau, bool(np.float32(1.0) / tau == k32)


@dataclass
class Value:
    """A tensor of the model as the graph holds it: the sum of the outputs of `sources`, of shape (C, H, W)."""
    sources: tuple[str, ...]
    shape: tuple[int, ...]


@dataclass
class NIRBuilder:
    """Collects nodes and edges; node names are the model's module paths (dots as underscores)."""
    allow_not_full_spike: bool = False
    nodes: dict = field(default_factory=dict)
    edges: list = field(default_factory=list)
    neurons: dict = field(default_factory=dict)   # NIR node name -> the model's neuron module path
    inexact_decays: dict = field(default_factory=dict)   # neuron path -> a decay k no float32 tau gives exactly

    def add(self, name: str, node, inputs: tuple[str, ...]) -> str:
        name = name.replace(".", "_")
        base, i = name, 1
        while name in self.nodes:
            i += 1
            name = f"{base}_{i}"
        self.nodes[name] = node
        self.edges += [(src, name) for src in inputs]
        return name

    # ------------------------------------------------------------------------------------------------ modules
    def conv(self, path: str, conv: nn.Conv2d, x: Value) -> Value:
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{path}: only nn.Conv2d with numeric zero padding has a NIR form, got {conv}")
        _, H, W = x.shape
        weight = _f32(conv.weight.detach().float().cpu())
        bias = _f32(conv.bias.detach().float().cpu()) if conv.bias is not None else np.zeros(conv.out_channels,
                                                                                           np.float32)
        node = _nir().Conv2d(input_shape=(H, W), weight=weight, stride=np.array(conv.stride),
                             padding=np.array(conv.padding), dilation=np.array(conv.dilation), groups=conv.groups,
                             bias=bias)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        shape = (conv.out_channels, (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
        return Value((self.add(path, node, x.sources),), shape)

    def neuron(self, path: str, neuron: MultiStepNeuron, x: Value) -> Value:
        nir = _nir()
        if neuron.v_reset is None:
            raise ValueError(f"{path}: a soft (subtractive) reset has no NIR form (NIR's IF and LIF reset to v_reset)")
        full = lambda v: np.full(x.shape, v, dtype=np.float32)   # noqa: E731
        threshold, reset = full(strict_threshold(neuron.v_threshold)), full(neuron.v_reset)
        if type(neuron).charge is MultiStepIF.charge:
            node = nir.IF(r=full(1.0), v_threshold=threshold, v_reset=reset)
        elif isinstance(neuron, MultiStepLIF) and type(neuron).charge is MultiStepLIF.charge:
            if not neuron.decay_input:
                raise ValueError(f"{path}: LIF with decay_input=False (H = V - (V - rest)/tau + X) has no exact NIR "
                                 "form (NIR's LIF scales the input by R/tau)")
            k = neuron.decay(torch.zeros((), dtype=torch.float32))
            k = float(k.item() if isinstance(k, torch.Tensor) else k)
            tau, exact = tau_for_decay(k)
            if not exact:
                self.inexact_decays[path] = k
            node = nir.LIF(tau=full(tau), r=full(1.0), v_leak=reset.copy(), v_threshold=threshold, v_reset=reset)
        else:
            raise ValueError(f"{path}: {type(neuron).__name__} has no NIR form (IF, LIF and PLIF have)")
        name = self.add(path, node, x.sources)
        self.neurons[name] = path
        return Value((name,), x.shape)

    def threshold(self, path: str, x: Value, threshold: float) -> Value:
        node = _nir().Threshold(threshold=np.full(x.shape, threshold, dtype=np.float32))
        return Value((self.add(path, node, x.sources),), x.shape)

    def negate(self, path: str, x: Value) -> Value:
        node = _nir().Scale(scale=np.full(x.shape, -1.0, dtype=np.float32))
        return Value((self.add(path, node, x.sources),), x.shape)

    def max_pool(self, path: str, pool: nn.MaxPool2d, x: Value) -> Value:
        """Max pooling of spikes: [identity padding conv], SumPool2d, Threshold(0.5)."""
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)   # noqa: E731
        (kh, kw), (sh, sw) = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size)
        (ph, pw), (dh, dw) = pair(pool.padding), pair(pool.dilation)
        C, H, W = x.shape
        if (dh, dw) != (1, 1) or pool.return_indices:
            raise ValueError(f"{path}: only a max pool with dilation 1 has a NIR form")
        if pool.ceil_mode:
            if (H, W) == (1, 1) and (ph, pw) == (0, 0):
                return x                                                 # a 1x1 map: the pool is the identity
            if ph or pw or (H - kh) % sh or (W - kw) % sw:
                raise ValueError(f"{path}: a ceil-mode max pool over a {H}x{W} map has windows cut by the border: "
                                 "no exact NIR form (input sizes that halve evenly at every pool have one)")
        if ph or pw:
            eye = np.eye(C, dtype=np.float32)[:, :, None, None]
            pad = _nir().Conv2d(input_shape=(H, W), weight=eye, stride=np.array([1, 1]),
                                padding=np.array([ph, pw]), dilation=np.array([1, 1]), groups=1,
                                bias=np.zeros(C, np.float32))
            x = Value((self.add(f"{path}.pad", pad, x.sources),), (C, H + 2 * ph, W + 2 * pw))
            _, H, W = x.shape
        node = _nir().SumPool2d(kernel_size=np.array([kh, kw]), stride=np.array([sh, sw]), padding=np.array([0, 0]))
        summed = Value((self.add(f"{path}.sum", node, x.sources),), (C, (H - kh) // sh + 1, (W - kw) // sw + 1))
        return self.threshold(f"{path}.fire", summed, 0.5)

    def connect(self, path: str, name: str, s: Value, d: Value) -> Value:
        """o = g(s, d) as edge sums and thresholds (exact on binary s and d)."""
        both = Value(s.sources + d.sources, s.shape)
        if name == "IAND":
            return self.threshold(f"{path}.iand", Value(d.sources + self.negate(f"{path}.not_s", s).sources,
                                                        s.shape), 0.5)
        if name == "AND":
            return self.threshold(f"{path}.and", both, 1.5)
        if name == "OR":
            return self.threshold(f"{path}.or", both, 0.5)
        if name == "XOR":
            either = self.threshold(f"{path}.or", both, 0.5)
            not_both = self.negate(f"{path}.not_and", self.threshold(f"{path}.and", both, 1.5))
            return self.threshold(f"{path}.xor", Value(either.sources + not_both.sources, s.shape), 0.5)
        if name == "ADD":
            if not self.allow_not_full_spike:
                raise ValueError(f"{path}: connect ADD sums spikes into integers: not a full-spike network "
                                 "(allow_not_full_spike exports the SEW-ResNet baseline anyway, as edge sums)")
            return both
        raise ValueError(f"{path}: connect function {name!r} has no NIR form")

    def sequence(self, path: str, modules: nn.Module, x: Value) -> Value:
        """A Sequential / MultiStep of convs, neurons, max pools and identities, in order."""
        for name, m in modules.named_children():
            sub = f"{path}.{name}"
            if isinstance(m, (nn.Sequential, MultiStep)):
                x = self.sequence(sub, m, x)
            elif isinstance(m, nn.Conv2d):
                x = self.conv(sub, m, x)
            elif isinstance(m, MultiStepNeuron):
                x = self.neuron(sub, m, x)
            elif isinstance(m, nn.MaxPool2d):
                x = self.max_pool(sub, m, x)
            elif isinstance(m, nn.Identity):
                continue
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                raise ValueError(f"{sub}: BatchNorm is not folded (pass fold_bn(model))")
            else:
                raise ValueError(f"{sub}: {type(m).__name__} has no NIR form")
        return x

    def block(self, path: str, block: nn.Module, x: Value) -> Value:
        from dst.models.resnet import SEWBlock, SpikingResNetBlock
        if isinstance(block, SEWBlock):
            s = self.sequence(f"{path}.residual", block.residual, x)
            d = x if block.downsample is None else self.sequence(f"{path}.downsample", block.downsample, x)
            return self.connect(path, block.connect_name, s, d)
        if isinstance(block, SpikingResNetBlock):
            r = self.sequence(f"{path}.residual", block.residual, x)
            d = x if block.downsample is None else self.sequence(f"{path}.downsample", block.downsample, x)
            return self.neuron(f"{path}.neuron", block.neuron, Value(r.sources + d.sources, r.shape))
        raise ValueError(f"{path}: {type(block).__name__} has no NIR form")

    def head(self, fc: nn.Linear, x: Value) -> Value:
        """Per step: SumPool2d over the whole map, Flatten, Affine(W / (H W), b) (the model's FC on the mean)."""
        nir = _nir()
        C, H, W = x.shape
        if (H, W) != (1, 1):
            pool = nir.SumPool2d(kernel_size=np.array([H, W]), stride=np.array([H, W]), padding=np.array([0, 0]))
            x = Value((self.add("head.sum", pool, x.sources),), (C, 1, 1))
        flat = nir.Flatten(input_type={"input": np.array([C, 1, 1])}, start_dim=0, end_dim=-1)
        x = Value((self.add("head.flatten", flat, x.sources),), (C,))
        weight = fc.weight.detach().double().cpu() / (H * W)
        node = nir.Affine(weight=_f32(weight), bias=_f32(fc.bias.detach().float().cpu()))
        return Value((self.add("fc", node, x.sources),), (fc.out_features,))


def _nir():
    try:
        import nir
    except ImportError:
        raise ImportError("NIR export needs the `nir` package (pip install nir)") from None
    return nir


def _check_exportable(model: nn.Module) -> DualStreamNet:
    if not isinstance(model, DualStreamNet):
        raise TypeError(f"expected a dst DualStreamNet, got {type(model).__name__}")
    if model.has_aap:
        raise ValueError("the NIR graph is the FSNN: pass strip_aap(model) (the AAP is not part of it)")
    if model.training:
        raise ValueError("pass the model in eval mode (BN running statistics folded into the convs: fold_bn(model))")
    return model


def to_nir(model: nn.Module, sample_shape: tuple[int, ...], *, allow_not_full_spike: bool = False):
    """The NIR graph of an FSNN (eval mode, AAP stripped, BN folded) for one sample of `sample_shape`: (3, H, W)
    images for the ResNets, (T, 2, H, W) frames for the DVS nets (the graph takes one frame (2, H, W) a step).
    Returns (graph, neurons): neurons maps each NIR neuron node to the model's neuron module path."""
    from dst.models.dvs import DVSNet
    from dst.models.resnet import SpikingResNet

    nir = _nir()
    model = _check_exportable(model)
    b = NIRBuilder(allow_not_full_spike=allow_not_full_spike)
    step_shape = tuple(int(v) for v in (sample_shape[1:] if isinstance(model, DVSNet) else sample_shape))
    if len(step_shape) != 3:
        raise ValueError(f"a sample of {type(model).__name__} is {'(T, C, H, W)' if isinstance(model, DVSNet) else '(C, H, W)'}, "
                         f"got {tuple(sample_shape)}")
    x = Value((b.add("input", nir.Input(input_type={"input": np.array(step_shape)}), ()),), step_shape)
    if isinstance(model, SpikingResNet):
        if not isinstance(model.stem_bn, nn.Identity):
            raise ValueError("stem_bn: BatchNorm is not folded (pass fold_bn(model))")
        x = b.conv("stem_conv", model.stem_conv, x)
        x = b.neuron("stem_neuron", model.stem_neuron, x)
        x = b.sequence("maxpool", model.maxpool, x)
        for i, blk in enumerate(model.blocks):
            x = b.block(f"blocks.{i}", blk, x)
        T = model.T
    elif isinstance(model, DVSNet):
        from dst.models.resnet import SEWBlock
        for i, stage in enumerate(model.stages):
            if isinstance(stage, SEWBlock):
                x = b.block(f"stages.{i}", stage, x)
                x = b.sequence(f"pool_{i}", model.pool, x)
            else:
                x = b.sequence(f"stages.{i}", stage, x)
        T = int(sample_shape[0])
    else:
        raise ValueError(f"{type(model).__name__} has no NIR form (the ResNets and the DVS nets have)")
    out = b.head(model.fc, x)
    b.add("output", nir.Output(output_type={"output": np.array(out.shape)}), out.sources)
    metadata = {"producer": "dst (Dual-Stream Training)", "model": getattr(model, "model_name", type(model).__name__),
                "dt": 1.0, "dt_convention": DT_CONVENTION, "time_steps": int(T), "readout": READOUT,
                "input": ("frame t of the sample at step t" if isinstance(model, DVSNet)
                          else "the same image at every one of the T steps"),
                "neurons": dict(b.neurons), "inexact_decays": dict(b.inexact_decays)}
    return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=metadata), b.neurons


def write_nir(graph, path: str | os.PathLike) -> None:
    """Write the graph as a NIR HDF5 file (nir.write)."""
    _nir().write(str(path), graph)


def graph_summary(graph) -> dict:
    """Node and edge counts and node types of a graph: what report.json records."""
    types: dict[str, int] = {}
    for node in graph.nodes.values():
        types[type(node).__name__] = types.get(type(node).__name__, 0) + 1
    return {"nodes": len(graph.nodes), "edges": len(graph.edges), "node_types": dict(sorted(types.items()))}


def graph_steps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the graph's Input takes at each step, [T, N, ...], for a batch x of the model's input: the image at
    every step (ResNets), frame t at step t (DVS nets)."""
    from dst.models.dvs import DVSNet
    if isinstance(model, DVSNet):
        return x.transpose(0, 1)
    return x.unsqueeze(0).expand(model.T, *x.shape)


def run_and_compare(path: str | os.PathLike, model: nn.Module, x: torch.Tensor) -> dict:
    """Execute the NIR file at `path` (read from disk) in the third-party consumer (dst.export.nir_run) on the batch
    x, and compare with `model`, the BN-folded FSNN the file was written from: every neuron's spikes at every step,
    and the logits (the mean of the Output over the steps). Returns what was measured, with the consumer's `logits`
    and the `graph` it read (for the caller to compare or summarise)."""
    from dst.export import nir_run
    graph, _ = nir_run.load(path)
    names = {path_: node for node, path_ in _neuron_paths(graph).items()}
    ours: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, p=p: ours.__setitem__(p, out.detach()))
             for p, m in model.named_modules() if p in names]
    try:
        with torch.no_grad():
            z = model(x)
    finally:
        for h in hooks:
            h.remove()
    outputs, spikes = nir_run.run(path, graph_steps(model, x), tuple(names.values()))
    compared = mismatched = 0
    for p, node in names.items():
        theirs = spikes[node]
        compared += theirs.numel()
        mismatched += int((theirs != ours[p].reshape(theirs.shape)).sum())
    logits = outputs.mean(0)
    return {"consumer": nir_run.CONSUMER, "read_from": f"nir.read({os.fspath(path)!r})", "samples": int(x.shape[0]),
            "time_steps": int(outputs.shape[0]), "neurons": len(names), "spikes_compared": compared,
            "spike_mismatches": mismatched, "spike_agreement": 1.0 - mismatched / max(compared, 1),
            "max_abs_logit_diff_vs_bn_folded_fsnn": float((logits - z).abs().max()),
            "max_abs_logit": float(z.abs().max()),
            "argmax_agreement": float((logits.argmax(1) == z.argmax(1)).float().mean()),
            "logits": logits, "graph": graph}


def _neuron_paths(graph) -> dict[str, str]:
    """NIR neuron node -> the model's neuron module path (the builder names nodes by module path)."""
    return {name: graph.metadata["neurons"][name] for name in graph.metadata.get("neurons", {})}
