"""The fused multi-step neuron as Triton kernels (CUDA; also runs on CPU tensors under TRITON_INTERPRET=1 for tests).

One program per BLOCK elements of a time step; the loop over T runs inside the program with V in registers.
Forward reads X and writes S once. Backward recomputes H[t] for all t into the dL/dX buffer (same program, same
elements, so the values come back from L2), then walks t = T-1..0 reading H[t] and dL/dS[t] and overwriting the buffer
with dL/dX[t]: nothing but X is kept between forward and backward.

Arithmetic is in float32 (float64 for float64 tensors). For bfloat16/float16 tensors every intermediate of the forward
is rounded to the tensor dtype after each operation, as eager PyTorch on CUDA does (Python scalars kept in float32),
so spikes equal the reference loop's on the GPU. (Eager PyTorch on CPU rounds an added or subtracted scalar to bf16
first; the CPU kernels follow that, see dst/kernels/cpu.py. So under TRITON_INTERPRET on CPU tensors, bf16 spikes can
differ from the CPU reference at inexact thresholds; the interpreter's own bf16 rounding is not exact either.)
"""
from __future__ import annotations

import os

import torch

from dst.kernels.layout import rows_layout
from dst.kernels.spec import NeuronSpec

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None

# Elements per program and warps per program; DST_TRITON_BLOCK / DST_TRITON_WARPS override them (for tuning runs).
BLOCK = int(os.environ.get("DST_TRITON_BLOCK", "1024"))
NUM_WARPS = int(os.environ.get("DST_TRITON_WARPS", "4"))


