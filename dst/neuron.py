"""Multi-step spiking neurons on [T, N, ...] tensors.

One dynamics definition per neuron (`charge`), shared by every backend. Per time step t:
    H[t] = charge(V[t-1], X[t])                    membrane potential before firing
    S[t] = heaviside(H[t] - v_threshold)           spike (surrogate gradient in backward)
    V[t] = H[t] * (1 - S[t]) + v_reset * S[t]      hard reset   (v_reset is a float)
         = H[t] - v_threshold * S[t]               soft reset   (v_reset is None)
with S[t] detached in the reset when detach_reset=True (as SEW ResNet and the DST release).
Every forward starts from rest (V[-1] = v_reset or 0): no reset call is needed between batches.
The equations and defaults equal SpikingJelly's IFNode / LIFNode / ParametricLIFNode in step_mode='m'.

Backends (`backend=`): "auto" (default) runs the fused kernels of dst.kernels (Triton on CUDA, numba on CPU for
float32/float64/bfloat16, a step-wise torch fallback otherwise: one pass over T forward and one backward, only the
input kept for backward); "torch" runs `multistep_reference`, the plain loop with autograd through every step, the
oracle the kernels are tested against. "triton", "numba" and "eager" force one kernel. Under torch.compile,
torch.export, TorchScript tracing, or for a neuron whose `charge` the kernels do not know (a subclass overriding it),
"auto" uses the reference. Each neuron describes itself to the kernels with `kernel_spec()` (dst/kernels/spec.py).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dst import kernels
from dst.kernels.dispatch import is_tracing
from dst.kernels.spec import SURROGATE_KINDS, Charge, NeuronSpec
from dst.layers import repeat_time
from dst.surrogate import SURROGATE_GRADS, Surrogate, create_surrogate


class MultiStepNeuron(nn.Module):
    """Base class: subclasses define `charge(v, x)`; the loop over T lives here."""

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate: str | Surrogate | None = "atan",
        alpha: float | None = None,
        detach_reset: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.surrogate = create_surrogate(surrogate, alpha)
        self.detach_reset = bool(detach_reset)
        if backend not in kernels.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {kernels.BACKENDS}")
        self.backend = backend

    def charge(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decay(self, like: torch.Tensor):
        """The leak k = 1/tau the charge equation multiplies by (a float, or a 0-d tensor when learned); None for a
        neuron without leak."""
        return None

    def kernel_spec(self) -> NeuronSpec | None:
        """This neuron as the fused kernels see it, or None when they do not know its equations (then it runs the
        reference loop). Subclasses that keep a known `charge` and `decay` return their spec; one that overrides
        either, or the reference loop, or uses a surrogate the kernels do not know, gets None."""
        return None

    def _spec(self, kind: Charge, learn_k: bool = False) -> NeuronSpec | None:
        """The spec of a `kind` neuron, if the loop and the surrogate are the ones the kernels restate."""
        sur = self.surrogate
        known_surrogate = (sur.name in SURROGATE_KINDS and type(sur).forward is Surrogate.forward
                           and type(sur).grad is Surrogate.grad and SURROGATE_GRADS.get(sur.name) is not None)
        if not known_surrogate or type(self).multistep_reference is not MultiStepNeuron.multistep_reference:
            return None
        return NeuronSpec(kind=kind, v_threshold=self.v_threshold, v_reset=self.v_reset,
                          detach_reset=self.detach_reset, surrogate=sur.name, alpha=sur.alpha, learn_k=learn_k)

    def forward(self, x_seq: torch.Tensor, repeat: int | None = None) -> torch.Tensor:
        """Spikes [T, N, ...] for inputs x_seq [T, N, ...].

        repeat=T: x_seq is one input [N, ...] presented at each of T steps (the stem's analog image). Same spikes and
        gradients as x_seq.expand(T, ...), but the fused kernels sum the gradient over T themselves (no [T, N, ...]
        gradient and no sum over it in backward)."""
        if repeat is not None:
            if repeat < 1:
                raise ValueError(f"repeat must be >= 1, got {repeat}")
            x_full = repeat_time(x_seq, repeat)
        else:
            x_full = x_seq
        if x_full.dim() < 2:
            raise ValueError(f"{type(self).__name__} expects [T, N, ...], got shape {tuple(x_seq.shape)}")
        backend = self.backend
        if backend == "torch" or is_tracing():
            return self.multistep_reference(x_full)
        spec = self.kernel_spec()
        if backend == "auto" and (spec is None or not x_seq.is_floating_point()):
            return self.multistep_reference(x_full)
        if spec is None:
            raise ValueError(f"backend {backend!r} does not know the equations of {type(self).__name__}; "
                             f"use backend='torch'")
        return kernels.multistep(x_seq, spec, self.decay(x_seq), backend, repeat=repeat)

    def multistep_reference(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The plain loop over T with autograd through every step: the oracle for fused backends."""
        v = torch.full_like(x_seq[0], self.v_reset if self.v_reset is not None else 0.0)
        spikes = []
        for x in x_seq:
            h = self.charge(v, x)
            spike = self.surrogate(h - self.v_threshold)
            s_reset = spike.detach() if self.detach_reset else spike
            if self.v_reset is None:
                v = h - self.v_threshold * s_reset
            else:
                v = h * (1.0 - s_reset) + self.v_reset * s_reset
            spikes.append(spike)
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
                f"detach_reset={self.detach_reset}, backend={self.backend!r}")


