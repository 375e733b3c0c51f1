"""Numba kernels of the fused multi-step neuron (CPU: float32, float64 and bfloat16). Imported lazily: numba is
optional. dst/kernels/numba/neuron.py launches them.

Work is split into blocks of B elements, run in parallel (prange); inside a block the loop over T keeps V in a
buffer (four steps per pass over it, V in a register in between), so forward reads X once and writes S once. Backward
recomputes H for the block into a T x B scratch (L2/L3 sized, see the block sizes in neuron.py), then runs the BPTT
recurrence backwards: it reads X and dL/dS once and writes dL/dX once. Nothing but X is kept between forward and
backward. At T = 4 (the usual setting) each pass is a single loop with everything in registers: forward needs no V
buffer, and backward recomputes H[0..3] of an element and runs its four BPTT steps without any scratch.

Vectorisation: each per-step loop lives in its own small function (inline="never") over 1-D slices starting at 0, with
error_model="numpy" (no ZeroDivisionError check in the surrogate's division). In that form LLVM vectorises every loop
and unswitches the flag branches; written as one big loop nest it ran scalar. Inside those loops no array is passed to
another function (see _ld / _st / _rnd): numba increfs and decrefs an array argument on every call, and those calls,
pruned only after LLVM's vectoriser has run, leave the loops scalar.

Dtypes: arrays are float32/float64, or bfloat16 passed as uint16 bit patterns. The same code serves all three through
`_ld` / `_st` / `_rnd` (given an element or the array's dtype), identities for float arrays; for bfloat16 they widen
to float32, round to nearest even on store, and round every intermediate of the forward to bfloat16 exactly as eager
PyTorch does after each bf16 operation, so spikes stay bit-identical to the reference loop. Backward arithmetic is
float32 for bfloat16 (dL/dX rounded once at the end).

Specialised kernels: the neuron's flags (kind, hard reset, detach_reset, Sigmoid, PLIF's dL/dk) are arguments of
the step functions, and LLVM if-converts the branches on them into masked vector operations instead of unswitching the
loops, so a generic kernel computes every variant for every element. The usual configurations (SPECIALISED_KINDS: IF
and LIF with a hard, detached reset and ATan, in float32 or bfloat16) get kernels of their own whose flags are
compile-time constants: a closure's constants reach the step functions as literal types, numba compiles them for those
values and the branches fold away (the disk cache keys the closure's values). Every other configuration runs the
generic kernels, since each forward and backward pair takes seconds to compile on first use.
What these choices measured: benchmarks/results/design-measurements.md.

Arrays are passed as 1-D contiguous buffers plus a row stride (rows may be 0 apart for an expanded input). Constants
come in `c`, in the compute dtype (float32 for bfloat16), at the C_* slots: KernelConstants.for_cpu in NUMBA_LAYOUT
(dst/kernels/spec.py), which rounds them the way eager PyTorch on CPU treats a Python scalar. The formulas and their
order mirror dst/neuron.py's charge and multistep_reference exactly.
"""
from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from dst.kernels.spec import NUMBA_SLOT, Charge

# The charge kinds as plain ints (numba folds module-level ints into the compiled code as constants).
IF, LIF, LIF_NO_DECAY_INPUT = int(Charge.IF), int(Charge.LIF), int(Charge.LIF_NO_DECAY_INPUT)
# Slots of the constants array `c` (KernelConstants in NUMBA_LAYOUT, dst/kernels/spec.py).
C_TH, C_RESET, C_REST, C_K = NUMBA_SLOT["th"], NUMBA_SLOT["reset"], NUMBA_SLOT["rest"], NUMBA_SLOT["k"]
C_A, C_HA, C_ONE, C_ZERO = NUMBA_SLOT["a"], NUMBA_SLOT["ha"], NUMBA_SLOT["one"], NUMBA_SLOT["zero"]
C_TH_R, C_RESET_R, C_V0 = NUMBA_SLOT["th_rounded"], NUMBA_SLOT["reset_rounded"], NUMBA_SLOT["v0"]

_step = njit(cache=True, inline="never", error_model="numpy")
_kernel = njit(parallel=True, cache=True, error_model="numpy")


