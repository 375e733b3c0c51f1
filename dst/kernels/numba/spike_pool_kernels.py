"""Numba kernels of the stem's neuron fused with the max pool after it (CPU, float32/float64/bfloat16, channels-last).

The stem's neuron sees the same input X at every one of T steps, and a max pool follows it. Run apart, the neuron
writes a [T, N, C, H, W] spike tensor that the pool reads once, the pool keeps int64 indices of the maxima, and its
backward fills a zero [T, N, C, H, W] gradient, scatters into it, and the neuron's backward reads it back. Fused,
none of those full-size tensors exist: forward recomputes the spikes of the few input rows a window row needs, in
cache, and keeps, per output element and step, which window position won (one byte); backward gathers, for each
input row, the gradients of the windows whose winner lies in that row and runs the neuron's backward through time
on them, in cache, summing over T as the repeated input wants.

Layout: X and dL/dX are [N, H, W, C] (channels-last), spikes and their gradient [T, N, OH, OW, C]; every inner loop
runs over the W x C elements of a row, contiguous, and vectorises. The winner is the first maximum in the window in
row-major order, with padding skipped, as PyTorch's CPU max pool picks it, so gradients go where they would unfused.
The neuron's arithmetic is the step functions of neuron_kernels.py, so spikes are bit-identical to the reference loop.
bfloat16 arrays come as their uint16 bit patterns, read and written through neuron_kernels' _ld / _st (the spikes of
the rows in scratch too); the winners' maxima and all gradient sums are float32, dL/dX rounded to bfloat16 once.
Kernels are built per flag set as neuron_kernels' are (forward_flags / backward_flags): IF and LIF with the usual
flags get kernels of their own (benchmarks/results/design-measurements.md).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from dst.kernels.numba.neuron_kernels import (C_A, C_HA, C_K, C_ONE, C_RESET, C_RESET_R, C_REST, C_TH, C_TH_R, C_V0,
                                              C_ZERO, _bptt_atan, _bptt_table, _charge_fire, _charge_keep, _ld,
                                              _sigmoid_surrogate, _st, backward_flags, forward_flags)

_step = njit(cache=True, inline="never", error_model="numpy")
_kernel = njit(parallel=True, cache=True, error_model="numpy")


@_step
def _first_max(spikes, best, won, code, dw, s, p, C):
    """Window position (row dh, column dw), code = dh * k + dw, of every window of an output row against the running
    maxima best/won [OW * C]; spikes is the input row [W * C]. Strictly greater wins, so the first maximum stays."""
    W = spikes.shape[0] // C
    for ow in range(best.shape[0] // C):
        w = ow * s - p + dw
        if 0 <= w < W:
            for j in range(C):
                v = _ld(spikes[w * C + j])
                if v > best[ow * C + j]:
                    best[ow * C + j] = v
                    won[ow * C + j] = code


@_step
def _store_winner(best, won, out, sel):
    dt = out.dtype
    for j in range(best.shape[0]):
        out[j] = _st(best[j], dt)
        sel[j] = won[j]


@_step
def _gather_won(g, sel, gs, code, dw, s, p, C):
    """Adds to the input row's dL/dS gs [W * C] the gradients g [OW * C] of an output row's windows whose winner is
    the position code = dh * k + dw (column dw of the window)."""
    W = gs.shape[0] // C
    for ow in range(g.shape[0] // C):
        w = ow * s - p + dw
        if 0 <= w < W:
            for j in range(C):
                if sel[ow * C + j] == code:
                    gs[w * C + j] += _ld(g[ow * C + j])


@_step
def _add_into(acc, d):
    for j in range(acc.shape[0]):
        acc[j] += d[j]


@_step
def _store(out, acc):
    dt = out.dtype
    for j in range(out.shape[0]):
        out[j] = _st(acc[j], dt)


@njit(cache=True)
def _rows_of_window(o, s, p, k, size):
    """(first, last + 1) of the input indices window o covers, padding left out."""
    start = o * s - p
    return max(start, 0), min(start + k, size)


@functools.cache
def _forward_kernel(fixed):
    """The forward kernel for forward_flags' constants (None: generic; it takes the flags as arguments either way)."""
    is_fixed = fixed is not None
    kind_c, hard_c = fixed or (0, False)

    @_kernel
    def forward(x, out, sel, T, k, s, p, c, kind, hard):
        """x [N, H, W, C] -> out [T, N, OH, OW, C] (pooled spikes), sel [T, N, OH, OW, C] (winning window position)."""
        if is_fixed:                           # pruned at compile time: constants in place of the arguments
            kind, hard = kind_c, hard_c
        N, H, W, C = x.shape
        OH, OW = out.shape[2], out.shape[3]
        th, rest, kk, one, zero = c[C_TH], c[C_REST], c[C_K], c[C_ONE], c[C_ZERO]
        reset_r, th_r, v0 = c[C_RESET_R], c[C_TH_R], c[C_V0]
        WC = W * C
        for job in prange(N * OH):
            n = job // OH
            oh = job - n * OH
            h_lo, h_hi = _rows_of_window(oh, s, p, k, H)
            spikes = np.empty((h_hi - h_lo, T, WC), dtype=x.dtype)      # the spikes of the rows this window row reads
            v = np.empty(WC, dtype=c.dtype)
            for h in range(h_lo, h_hi):
                xr = x[n, h].reshape(WC)
                v[:] = v0
                for t in range(T):
                    _charge_fire(v, xr, spikes[h - h_lo, t], kind, hard, th, reset_r, th_r, rest, kk, one, zero)
            best = np.empty(OW * C, dtype=c.dtype)
            won = np.empty(OW * C, dtype=np.int32)
            for t in range(T):
                best[:] = -one                                          # below any spike: the first position wins ties
                won[:] = 0
                for h in range(h_lo, h_hi):
                    for dw in range(k):
                        _first_max(spikes[h - h_lo, t], best, won, (h - (oh * s - p)) * k + dw, dw, s, p, C)
                _store_winner(best, won, out[t, n, oh].reshape(OW * C), sel[t, n, oh].reshape(OW * C))

    return forward


