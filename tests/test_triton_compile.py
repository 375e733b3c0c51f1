"""The Triton kernels compile for the GPU this project trains on (an H200, sm_90), checked here without a GPU.

Triton's interpreter (tests/test_kernels_triton.py, tests/test_spike_pool_triton.py) checks what the kernels compute
but never runs the GPU compiler, which is where type, layout and reduction errors surface. Here every kernel is
compiled ahead of time, through Triton's NVIDIA backend and the ptxas that ships with Triton, to a cubin: in the
configurations the launchers use (dst/kernels/triton/neuron.py, spike_pool.py), for each float dtype, both memory layouts of the
fused stem, and the constexpr branches (neuron kind, reset, surrogate, detach, learned decay), with the launchers'
compile options (dst.kernels.triton.launch.LAUNCH_OPTIONS). The forward kernels must hold no fused multiply-add: eager
PyTorch rounds every product and sum apart, and the spikes must be the reference loop's bit for bit.
"""
from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import triton.language as tl  # noqa: E402

from dst.kernels.spec import Charge, SurrogateKind  # noqa: E402

H200 = GPUTarget("cuda", 90, 32)
DTYPES = {"fp32": (tl.float32, "fp32"), "bf16": (tl.bfloat16, "fp32"), "fp16": (tl.float16, "fp32"),
          "fp64": (tl.float64, "fp64")}   # data dtype -> (Triton dtype, compute dtype)
CONSTANT_POINTERS = ("c_ptr", "k_ptr", "partial_ptr")


def _compile(kernel, dtype: str, **constexprs):
    """Compiles `kernel` for the H200 with pointers of `dtype` (the constants in the compute dtype, the pool's
    winners int8) and 32-bit scalars; returns the compiled kernel."""
    tdt, cdt = DTYPES[dtype]
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "sel_ptr":
            signature[name] = "*i8"
        elif name.endswith("_ptr"):
            signature[name] = "*" + (cdt if name in CONSTANT_POINTERS else dtype)
        else:
            signature[name] = "i32"
    constexprs = dict(constexprs, LOW=dtype in ("bf16", "fp16"), DT=tdt, CDT=getattr(tl, {"fp32": "float32",
                                                                                       "fp64": "float64"}[cdt]))
    from dst.kernels.triton.launch import LAUNCH_OPTIONS
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    try:
        return triton.compile(source, target=H200, options=dict(LAUNCH_OPTIONS))
    except FileNotFoundError as e:   # a Triton build without the NVIDIA toolchain (ptxas)
        pytest.skip(f"Triton cannot compile for CUDA here: {e}")


def _neuron_kernels():
    from dst.kernels.triton import neuron_kernels
    return neuron_kernels


def _spike_pool_kernels():
    from dst.kernels.triton import spike_pool_kernels
    return spike_pool_kernels


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind, hard", [(Charge.IF, True), (Charge.LIF, False), (Charge.LIF_NO_DECAY_INPUT, True)],
                         ids=["if-hard", "lif-soft", "lif-nodecay"])
def test_neuron_forward_compiles(dtype, kind, hard):
    k = _compile(_neuron_kernels()._forward_kernel, dtype, KIND=int(kind), HARD=hard, BLOCK=1024)
    assert k.asm["cubin"] and "fma." not in k.asm["ptx"]


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("kind, hard, detach, surrogate, learn_k",
                         [(Charge.IF, True, True, SurrogateKind.ATAN, False),
                          (Charge.LIF, False, False, SurrogateKind.SIGMOID, False),
                          (Charge.LIF, True, False, SurrogateKind.ATAN, True),
                          (Charge.LIF_NO_DECAY_INPUT, False, True, SurrogateKind.SIGMOID, True)],
                         ids=["if", "lif-soft-sigmoid", "plif", "plif-nodecay-soft-sigmoid"])
def test_neuron_backward_compiles(dtype, kind, hard, detach, surrogate, learn_k):
    k = _compile(_neuron_kernels()._backward_kernel, dtype, KIND=int(kind), HARD=hard, DETACH=detach, SURROGATE=int(surrogate),
                 LEARN_K=learn_k, BLOCK=1024)
    assert k.asm["cubin"]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("last_c", [True, False], ids=["channels-last", "nchw"])
@pytest.mark.parametrize("geometry", [(3, 2, 1), (2, 2, 0)], ids=["3x3s2", "2x2s2"])
def test_fused_stem_compiles(dtype, last_c, geometry):
    from dst.kernels.triton.launch import pow2 as _pow2
    from dst.kernels.triton.spike_pool import SPIKE_POOL_BLOCK
    k, s, p = geometry
    kernels = _spike_pool_kernels()
    forward = _compile(kernels._forward_kernel, dtype, K=k, S=s, P=p, KK=_pow2(k * k), LAST_C=last_c,
                       KIND=int(Charge.LIF), HARD=True, BLOCK=SPIKE_POOL_BLOCK)
    backward = _compile(kernels._backward_kernel, dtype, K=k, S=s, P=p, WINDOWS=-(-k // s), TP=_pow2(4),
                        LAST_C=last_c, KIND=int(Charge.IF), HARD=False, DETACH=False,
                        SURROGATE=int(SurrogateKind.SIGMOID), BLOCK=SPIKE_POOL_BLOCK)
    assert forward.asm["cubin"] and backward.asm["cubin"] and "fma." not in forward.asm["ptx"]
