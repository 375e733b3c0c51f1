"""The Triton kernels of the fused multi-step neuron (neuron.py launches them). Imported lazily, on the first CUDA
(or interpreted) call: no CPU-only process should pay for importing Triton.

One program per BLOCK elements of a time step; the loop over T runs inside the program with V in registers.
Forward reads X and writes S once. Backward recomputes H[t] for all t into the dL/dX buffer (same program, same
elements, so the values come back from L2), then walks t = T-1..0 reading H[t] and dL/dS[t] and overwriting the buffer
with dL/dX[t]: nothing but X is kept between forward and backward.

c_ptr holds KernelConstants.for_cuda in TRITON_LAYOUT (dst/kernels/spec.py) in the compute dtype (CDT), read at the
C_* slots below; k_ptr the decay k (launch.k_tensor).
"""
import triton
import triton.language as tl

from dst.kernels.spec import TRITON_SLOT, Charge

# The charge kinds (KIND) and the constants' slots, as compile-time constants of the kernels.
IF = tl.constexpr(int(Charge.IF))
LIF = tl.constexpr(int(Charge.LIF))
C_TH = tl.constexpr(TRITON_SLOT["th"])
C_RESET_R = tl.constexpr(TRITON_SLOT["reset_rounded"])
C_REST = tl.constexpr(TRITON_SLOT["rest"])
C_A = tl.constexpr(TRITON_SLOT["a"])
C_HA = tl.constexpr(TRITON_SLOT["ha"])
C_TH_R = tl.constexpr(TRITON_SLOT["th_rounded"])
C_V0 = tl.constexpr(TRITON_SLOT["v0"])