@functools.cache
def _backward_kernel(fixed):
    """The backward kernel for backward_flags' constants (learn_k is always False here)."""
    is_fixed = fixed is not None
    kind_c, hard_c, detach_c, sigmoid_c, _ = fixed or (0, False, False, False, False)

    @_kernel
    def backward(x, g, sel, gx, T, k, s, p, c, kind, hard, detach, sigmoid):
        """dL/dX [N, H, W, C], summed over the T steps, from dL/d(pooled spikes) g and the winners sel
        [T, N, OH, OW, C]."""
        if is_fixed:
            kind, hard, detach, sigmoid = kind_c, hard_c, detach_c, sigmoid_c
        N, H, W, C = x.shape
        OH, OW = g.shape[2], g.shape[3]
        th, reset, rest, kk, a, ha = c[C_TH], c[C_RESET], c[C_REST], c[C_K], c[C_A], c[C_HA]
        one, zero = c[C_ONE], c[C_ZERO]
        reset_r, th_r, v0 = c[C_RESET_R], c[C_TH_R], c[C_V0]
        WC = W * C
        for job in prange(N * H):
            n = job // H
            h = job - n * H
            gs = np.zeros((T, WC), dtype=c.dtype)                      # dL/dS of this row's spikes
            for oh in range(max(0, (h + p - k + s) // s), min(OH - 1, (h + p) // s) + 1):
                dh = h - (oh * s - p)
                for dw in range(k):
                    for t in range(T):
                        _gather_won(g[t, n, oh].reshape(OW * C), sel[t, n, oh].reshape(OW * C), gs[t], dh * k + dw, dw,
                                    s, p, C)
            xr = x[n, h].reshape(WC)
            hb = np.empty((T, WC), dtype=c.dtype)                      # H[t], recomputed
            v = np.empty(WC, dtype=c.dtype)
            v[:] = v0
            for t in range(T):
                _charge_keep(v, xr, hb[t], kind, hard, th, reset_r, th_r, rest, kk, zero)
            sb = np.empty((WC if sigmoid else 0), dtype=c.dtype)
            gv = v                                                     # reuse: dL/dV[t] arriving from step t + 1
            gv[:] = zero
            d = np.empty(WC, dtype=c.dtype)
            no_k = np.empty(0, dtype=c.dtype)
            no_acc = np.empty(0, dtype=np.float64)
            gr = np.zeros(WC, dtype=c.dtype)                           # dL/dX of the row, summed over T
            for t in range(T - 1, -1, -1):
                if sigmoid:
                    _sigmoid_surrogate(hb[t], sb, th, a, ha, one)
                    _bptt_table(hb[t], sb, gs[t], gv, d, no_k, no_acc, kind, hard, detach, False, th, reset, kk, one,
                                zero)
                else:
                    _bptt_atan(hb[t], gs[t], gv, d, no_k, no_acc, kind, hard, detach, False, th, reset, kk, a, ha, one,
                               zero)
                _add_into(gr, d)
            _store(gx[n, h].reshape(WC), gr)

    return backward


def forward_kernel(kind: int, hard: bool, float64: bool):
    """The forward kernel for these flags, specialised as neuron_kernels' are."""
    return _forward_kernel(forward_flags(kind, hard, float64))


def backward_kernel(kind: int, hard: bool, detach: bool, sigmoid: bool, float64: bool):
    """The backward kernel for these flags, specialised as neuron_kernels' are."""
    return _backward_kernel(backward_flags(kind, hard, detach, sigmoid, False, float64))
