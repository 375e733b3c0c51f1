"""What a fused kernel needs to know about a neuron: its charge equation, reset, threshold and surrogate.

The dynamics are defined once, by `charge` in dst/neuron.py; the fused kernels restate that equation with the same
operations in the same order (so spikes are bit-identical to `multistep_reference`) and add its hand-written
derivatives. `neuron_spec` only recognises the three neurons whose `charge` it knows; any other subclass (one that
overrides `charge` or `decay`) gets None and runs on the reference loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

IF, LIF, LIF_NO_DECAY_INPUT = 0, 1, 2          # charge kinds
ATAN, SIGMOID = 0, 1                            # surrogate ids
SURROGATE_IDS = {"atan": ATAN, "sigmoid": SIGMOID}


@dataclass(frozen=True)
class NeuronSpec:
    """A multi-step neuron as the kernels see it.

    kind:         IF:                 H = V + X
                  LIF:                H = V + (X - (V - rest)) * k
                  LIF_NO_DECAY_INPUT: H = V - (V - rest) * k + X
    rest:         v_reset for a hard reset, 0 for a soft reset (also the initial V)
    learn_k:      k is a tensor whose gradient is wanted (PLIF); otherwise k is a constant (LIF) or unused (IF)
    """

    kind: int
    v_threshold: float
    v_reset: float | None
    detach_reset: bool
    surrogate: str
    alpha: float
    learn_k: bool = False

    @property
    def hard(self) -> bool:
        return self.v_reset is not None

    @property
    def rest(self) -> float:
        return 0.0 if self.v_reset is None else self.v_reset

    @property
    def surrogate_id(self) -> int:
        return SURROGATE_IDS[self.surrogate]

    @property
    def atan_scale(self) -> float:
        """pi/2 * alpha, as dst.surrogate.atan_grad computes it."""
        return math.pi / 2 * self.alpha


def neuron_spec(neuron) -> NeuronSpec | None:
    """The spec of a dst neuron, or None when the fused kernels do not know its equations."""
    from dst.neuron import MultiStepIF, MultiStepLIF, MultiStepNeuron, MultiStepPLIF
    from dst.surrogate import SURROGATE_GRADS, Surrogate

    cls = type(neuron)
    sur = neuron.surrogate
    # A surrogate subclass that overrides forward/grad, or one registered under a new name, is unknown here.
    if (sur.name not in SURROGATE_IDS or type(sur).forward is not Surrogate.forward
            or type(sur).grad is not Surrogate.grad or SURROGATE_GRADS.get(sur.name) is None):
        return None
    if cls.multistep_reference is not MultiStepNeuron.multistep_reference:
        return None
    common = dict(v_threshold=neuron.v_threshold, v_reset=neuron.v_reset, detach_reset=neuron.detach_reset,
                  surrogate=sur.name, alpha=sur.alpha)
    if isinstance(neuron, MultiStepLIF):
        if cls.charge is not MultiStepLIF.charge:
            return None
        kind = LIF if neuron.decay_input else LIF_NO_DECAY_INPUT
        if isinstance(neuron, MultiStepPLIF):
            if cls.decay is not MultiStepPLIF.decay:
                return None
            return NeuronSpec(kind=kind, learn_k=True, **common)
        if cls.decay is not MultiStepLIF.decay:
            return None
        return NeuronSpec(kind=kind, **common)
    if isinstance(neuron, MultiStepIF) and cls.charge is MultiStepIF.charge:
        return NeuronSpec(kind=IF, **common)
    return None