# ---------------------------------------------------------------------------------------------------- bfloat16 bits
@intrinsic
def _bits_as_f32(typingctx, u):
    """The float32 whose bit pattern is the low 32 bits of the integer u."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if u.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif u.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())
    return types.float32(u), codegen


@intrinsic
def _f32_bits(typingctx, f):
    if f != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@njit(cache=True, inline="always")
def _bf16_round_bits(f):
    """float32 -> its bfloat16 rounding (nearest even) as float32 bits (c10::BFloat16's rule; NaN kept)."""
    u = np.int64(_f32_bits(f))
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return u
    return (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000


def _ld(u):
    """An element just loaded from an array (u = a[j]) in the compute dtype."""


def _st(f, dt):
    """f rounded to the array dtype dt (a.dtype), ready to store (a[j] = _st(f, a.dtype))."""


def _rnd(f, dt):
    """f rounded to the array dtype dt (the identity unless it is bfloat16's uint16)."""


# These helpers take an element or a dtype, never an array: passing an array to a function inside a loop makes numba
# incref/decref it every iteration, and those calls, only pruned after LLVM's loop vectoriser has run, keep the loop
# scalar (the vectoriser's remark: "call instruction cannot be vectorized"). That made every step loop here scalar.
def _is_bf16(dt) -> bool:
    return isinstance(dt, types.DType) and dt.dtype == types.uint16


@overload(_ld)
def _ld_impl(u):
    if u == types.uint16:
        return lambda u: _bits_as_f32(np.uint32(u) << 16)
    return lambda u: u


@overload(_st)
def _st_impl(f, dt):
    if _is_bf16(dt):
        return lambda f, dt: np.uint16(_bf16_round_bits(f) >> 16)
    return lambda f, dt: f


@overload(_rnd)
def _rnd_impl(f, dt):
    if _is_bf16(dt):
        return lambda f, dt: _bits_as_f32(_bf16_round_bits(f))
    return lambda f, dt: f


# ---------------------------------------------------------------------------------------------------- one step
@njit(cache=True, inline="always")
def _charge(vv, x, kind, rest, k, dt):
    if kind == IF:
        return _rnd(vv + x, dt)
    if kind == LIF:
        return _rnd(vv + _rnd(_rnd(x - _rnd(vv - rest, dt), dt) * k, dt), dt)
    return _rnd(_rnd(vv - _rnd(_rnd(vv - rest, dt) * k, dt), dt) + x, dt)


@njit(cache=True, inline="always")
def _after_reset(h, fired, hard, reset_r, th_r, dt):
    if fired:
        return reset_r if hard else _rnd(h - th_r, dt)
    return h


@_step
def _charge_fire(v, xt, ot, kind, hard, th, reset_r, th_r, rest, k, one, zero):
    """One forward step: H = charge(V, X); S = H - th >= 0; V = reset(H, S). Writes S to ot."""
    dt = xt.dtype
    for j in range(xt.shape[0]):
        h = _charge(v[j], _ld(xt[j]), kind, rest, k, dt)
        fired = h - th >= zero
        ot[j] = _st(one if fired else zero, dt)
        v[j] = _after_reset(h, fired, hard, reset_r, th_r, dt)


@njit(cache=True, inline="always")
def _fire(vv, xj, kind, hard, th, reset_r, th_r, rest, k, one, zero, dt):
    """(S, V after reset) of one element and step, S ready to store."""
    h = _charge(vv, xj, kind, rest, k, dt)
    fired = h - th >= zero
    return _st(one if fired else zero, dt), _after_reset(h, fired, hard, reset_r, th_r, dt)


@_step
def _charge_fire4(v, x0, x1, x2, x3, o0, o1, o2, o3, kind, hard, th, reset_r, th_r, rest, k, one, zero):
    """Four forward steps in one pass: V stays in a register between them, so the V buffer (in L2 with the long
    blocks) is read and written once per four steps."""
    dt = x0.dtype
    for j in range(x0.shape[0]):
        o0[j], vv = _fire(v[j], _ld(x0[j]), kind, hard, th, reset_r, th_r, rest, k, one, zero, dt)
        o1[j], vv = _fire(vv, _ld(x1[j]), kind, hard, th, reset_r, th_r, rest, k, one, zero, dt)
        o2[j], vv = _fire(vv, _ld(x2[j]), kind, hard, th, reset_r, th_r, rest, k, one, zero, dt)
        o3[j], v[j] = _fire(vv, _ld(x3[j]), kind, hard, th, reset_r, th_r, rest, k, one, zero, dt)


@_step
def _charge_fire4_from_rest(x0, x1, x2, x3, o0, o1, o2, o3, kind, hard, th, reset_r, th_r, rest, k, v0, one, zero):
    """A whole T = 4 forward in one pass, starting from rest: no V buffer at all (the final V is not needed)."""
    dt = x0.dtype
    for j in range(x0.shape[0]):
        o0[j], vv = _fire(v0, _ld(x0[j]), kind, hard, th, reset_r, th_r, rest, k, one, zero, dt)
        o1[j], vv = _fire(vv, _ld(x1[j]), kind, hard, th, reset_r, th_r, rest, k, one, zero, dt)
        o2[j], vv = _fire(vv, _ld(x2[j]), kind, hard, th, reset_r, th_r, rest, k, one, zero, dt)
        o3[j], vv = _fire(vv, _ld(x3[j]), kind, hard, th, reset_r, th_r, rest, k, one, zero, dt)


@_step
def _charge_keep(v, xt, ht, kind, hard, th, reset_r, th_r, rest, k, zero):
    """The same step, keeping H (backward's recompute)."""
    dt = xt.dtype
    for j in range(xt.shape[0]):
        h = _charge(v[j], _ld(xt[j]), kind, rest, k, dt)
        ht[j] = h
        v[j] = _after_reset(h, h - th >= zero, hard, reset_r, th_r, dt)


@njit(cache=True, inline="always")
def _keep(vv, xj, kind, hard, th, reset_r, th_r, rest, k, zero, dt):
    """(H, V after reset) of one element and step."""
    h = _charge(vv, xj, kind, rest, k, dt)
    return h, _after_reset(h, h - th >= zero, hard, reset_r, th_r, dt)


@_step
def _charge_keep4(v, x0, x1, x2, x3, h0, h1, h2, h3, kind, hard, th, reset_r, th_r, rest, k, zero):
    """Four recompute steps in one pass (see _charge_fire4)."""
    dt = x0.dtype
    for j in range(x0.shape[0]):
        h0[j], vv = _keep(v[j], _ld(x0[j]), kind, hard, th, reset_r, th_r, rest, k, zero, dt)
        h1[j], vv = _keep(vv, _ld(x1[j]), kind, hard, th, reset_r, th_r, rest, k, zero, dt)
        h2[j], vv = _keep(vv, _ld(x2[j]), kind, hard, th, reset_r, th_r, rest, k, zero, dt)
        h3[j], v[j] = _keep(vv, _ld(x3[j]), kind, hard, th, reset_r, th_r, rest, k, zero, dt)


@_step
def _sigmoid_surrogate(ht, st, th, a, ha, one):
    """Sigmoid's surrogate gradient in a loop of its own: exp has no vector form here, so this loop runs scalar and
    is kept out of the vectorised recurrence. (ATan's is computed inside _bptt_atan.)"""
    for j in range(ht.shape[0]):
        sig = one / (one + np.exp(-(a * (ht[j] - th))))
        st[j] = ha * sig * (one - sig)


@_step
def _dk(hp, xt, dkt, first, kind, hard, th, reset_r, th_r, rest, v0, zero):
    """dH[t]/dk = X[t] - (V[t-1] - rest) (LIF) or -(V[t-1] - rest) (no decay_input), V[t-1] from H[t-1]."""
    dt = xt.dtype
    for j in range(xt.shape[0]):
        if first:
            vp = v0
        else:
            h = hp[j]
            vp = _after_reset(h, h - th >= zero, hard, reset_r, th_r, dt)
        if kind == LIF:
            dkt[j] = _ld(xt[j]) - (vp - rest)
        else:
            dkt[j] = rest - vp


@njit(cache=True, inline="always", error_model="numpy")
def _bptt_element(h, sg, go, gv, kind, hard, detach, th, reset, k, one_minus_k, one, zero):
    """(dL/dX[t], dL/dV[t-1], dL/dH[t]) of one element: dL/dH = dL/dS * sg + dL/dV[t] * dV/dH."""
    if hard:
        dvdh = zero if h - th >= zero else one
        if not detach:
            dvdh = dvdh + (reset - h) * sg
    else:
        dvdh = one
        if not detach:
            dvdh = dvdh - th * sg
    gh = go * sg + gv * dvdh
    if kind == IF:
        return gh, gh, gh
    if kind == LIF:
        return gh * k, gh * one_minus_k, gh
    return gh, gh * one_minus_k, gh


@njit(cache=True, inline="always", error_model="numpy")
def _atan_surrogate(h, th, a, ha, one):
    """alpha/2 / (1 + (pi/2 alpha u)^2), u = h - th, in dst.surrogate.atan_grad's order."""
    y = a * (h - th)
    return ha / (one + y * y)


@_step
def _bptt_atan(ht, gt, gv, gxt, dkt, acc, kind, hard, detach, learn_k, th, reset, k, a, ha, one, zero):
    """One backward step with ATan's surrogate computed inline."""
    one_minus_k = one - k
    dt = gxt.dtype
    for j in range(ht.shape[0]):
        h = ht[j]
        sg = _atan_surrogate(h, th, a, ha, one)
        gx, gv[j], gh = _bptt_element(h, sg, _ld(gt[j]), gv[j], kind, hard, detach, th, reset, k, one_minus_k,
                                      one, zero)
        gxt[j] = _st(gx, dt)
        if learn_k:
            acc[j] += gh * dkt[j]


@njit(cache=True, inline="always", error_model="numpy")
def _bptt_atan_raw(h, go, gv, kind, hard, detach, th, reset, k, one_minus_k, a, ha, one, zero):
    """(dL/dX in the compute dtype, dL/dV[t-1]) of one element and step, ATan's surrogate."""
    gx, gvp, gh = _bptt_element(h, _atan_surrogate(h, th, a, ha, one), go, gv, kind, hard, detach, th, reset, k,
                                one_minus_k, one, zero)
    return gx, gvp


@njit(cache=True, inline="always", error_model="numpy")
def _bptt_atan_step(h, go, gv, kind, hard, detach, th, reset, k, one_minus_k, a, ha, one, zero, dt):
    """(dL/dX ready to store, dL/dV[t-1]) of one element and step, ATan's surrogate."""
    gx, gvp = _bptt_atan_raw(h, go, gv, kind, hard, detach, th, reset, k, one_minus_k, a, ha, one, zero)
    return _st(gx, dt), gvp


@_step
def _bptt_atan4(h3, g3, gx3, h2, g2, gx2, h1, g1, gx1, h0, g0, gx0, gv, kind, hard, detach, th, reset, k, a, ha,
                one, zero):
    """Four backward steps (t, t - 1, t - 2, t - 3: rows 3, 2, 1, 0) in one pass, dL/dV kept in a register between
    them (see _charge_fire4). Without PLIF's dL/dk, which _bptt_atan handles."""
    omk = one - k
    dt = gx0.dtype
    for j in range(h0.shape[0]):
        gx3[j], g = _bptt_atan_step(h3[j], _ld(g3[j]), gv[j], kind, hard, detach, th, reset, k, omk, a, ha, one,
                                    zero, dt)
        gx2[j], g = _bptt_atan_step(h2[j], _ld(g2[j]), g, kind, hard, detach, th, reset, k, omk, a, ha, one, zero, dt)
        gx1[j], g = _bptt_atan_step(h1[j], _ld(g1[j]), g, kind, hard, detach, th, reset, k, omk, a, ha, one, zero, dt)
        gx0[j], gv[j] = _bptt_atan_step(h0[j], _ld(g0[j]), g, kind, hard, detach, th, reset, k, omk, a, ha, one,
                                        zero, dt)


@njit(cache=True, inline="always", error_model="numpy")
def _recompute_bptt_atan4_element(x0, x1, x2, x3, g0, g1, g2, g3, kind, hard, detach, th, reset, reset_r, th_r, rest,
                                  k, omk, a, ha, v0, one, zero, dt):
    """dL/dX[0..3] (compute dtype) of one element at T = 4: H[0..3] recomputed from X in registers, then the four
    BPTT steps, ATan's surrogate."""
    h0, vv = _keep(v0, x0, kind, hard, th, reset_r, th_r, rest, k, zero, dt)
    h1, vv = _keep(vv, x1, kind, hard, th, reset_r, th_r, rest, k, zero, dt)
    h2, vv = _keep(vv, x2, kind, hard, th, reset_r, th_r, rest, k, zero, dt)
    h3 = _charge(vv, x3, kind, rest, k, dt)
    d3, g = _bptt_atan_raw(h3, g3, zero, kind, hard, detach, th, reset, k, omk, a, ha, one, zero)
    d2, g = _bptt_atan_raw(h2, g2, g, kind, hard, detach, th, reset, k, omk, a, ha, one, zero)
    d1, g = _bptt_atan_raw(h1, g1, g, kind, hard, detach, th, reset, k, omk, a, ha, one, zero)
    d0, g = _bptt_atan_raw(h0, g0, g, kind, hard, detach, th, reset, k, omk, a, ha, one, zero)
    return d0, d1, d2, d3


@_step
def _recompute_bptt_atan4(x0, x1, x2, x3, g0, g1, g2, g3, gx0, gx1, gx2, gx3, kind, hard, detach, th, reset, reset_r,
                          th_r, rest, k, a, ha, v0, one, zero):
    """A whole T = 4 backward in one pass, no H scratch at all (at T = 4 the block's T x B scratch was the largest
    stream left, spilling this CPU's 1 MiB L2)."""
    omk = one - k
    dt = gx0.dtype
    for j in range(x0.shape[0]):
        d0, d1, d2, d3 = _recompute_bptt_atan4_element(
            _ld(x0[j]), _ld(x1[j]), _ld(x2[j]), _ld(x3[j]), _ld(g0[j]), _ld(g1[j]), _ld(g2[j]), _ld(g3[j]), kind,
            hard, detach, th, reset, reset_r, th_r, rest, k, omk, a, ha, v0, one, zero, dt)
        gx0[j] = _st(d0, dt)
        gx1[j] = _st(d1, dt)
        gx2[j] = _st(d2, dt)
        gx3[j] = _st(d3, dt)


@_step
def _recompute_bptt_atan4_summed(x0, x1, x2, x3, g0, g1, g2, g3, gx, kind, hard, detach, th, reset, reset_r, th_r,
                                 rest, k, a, ha, v0, one, zero):
    """The same for an input repeated over T (the stem): its gradient is the sum over the four steps, stored once (no
    [T, ...] gradient, and no separate sum over it). A loop of its own: a store branch inside one loop kept LLVM from
    vectorising it."""
    omk = one - k
    dt = gx.dtype
    for j in range(x0.shape[0]):
        d0, d1, d2, d3 = _recompute_bptt_atan4_element(
            _ld(x0[j]), _ld(x1[j]), _ld(x2[j]), _ld(x3[j]), _ld(g0[j]), _ld(g1[j]), _ld(g2[j]), _ld(g3[j]), kind,
            hard, detach, th, reset, reset_r, th_r, rest, k, omk, a, ha, v0, one, zero, dt)
        gx[j] = _st(((d0 + d1) + d2) + d3, dt)

@_step
def _recompute_bptt_atan4_dk(x0, x1, x2, x3, g0, g1, g2, g3, gx0, gx1, gx2, gx3, acc, kind, hard, detach, th, reset,
                             reset_r, th_r, rest, k, a, ha, v0, one, zero):
    """_recompute_bptt_atan4 for PLIF: also sums dL/dH[t] * dH[t]/dk over the four steps into acc, in the order and
    precision of the general path (_dk and _bptt_atan: t = 3..0, float64), from the V[t-1] it has in registers, so
    PLIF at T = 4 needs no H scratch and no pass per step."""
    omk = one - k
    dt = gx0.dtype
    for j in range(x0.shape[0]):
        xa, xb, xc, xd = _ld(x0[j]), _ld(x1[j]), _ld(x2[j]), _ld(x3[j])
        h0, va = _keep(v0, xa, kind, hard, th, reset_r, th_r, rest, k, zero, dt)
        h1, vb = _keep(va, xb, kind, hard, th, reset_r, th_r, rest, k, zero, dt)
        h2, vc = _keep(vb, xc, kind, hard, th, reset_r, th_r, rest, k, zero, dt)
        h3 = _charge(vc, xd, kind, rest, k, dt)
        d3, g, gh3 = _bptt_element(h3, _atan_surrogate(h3, th, a, ha, one), _ld(g3[j]), zero, kind, hard, detach, th,
                                   reset, k, omk, one, zero)
        d2, g, gh2 = _bptt_element(h2, _atan_surrogate(h2, th, a, ha, one), _ld(g2[j]), g, kind, hard, detach, th,
                                   reset, k, omk, one, zero)
        d1, g, gh1 = _bptt_element(h1, _atan_surrogate(h1, th, a, ha, one), _ld(g1[j]), g, kind, hard, detach, th,
                                   reset, k, omk, one, zero)
        d0, g, gh0 = _bptt_element(h0, _atan_surrogate(h0, th, a, ha, one), _ld(g0[j]), g, kind, hard, detach, th,
                                   reset, k, omk, one, zero)
        gx0[j] = _st(d0, dt)
        gx1[j] = _st(d1, dt)
        gx2[j] = _st(d2, dt)
        gx3[j] = _st(d3, dt)
        if kind == LIF:                                  # dH[t]/dk = X[t] - (V[t-1] - rest)
            acc[j] += gh3 * (xd - (vc - rest))
            acc[j] += gh2 * (xc - (vb - rest))
            acc[j] += gh1 * (xb - (va - rest))
            acc[j] += gh0 * (xa - (v0 - rest))
        else:                                          # -(V[t-1] - rest)
            acc[j] += gh3 * (rest - vc)
            acc[j] += gh2 * (rest - vb)
            acc[j] += gh1 * (rest - va)
            acc[j] += gh0 * (rest - v0)


@_step
def _bptt_table(ht, st, gt, gv, gxt, dkt, acc, kind, hard, detach, learn_k, th, reset, k, one, zero):
    """One backward step with a precomputed surrogate gradient st (Sigmoid)."""
    one_minus_k = one - k
    dt = gxt.dtype
    for j in range(ht.shape[0]):
        gx, gv[j], gh = _bptt_element(ht[j], st[j], _ld(gt[j]), gv[j], kind, hard, detach, th, reset, k,
                                      one_minus_k, one, zero)
        gxt[j] = _st(gx, dt)
        if learn_k:
            acc[j] += gh * dkt[j]


# ---------------------------------------------------------------------------------------------------- the kernels
# The neuron kinds with kernels of their own, for a hard reset, detach_reset and ATan, in float32 and bfloat16 (float64
# is for checking, not speed): see "Specialised kernels" above.
SPECIALISED_KINDS = (IF, LIF)


def forward_flags(kind: int, hard: bool, float64: bool):
    """The compile-time constants (kind, hard) of the forward kernel for these flags, or None: the generic kernel."""
    return (int(kind), True) if kind in SPECIALISED_KINDS and hard and not float64 else None


def backward_flags(kind: int, hard: bool, detach: bool, sigmoid: bool, learn_k: bool, float64: bool):
    """The compile-time constants (kind, hard, detach, sigmoid, learn_k) of the backward kernel, or None: generic."""
    usual = forward_flags(kind, hard, float64) and detach and not (sigmoid or learn_k)
    return (int(kind), True, True, False, False) if usual else None


def forward_kernel(kind: int, hard: bool, float64: bool):
    """The forward kernel for these flags (S into out, [T, M] rows): specialised or generic (see SPECIALISED_KINDS).
    It takes the flags as arguments either way."""
    return _forward_kernel(forward_flags(kind, hard, float64))


@functools.cache
def _forward_kernel(fixed):
    is_fixed = fixed is not None
    kind_c, hard_c = fixed or (0, False)

    @_kernel
    def forward(x, x_rs, out, T, M, B, c, kind, hard):
        if is_fixed:                           # pruned at compile time: constants in place of the arguments
            kind, hard = kind_c, hard_c
        th, rest, k, one, zero = c[C_TH], c[C_REST], c[C_K], c[C_ONE], c[C_ZERO]
        reset_r, th_r, v0 = c[C_RESET_R], c[C_TH_R], c[C_V0]
        nblk = (M + B - 1) // B
        for b in prange(nblk):
            lo = b * B
            n = min(B, M - lo)
            if T == 4:
                _charge_fire4_from_rest(x[lo: lo + n], x[x_rs + lo: x_rs + lo + n], x[2 * x_rs + lo: 2 * x_rs + lo + n],
                                        x[3 * x_rs + lo: 3 * x_rs + lo + n], out[lo: lo + n], out[M + lo: M + lo + n],
                                        out[2 * M + lo: 2 * M + lo + n], out[3 * M + lo: 3 * M + lo + n],
                                        kind, hard, th, reset_r, th_r, rest, k, v0, one, zero)
                continue
            v = np.empty(n, dtype=c.dtype)
            v[:] = v0
            t = 0
            while t + 3 < T:                        # steps in fours (see _charge_fire4), then one at a time
                _charge_fire4(v, x[t * x_rs + lo: t * x_rs + lo + n], x[(t + 1) * x_rs + lo: (t + 1) * x_rs + lo + n],
                              x[(t + 2) * x_rs + lo: (t + 2) * x_rs + lo + n],
                              x[(t + 3) * x_rs + lo: (t + 3) * x_rs + lo + n],
                              out[t * M + lo: t * M + lo + n], out[(t + 1) * M + lo: (t + 1) * M + lo + n],
                              out[(t + 2) * M + lo: (t + 2) * M + lo + n], out[(t + 3) * M + lo: (t + 3) * M + lo + n],
                              kind, hard, th, reset_r, th_r, rest, k, one, zero)
                t += 4
            for t in range(t, T):
                _charge_fire(v, x[t * x_rs + lo: t * x_rs + lo + n], out[t * M + lo: t * M + lo + n],
                             kind, hard, th, reset_r, th_r, rest, k, one, zero)

    return forward


def backward_kernel(kind: int, hard: bool, detach: bool, sigmoid: bool, learn_k: bool, float64: bool):
    """The backward kernel for these flags: specialised or generic (see SPECIALISED_KINDS). It writes dL/dX into gx
    ([T, M] rows; with sum_time, one row: the sum over T, only at T = 4 without sigmoid or learn_k) and each block's
    dL/dk into partial."""
    return _backward_kernel(backward_flags(kind, hard, detach, sigmoid, learn_k, float64))


@functools.cache
def _backward_kernel(fixed):
    is_fixed = fixed is not None
    kind_c, hard_c, detach_c, sigmoid_c, learn_k_c = fixed or (0, False, False, False, False)

    @_kernel
    def backward(x, x_rs, g, g_rs, gx, T, M, B, c, kind, hard, detach, sigmoid, learn_k, partial, sum_time):
        if is_fixed:
            kind, hard, detach, sigmoid, learn_k = kind_c, hard_c, detach_c, sigmoid_c, learn_k_c
        th, reset, rest, k, a, ha = c[C_TH], c[C_RESET], c[C_REST], c[C_K], c[C_A], c[C_HA]
        one, zero = c[C_ONE], c[C_ZERO]
        reset_r, th_r, v0 = c[C_RESET_R], c[C_TH_R], c[C_V0]
        nblk = (M + B - 1) // B
        for b in prange(nblk):
            lo = b * B
            n = min(B, M - lo)
            if T == 4 and not sigmoid:                  # H in registers, no scratch
                xs = (x[lo: lo + n], x[x_rs + lo: x_rs + lo + n], x[2 * x_rs + lo: 2 * x_rs + lo + n],
                      x[3 * x_rs + lo: 3 * x_rs + lo + n])
                gs = (g[lo: lo + n], g[g_rs + lo: g_rs + lo + n], g[2 * g_rs + lo: 2 * g_rs + lo + n],
                      g[3 * g_rs + lo: 3 * g_rs + lo + n])
                if sum_time:
                    _recompute_bptt_atan4_summed(xs[0], xs[1], xs[2], xs[3], gs[0], gs[1], gs[2], gs[3], gx[lo: lo + n],
                                                 kind, hard, detach, th, reset, reset_r, th_r, rest, k, a, ha, v0, one,
                                                 zero)
                    continue
                gxs = (gx[lo: lo + n], gx[M + lo: M + lo + n], gx[2 * M + lo: 2 * M + lo + n],
                       gx[3 * M + lo: 3 * M + lo + n])
                if learn_k:                             # PLIF: the same, summing dL/dk as it goes
                    acc = np.zeros(n, dtype=np.float64)
                    _recompute_bptt_atan4_dk(xs[0], xs[1], xs[2], xs[3], gs[0], gs[1], gs[2], gs[3], gxs[0], gxs[1],
                                             gxs[2], gxs[3], acc, kind, hard, detach, th, reset, reset_r, th_r, rest, k,
                                             a, ha, v0, one, zero)
                    partial[b] = acc.sum()
                else:
                    _recompute_bptt_atan4(xs[0], xs[1], xs[2], xs[3], gs[0], gs[1], gs[2], gs[3], gxs[0], gxs[1],
                                          gxs[2], gxs[3], kind, hard, detach, th, reset, reset_r, th_r, rest, k, a, ha,
                                          v0, one, zero)
                continue
            hb = np.empty((T, n), dtype=c.dtype)                   # H[t]
            sb = np.empty((T, n) if sigmoid else (T, 0), dtype=c.dtype)   # Sigmoid's surrogate gradient at H[t]
            v = np.empty(n, dtype=c.dtype)
            v[:] = v0
            t = 0
            while t + 3 < T:                        # in fours, as forward
                _charge_keep4(v, x[t * x_rs + lo: t * x_rs + lo + n], x[(t + 1) * x_rs + lo: (t + 1) * x_rs + lo + n],
                              x[(t + 2) * x_rs + lo: (t + 2) * x_rs + lo + n],
                              x[(t + 3) * x_rs + lo: (t + 3) * x_rs + lo + n],
                              hb[t], hb[t + 1], hb[t + 2], hb[t + 3], kind, hard, th, reset_r, th_r, rest, k, zero)
                t += 4
            for t in range(t, T):
                _charge_keep(v, x[t * x_rs + lo: t * x_rs + lo + n], hb[t], kind, hard, th, reset_r, th_r, rest, k,
                             zero)
            if sigmoid:
                for t in range(T):
                    _sigmoid_surrogate(hb[t], sb[t], th, a, ha, one)
            gv = v                                   # reuse: dL/dV[t] arriving from step t+1
            gv[:] = zero
            dkt = np.empty(n if learn_k else 0, dtype=c.dtype)
            acc = np.zeros(n if learn_k else 0, dtype=np.float64)
            t = T - 1
            if not (sigmoid or learn_k):
                while t >= 3:                       # in fours (t .. t - 3); the general loop below takes what is left
                    _bptt_atan4(hb[t], g[t * g_rs + lo: t * g_rs + lo + n], gx[t * M + lo: t * M + lo + n],
                                hb[t - 1], g[(t - 1) * g_rs + lo: (t - 1) * g_rs + lo + n],
                                gx[(t - 1) * M + lo: (t - 1) * M + lo + n],
                                hb[t - 2], g[(t - 2) * g_rs + lo: (t - 2) * g_rs + lo + n],
                                gx[(t - 2) * M + lo: (t - 2) * M + lo + n],
                                hb[t - 3], g[(t - 3) * g_rs + lo: (t - 3) * g_rs + lo + n],
                                gx[(t - 3) * M + lo: (t - 3) * M + lo + n],
                                gv, kind, hard, detach, th, reset, k, a, ha, one, zero)
                    t -= 4
            for t in range(t, -1, -1):
                xt = x[t * x_rs + lo: t * x_rs + lo + n]
                if learn_k:
                    _dk(hb[t - 1] if t > 0 else hb[t], xt, dkt, t == 0, kind, hard, th, reset_r, th_r, rest, v0, zero)
                gt = g[t * g_rs + lo: t * g_rs + lo + n]
                gxt = gx[t * M + lo: t * M + lo + n]
                if sigmoid:
                    _bptt_table(hb[t], sb[t], gt, gv, gxt, dkt, acc, kind, hard, detach, learn_k, th, reset, k, one,
                                zero)
                else:
                    _bptt_atan(hb[t], gt, gv, gxt, dkt, acc, kind, hard, detach, learn_k, th, reset, k, a, ha, one,
                               zero)
            if learn_k:
                partial[b] = acc.sum()

    return backward


_SERIAL = {}


def serial_of(kernel):
    """The parallel kernel compiled without threads (prange runs as range), on first use: for a process forked from
    one whose numba pool runs on GNU OpenMP (see dst/kernels/numba/threads.py). Not cached on disk: the parallel
    build's cache entry has the same function name."""
    if kernel not in _SERIAL:
        _SERIAL[kernel] = njit(error_model="numpy")(kernel.py_func)
    return _SERIAL[kernel]