class MultiStepIF(MultiStepNeuron):
    """Integrate-and-fire: H = V + X (no leak). The neuron of the DST release."""

    def charge(self, v, x):
        return v + x

    def kernel_spec(self) -> NeuronSpec | None:
        if type(self).charge is not MultiStepIF.charge or type(self).decay is not MultiStepNeuron.decay:
            return None
        return self._spec(Charge.IF)


class MultiStepLIF(MultiStepNeuron):
    """Leaky integrate-and-fire with a fixed time constant tau.

    decay_input=True:  H = V + (X - (V - v_reset)) / tau
    decay_input=False: H = V - (V - v_reset) / tau + X
    """

    def __init__(self, tau: float = 2.0, decay_input: bool = True, **kw):
        super().__init__(**kw)
        if tau <= 1.0:
            raise ValueError(f"tau must be > 1, got {tau}")
        self.tau = float(tau)
        self.decay_input = bool(decay_input)

    def decay(self, like: torch.Tensor):
        return 1.0 / self.tau

    def kernel_spec(self) -> NeuronSpec | None:
        if type(self).charge is not MultiStepLIF.charge or type(self).decay is not MultiStepLIF.decay:
            return None
        return self._spec(Charge.LIF if self.decay_input else Charge.LIF_NO_DECAY_INPUT)

    def charge(self, v, x):
        k = self.decay(v)
        rest = self.v_reset if self.v_reset is not None else 0.0
        if self.decay_input:
            return v + (x - (v - rest)) * k
        return v - (v - rest) * k + x

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class MultiStepPLIF(MultiStepLIF):
    """Parametric LIF (Fang et al. 2021): 1/tau = sigmoid(w) is learned; w starts at -log(init_tau - 1)."""

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, **kw):
        super().__init__(tau=init_tau, decay_input=decay_input, **kw)
        # Shape [1], not a 0-d scalar as in SpikingJelly: DeepSpeed broadcasts parameters as byte views, which a
        # 0-d tensor cannot give. decay() hands the dynamics a 0-d value as before.
        self.w = nn.Parameter(torch.full((1,), -math.log(init_tau - 1.0)))

    def decay(self, like: torch.Tensor):
        return self.w.sigmoid().reshape(()).to(like.dtype)

    def kernel_spec(self) -> NeuronSpec | None:
        if type(self).charge is not MultiStepLIF.charge or type(self).decay is not MultiStepPLIF.decay:
            return None
        return self._spec(Charge.LIF if self.decay_input else Charge.LIF_NO_DECAY_INPUT, learn_k=True)

    def extra_repr(self) -> str:
        return f"init_tau={self.tau}, decay_input={self.decay_input}, " + MultiStepNeuron.extra_repr(self)


NEURONS = {"if": MultiStepIF, "lif": MultiStepLIF, "plif": MultiStepPLIF}


def create_neuron(name: str = "if", **kw) -> MultiStepNeuron:
    """create_neuron('plif', init_tau=2.0, surrogate='sigmoid', alpha=4.0)."""
    key = name.lower()
    if key not in NEURONS:
        raise ValueError(f"unknown neuron {name!r}; choose one of {sorted(NEURONS)}")
    return NEURONS[key](**kw)
