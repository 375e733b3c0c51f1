"""What a fused kernel needs to know about a neuron, and the constants every kernel reads.

A neuron describes itself to the kernels (`MultiStepNeuron.kernel_spec()` in dst/neuron.py): its charge equation,
reset, threshold and surrogate, as a `NeuronSpec`. Nothing here imports dst.neuron. The dynamics are defined once, by
`charge` in dst/neuron.py; every backend restates that equation with the same operations in the same order (so spikes
are bit-identical to `multistep_reference`) and adds its hand-written derivatives.

`KernelConstants` holds the numbers the kernels read (threshold, reset, rest, surrogate scales, and their values as
the tensor dtype rounds them), named once, and renders them in each backend's layout: `NUMBA_LAYOUT` (a small float
array, read by index in dst/kernels/numba) and `TRITON_LAYOUT` (a device tensor, read by offset in
dst/kernels/triton). Each backend reads its slots by the names below, never by a bare number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import torch


class Charge(IntEnum):
    """The charge equations the kernels know (H: membrane potential before firing, V: after the last reset)."""
    IF = 0                  # H = V + X
    LIF = 1                 # H = V + (X - (V - rest)) * k
    LIF_NO_DECAY_INPUT = 2  # H = V - (V - rest) * k + X


class SurrogateKind(IntEnum):
    """The surrogate gradients the kernels know (dst/surrogate.py)."""
    ATAN = 0
    SIGMOID = 1


SURROGATE_KINDS = {"atan": SurrogateKind.ATAN, "sigmoid": SurrogateKind.SIGMOID}


@dataclass(frozen=True)
class NeuronSpec:
    """A multi-step neuron as the kernels see it.

    kind:     the charge equation (Charge)
    v_reset:  the hard reset's target, None for a soft (subtractive) reset
    learn_k:  k is a tensor whose gradient is wanted (PLIF); otherwise k is a constant (LIF) or unused (IF)
    """

    kind: Charge
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
        """v_reset for a hard reset, 0 for a soft one: the initial V, and the leak's target."""
        return 0.0 if self.v_reset is None else self.v_reset

    @property
    def surrogate_kind(self) -> SurrogateKind:
        return SURROGATE_KINDS[self.surrogate]

    @property
    def surrogate_scales(self) -> tuple[float, float]:
        """(a, ha) of the surrogate derivative: ATan's (pi/2 * alpha, alpha/2), as dst.surrogate.atan_grad computes
        alpha/2 / (1 + (pi/2 * alpha * u)^2); Sigmoid's (alpha, alpha), for alpha * sig(alpha u) (1 - sig(alpha u))."""
        if self.surrogate_kind == SurrogateKind.ATAN:
            return math.pi / 2 * self.alpha, self.alpha / 2
        return self.alpha, self.alpha


def _as_dtype(value: float, dtype: torch.dtype, via: torch.dtype = torch.float64) -> float:
    """The value as a tensor of `dtype` holds it, converted through `via`."""
    return torch.tensor(value, dtype=via).to(dtype).item()


@dataclass(frozen=True)
class KernelConstants:
    """The scalars of a neuron as a kernel for one tensor dtype reads them.

    th:            the threshold in H - v_th
    reset:         v_reset (0 for a soft reset) as the backward's dV/dH term uses it
    rest:          v_reset or 0, in V - rest
    k:             LIF's decay 1/tau (0 for IF; PLIF's sigmoid(w) when the backend takes k here)
    a, ha:         the surrogate's scales (NeuronSpec.surrogate_scales)
    th_rounded:    v_th as the tensor dtype holds it (v_th * S in a soft reset)
    reset_rounded: v_reset as the tensor dtype holds it (v_reset * S in a hard reset)
    v0:            the initial V, full_like(x, rest)
    The two constructors follow eager PyTorch's treatment of a Python scalar on each device, so the kernels round
    as the reference loop does there.
    """

    th: float
    reset: float
    rest: float
    k: float
    a: float
    ha: float
    th_rounded: float
    reset_rounded: float
    v0: float
    one: float = 1.0
    zero: float = 0.0

    @classmethod
    def for_cpu(cls, spec: NeuronSpec, k: float, dtype: torch.dtype) -> "KernelConstants":
        """Eager PyTorch on CPU: add/sub cast a scalar to the tensor dtype (for bfloat16 the threshold in H - v_th and
        `rest` in V - rest are bf16-rounded); mul keeps it in the compute dtype (float32 for bfloat16) and rounds the
        product (v_th * S, v_reset * S, LIF's * k)."""
        opmath = torch.float64 if dtype == torch.float64 else torch.float32
        reset = spec.v_reset if spec.v_reset is not None else 0.0
        a, ha = spec.surrogate_scales
        return cls(th=_as_dtype(spec.v_threshold, dtype), reset=reset, rest=_as_dtype(spec.rest, dtype), k=k,
                   a=a, ha=ha, th_rounded=_as_dtype(spec.v_threshold, dtype, via=opmath),
                   reset_rounded=_as_dtype(reset, dtype, via=opmath), v0=_as_dtype(spec.rest, dtype))

    @classmethod
    def for_cuda(cls, spec: NeuronSpec, dtype: torch.dtype) -> "KernelConstants":
        """Eager PyTorch on CUDA: scalars stay in the compute dtype; only v_reset * S, v_th * S and
        full_like(x, rest) take the tensor dtype's value. k travels in a tensor of its own (it may be learned)."""
        reset = spec.v_reset if spec.v_reset is not None else 0.0
        a, ha = spec.surrogate_scales
        return cls(th=spec.v_threshold, reset=reset, rest=spec.rest, k=0.0, a=a, ha=ha,
                   th_rounded=_as_dtype(spec.v_threshold, dtype), reset_rounded=_as_dtype(reset, dtype),
                   v0=_as_dtype(spec.rest, dtype))

    def values(self, layout: tuple[str, ...]) -> list[float]:
        """The constants in a backend's slot order."""
        return [getattr(self, name) for name in layout]


# Slot order of each backend's constants; the kernels read them through the SLOT indices below.
NUMBA_LAYOUT = ("th", "reset", "rest", "k", "a", "ha", "one", "zero", "th_rounded", "reset_rounded", "v0")
TRITON_LAYOUT = ("th", "reset_rounded", "rest", "a", "ha", "th_rounded", "v0")
NUMBA_SLOT = {name: i for i, name in enumerate(NUMBA_LAYOUT)}
TRITON_SLOT = {name: i for i, name in enumerate(TRITON_LAYOUT)}