@triton.jit
def _block(M, BLOCK: tl.constexpr):
    """This program's element offsets in a time step (int64: T * M may pass 2**31) and their in-range mask."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < M


@triton.jit
def _neuron_constants(c_ptr, k_ptr, CDT: tl.constexpr):
    """(th, reset_r, rest, th_r, v0, k): what both passes need to recompute H."""
    return (tl.load(c_ptr + C_TH), tl.load(c_ptr + C_RESET_R), tl.load(c_ptr + C_REST), tl.load(c_ptr + C_TH_R),
            tl.load(c_ptr + C_V0), tl.load(k_ptr).to(CDT))


@triton.jit
def _rnd(v, LOW: tl.constexpr, DT: tl.constexpr):
    # Round to the tensor dtype and back: eager PyTorch's rounding after each bf16/fp16 operation.
    if LOW:
        v = v.to(DT).to(v.dtype)
    return v


@triton.jit
def _charge(v, x, k, rest, KIND: tl.constexpr, LOW: tl.constexpr, DT: tl.constexpr):
    if KIND == IF:    # H = V + X
        h = _rnd(v + x, LOW, DT)
    elif KIND == LIF:  # H = V + (X - (V - rest)) * k
        h = _rnd(v + _rnd(_rnd(x - _rnd(v - rest, LOW, DT), LOW, DT) * k, LOW, DT), LOW, DT)
    else:              # LIF without decay_input: H = V - (V - rest) * k + X
        h = _rnd(_rnd(v - _rnd(_rnd(v - rest, LOW, DT) * k, LOW, DT), LOW, DT) + x, LOW, DT)
    return h


@triton.jit
def _after_reset(h, s, th_r, reset_r, HARD: tl.constexpr, LOW: tl.constexpr, DT: tl.constexpr):
    if HARD:  # H * (1 - S) + v_reset * S
        v = tl.where(s, reset_r, h)
    else:     # H - v_th * S
        v = tl.where(s, _rnd(h - th_r, LOW, DT), h)
    return v


@triton.jit
def _step(v, x_ptrs, mask, th, k, rest, th_r, reset_r, KIND: tl.constexpr, HARD: tl.constexpr, LOW: tl.constexpr,
          DT: tl.constexpr, CDT: tl.constexpr):
    """One step from V: (H, S, V after the reset), X[t] loaded from x_ptrs."""
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(CDT)
    h = _charge(v, x, k, rest, KIND, LOW, DT)
    s = h - th >= 0
    return h, s, _after_reset(h, s, th_r, reset_r, HARD, LOW, DT)


@triton.jit
def _dl_dh(h, go, gv, th, reset_r, a, ha, HARD: tl.constexpr, DETACH: tl.constexpr, SURROGATE: tl.constexpr,
           CDT: tl.constexpr):
    """dL/dH[t] from H[t], dL/dS[t] (go) and dL/dV[t] arriving from step t + 1 (gv)."""
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
        dvdh = tl.zeros_like(h) + 1.0
        if not DETACH:
            dvdh = dvdh - th * sg
    return go * sg + gv * dvdh


@triton.jit
def _dl_dx_dv(gh, k, KIND: tl.constexpr):
    """(dL/dX[t], dL/dV[t-1]) from dL/dH[t], through the charge equation."""
    if KIND == LIF:
        gx = gh * k
    else:
        gx = gh
    if KIND == IF:
        gv = gh
    else:
        gv = gh * (1.0 - k)
    return gx, gv


@triton.jit(do_not_specialize=["M", "x_rs", "T"])
def _forward_kernel(x_ptr, out_ptr, c_ptr, k_ptr, M, x_rs, T,
                    KIND: tl.constexpr, HARD: tl.constexpr, LOW: tl.constexpr, DT: tl.constexpr,
                    CDT: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask = _block(M, BLOCK)
    th, reset_r, rest, th_r, v0, k = _neuron_constants(c_ptr, k_ptr, CDT)
    v = tl.zeros([BLOCK], CDT) + v0
    x_ptrs = x_ptr + offs
    o_ptrs = out_ptr + offs
    for _t in range(T):
        _h, s, v = _step(v, x_ptrs, mask, th, k, rest, th_r, reset_r, KIND, HARD, LOW, DT, CDT)
        tl.store(o_ptrs, tl.where(s, 1.0, 0.0).to(out_ptr.dtype.element_ty), mask=mask)
        x_ptrs += x_rs
        o_ptrs += M


@triton.jit(do_not_specialize=["M", "x_rs", "g_rs", "T"])
def _backward_kernel(x_ptr, g_ptr, gx_ptr, c_ptr, k_ptr, partial_ptr, M, x_rs, g_rs, T,
                     KIND: tl.constexpr, HARD: tl.constexpr, DETACH: tl.constexpr, SURROGATE: tl.constexpr,
                     LEARN_K: tl.constexpr, LOW: tl.constexpr, DT: tl.constexpr, CDT: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs, mask = _block(M, BLOCK)
    th, reset_r, rest, th_r, v0, k = _neuron_constants(c_ptr, k_ptr, CDT)
    a = tl.load(c_ptr + C_A)
    ha = tl.load(c_ptr + C_HA)
    # Pass 1: recompute H[t] into the gradient buffer.
    v = tl.zeros([BLOCK], CDT) + v0
    x_ptrs = x_ptr + offs
    h_ptrs = gx_ptr + offs
    for _t in range(T):
        h, _s, v = _step(v, x_ptrs, mask, th, k, rest, th_r, reset_r, KIND, HARD, LOW, DT, CDT)
        tl.store(h_ptrs, h.to(gx_ptr.dtype.element_ty), mask=mask)
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
        gh = _dl_dh(h, go, gv, th, reset_r, a, ha, HARD, DETACH, SURROGATE, CDT)
        if LEARN_K:
            has_prev = (offs * 0 + t) > 0   # as a tensor: t is a plain int under the interpreter
            hp = tl.load(h_ptrs - M, mask=mask & has_prev, other=0.0).to(CDT)
            vprev = tl.where(has_prev, _after_reset(hp, hp - th >= 0, th_r, reset_r, HARD, LOW, DT), v0)
            if KIND == LIF:
                x = tl.load(x_ptrs, mask=mask, other=0.0).to(CDT)
                dk = x - (vprev - rest)
            else:
                dk = rest - vprev
            acc += tl.where(mask, gh * dk, 0.0)
        gxv, gv = _dl_dx_dv(gh, k, KIND)
        tl.store(h_ptrs, gxv.to(gx_ptr.dtype.element_ty), mask=mask)
        g_ptrs -= g_rs
    if LEARN_K:
        tl.store(partial_ptr + tl.program_id(0), tl.sum(acc, axis=0))