def triton_available() -> bool:
    return triton is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if triton is not None:

    @triton.jit
    def _rnd(v, LOW: tl.constexpr, DT: tl.constexpr):
        # Round to the tensor dtype and back: eager PyTorch's rounding after each bf16/fp16 operation.
        if LOW:
            v = v.to(DT).to(v.dtype)
        return v

    @triton.jit
    def _charge(v, x, k, rest, KIND: tl.constexpr, LOW: tl.constexpr, DT: tl.constexpr):
        if KIND == 0:    # IF: H = V + X
            h = _rnd(v + x, LOW, DT)
        elif KIND == 1:  # LIF: H = V + (X - (V - rest)) * k
            h = _rnd(v + _rnd(_rnd(x - _rnd(v - rest, LOW, DT), LOW, DT) * k, LOW, DT), LOW, DT)
        else:            # LIF without decay_input: H = V - (V - rest) * k + X
            h = _rnd(_rnd(v - _rnd(_rnd(v - rest, LOW, DT) * k, LOW, DT), LOW, DT) + x, LOW, DT)
        return h

    @triton.jit
    def _after_reset(h, s, th_r, reset_r, HARD: tl.constexpr, LOW: tl.constexpr, DT: tl.constexpr):
        if HARD:  # H * (1 - S) + v_reset * S
            v = tl.where(s, reset_r, h)
        else:     # H - v_th * S
            v = tl.where(s, _rnd(h - th_r, LOW, DT), h)
        return v

    @triton.jit(do_not_specialize=["M", "x_rs", "T"])
    def _forward_kernel(x_ptr, out_ptr, c_ptr, k_ptr, M, x_rs, T,
                        KIND: tl.constexpr, HARD: tl.constexpr, LOW: tl.constexpr, DT: tl.constexpr,
                        CDT: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        th = tl.load(c_ptr + 0)
        reset_r = tl.load(c_ptr + 1)
        rest = tl.load(c_ptr + 2)
        th_r = tl.load(c_ptr + 5)
        k = tl.load(k_ptr).to(CDT)
        v = tl.zeros([BLOCK], CDT) + tl.load(c_ptr + 6)
        x_ptrs = x_ptr + offs
        o_ptrs = out_ptr + offs
        for _t in range(T):
            x = tl.load(x_ptrs, mask=mask, other=0.0).to(CDT)
            h = _charge(v, x, k, rest, KIND, LOW, DT)
            s = h - th >= 0
            tl.store(o_ptrs, tl.where(s, 1.0, 0.0).to(out_ptr.dtype.element_ty), mask=mask)
            v = _after_reset(h, s, th_r, reset_r, HARD, LOW, DT)
            x_ptrs += x_rs
            o_ptrs += M

    @triton.jit(do_not_specialize=["M", "x_rs", "g_rs", "T"])
    def _backward_kernel(x_ptr, g_ptr, gx_ptr, c_ptr, k_ptr, partial_ptr, M, x_rs, g_rs, T,
                         KIND: tl.constexpr, HARD: tl.constexpr, DETACH: tl.constexpr, SURROGATE: tl.constexpr,
                         LEARN_K: tl.constexpr, LOW: tl.constexpr, DT: tl.constexpr, CDT: tl.constexpr,
                         BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        th = tl.load(c_ptr + 0)
        reset_r = tl.load(c_ptr + 1)
        rest = tl.load(c_ptr + 2)
        a = tl.load(c_ptr + 3)
        ha = tl.load(c_ptr + 4)
        th_r = tl.load(c_ptr + 5)
        v0 = tl.load(c_ptr + 6)
        k = tl.load(k_ptr).to(CDT)
        # Pass 1: recompute H[t] into the gradient buffer.
        v = tl.zeros([BLOCK], CDT) + v0
        x_ptrs = x_ptr + offs
        h_ptrs = gx_ptr + offs
        for _t in range(T):
            x = tl.load(x_ptrs, mask=mask, other=0.0).to(CDT)
            h = _charge(v, x, k, rest, KIND, LOW, DT)
            tl.store(h_ptrs, h.to(gx_ptr.dtype.element_ty), mask=mask)
            v = _after_reset(h, h - th >= 0, th_r, reset_r, HARD, LOW, DT)
            x_ptrs += x_rs
            h_ptrs += M
        # Pass 2: BPTT from t = T-1 down to 0; the pointers now sit one step past the end.
        gv = tl.zeros([BLOCK], CDT)
        acc = tl.zeros([BLOCK], CDT)
        g_ptrs = g_ptr + offs + (T - 1).to(tl.int64) * g_rs
        for i in range(T):
            t = T - 1 - i
            h_ptrs -= M
            x_ptrs -= x_rs
            h = tl.load(h_ptrs, mask=mask, other=0.0).to(CDT)
            go = tl.load(g_ptrs, mask=mask, other=0.0).to(CDT)
            u = h - th
            s = u >= 0
            if SURROGATE == 0:  # ATan: alpha/2 / (1 + (pi/2 alpha u)^2)
                y = a * u
                sg = (1.0 / (1.0 + y * y)) * ha
            else:               # Sigmoid: alpha sig(alpha u) (1 - sig(alpha u))
                sig = tl.sigmoid(a * u)
                sg = ha * sig * (1.0 - sig)
            if HARD:
                dvdh = tl.where(s, 0.0, 1.0).to(CDT)
                if not DETACH:
                    dvdh = dvdh + (reset_r - h) * sg
            else:
                dvdh = tl.zeros([BLOCK], CDT) + 1.0
                if not DETACH:
                    dvdh = dvdh - th * sg
            gh = go * sg + gv * dvdh
            if LEARN_K:
                has_prev = (offs * 0 + t) > 0   # as a tensor: t is a plain int under the interpreter
                hp = tl.load(h_ptrs - M, mask=mask & has_prev, other=0.0).to(CDT)
                vprev = tl.where(has_prev, _after_reset(hp, hp - th >= 0, th_r, reset_r, HARD, LOW, DT), v0)
                if KIND == 1:
                    x = tl.load(x_ptrs, mask=mask, other=0.0).to(CDT)
                    dk = x - (vprev - rest)
                else:
                    dk = rest - vprev
                acc += tl.where(mask, gh * dk, 0.0)
            if KIND == 1:
                gxv = gh * k
            else:
                gxv = gh
            if KIND == 0:
                gv = gh
            else:
                gv = gh * (1.0 - k)
            tl.store(h_ptrs, gxv.to(gx_ptr.dtype.element_ty), mask=mask)
            g_ptrs -= g_rs
        if LEARN_K:
            tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


_TL_DTYPES = {}


def _tl_dtype(dtype: torch.dtype):
    if not _TL_DTYPES:
        _TL_DTYPES.update({torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16,
                           torch.float16: tl.float16})
    return _TL_DTYPES[dtype]


def _constants(spec: NeuronSpec, dtype: torch.dtype, device) -> torch.Tensor:
    """[th, reset, rest, a, ha, th rounded, V0] in the compute dtype. 'rounded' = as a value of the tensor dtype
    (what eager PyTorch gets for v_reset * S, v_th * S and full_like(x, v_reset))."""
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    rnd = lambda v: torch.tensor(v, dtype=torch.float64).to(dtype).item()  # noqa: E731
    a, ha = (spec.atan_scale, spec.alpha / 2) if spec.surrogate == "atan" else (spec.alpha, spec.alpha)
    reset = spec.v_reset if spec.v_reset is not None else 0.0
    values = [spec.v_threshold, rnd(reset), spec.rest, a, ha, rnd(spec.v_threshold), rnd(spec.rest)]
    return torch.tensor(values, dtype=torch.float64).to(cdt).to(device)


_CONSTANTS: dict = {}


def _cached_constants(spec, dtype, device):
    key = (spec, dtype, str(device))
    c = _CONSTANTS.get(key)
    if c is None:
        c = _CONSTANTS[key] = _constants(spec, dtype, device)
    return c


def _k_tensor(k, dtype, device) -> torch.Tensor:
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    if isinstance(k, torch.Tensor):
        return k.detach().reshape(1).to(cdt)
    key = ("k", 0.0 if k is None else float(k), dtype, str(device))
    t = _CONSTANTS.get(key)
    if t is None:
        # eager PyTorch multiplies by a Python float in the compute dtype (float32 for bf16/fp16/fp32 tensors)
        t = _CONSTANTS[key] = torch.tensor([0.0 if k is None else float(k)], dtype=torch.float64).to(cdt).to(device)
    return t


class TritonImpl:
    name = "triton"

    @staticmethod
    def supports(x: torch.Tensor, spec: NeuronSpec) -> bool:
        return (triton is not None and (x.is_cuda or interpreting())
                and x.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
                and spec.surrogate in ("atan", "sigmoid"))

    @staticmethod
    def _grid(M):
        return (triton.cdiv(M, BLOCK),)

    @staticmethod
    def forward(x: torch.Tensor, spec: NeuronSpec, k) -> torch.Tensor:
        layout = rows_layout(x)
        out, out_rows = layout.empty(x)
        if x.numel() == 0:
            return out
        rows = layout.rows_of(x.detach())
        x_rs = rows.stride(0) if layout.T > 1 else layout.M
        _forward_kernel[TritonImpl._grid(layout.M)](
            rows, out_rows, _cached_constants(spec, x.dtype, x.device), _k_tensor(k, x.dtype, x.device),
            layout.M, x_rs, layout.T,
            KIND=spec.kind, HARD=spec.hard, LOW=x.dtype in (torch.bfloat16, torch.float16), DT=_tl_dtype(x.dtype),
            CDT=tl.float64 if x.dtype == torch.float64 else tl.float32, BLOCK=BLOCK, num_warps=NUM_WARPS)
        return out

    @staticmethod
    def backward(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k):
        layout = rows_layout(x)
        gx, gx_rows = layout.empty(x)
        nprog = triton.cdiv(layout.M, BLOCK)
        partial = torch.zeros(max(nprog, 1), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                              device=x.device)
        if x.numel():
            rows = layout.rows_of(x.detach())
            g_rows = layout.rows_of(g.detach())
            x_rs = rows.stride(0) if layout.T > 1 else layout.M
            g_rs = g_rows.stride(0) if layout.T > 1 else layout.M
            _backward_kernel[(nprog,)](
                rows, g_rows, gx_rows, _cached_constants(spec, x.dtype, x.device), _k_tensor(k, x.dtype, x.device),
                partial, layout.M, x_rs, g_rs, layout.T,
                KIND=spec.kind, HARD=spec.hard, DETACH=spec.detach_reset, SURROGATE=spec.surrogate_id,
                LEARN_K=spec.learn_k, LOW=x.dtype in (torch.bfloat16, torch.float16), DT=_tl_dtype(x.dtype),
                CDT=tl.float64 if x.dtype == torch.float64 else tl.float32, BLOCK=BLOCK, num_warps=NUM_WARPS)
        gk = partial.sum(dtype=torch.float64) if spec.learn_k else None
        return gx, gk
