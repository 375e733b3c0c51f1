"""Triton kernels of the stem's neuron fused with the max pool after it (spike_pool.py launches them;
dst/kernels/numba/spike_pool_kernels.py, the CPU twin, says what the fusion saves). Imported lazily, as
neuron_kernels is.

Forward: one program per BLOCK pooled outputs, for all T steps. Each output holds its window's K x K inputs (padded
to KK rows) and their membrane potentials in registers, runs the T steps on all of them at once, and stores per step
the window's maximum spike and the first position that holds it (one byte: dh * K + dw, padding never wins), as
PyTorch's max pool picks it. The neuron's arithmetic is neuron_kernels' step functions, so the spikes are the Triton
neuron's.

Backward: one program per BLOCK inputs. Each recomputes its own H[t] for all t into a [TP, BLOCK] register tile, then
walks t = T-1..0: gathers dL/dS[t] from the (at most ceil(K/S)^2) windows that cover it and that it won, steps the
neuron's backward, and sums dL/dX over the steps (the input is the same at every step). Nothing else is stored.

Addresses go through the tensors' strides, so any layout works (channels-last, the model's default, or NCHW); LAST_C
says which index runs fastest in the flat numbering of elements (C for channels-last, W otherwise), for coalescing.
"""
import triton
import triton.language as tl

from dst.kernels.triton.neuron_kernels import (C_A, C_HA, _after_reset, _block, _charge, _dl_dh, _dl_dx_dv,
                                               _neuron_constants)


@triton.jit
def _decode(offs, C, H, W, LAST_C: tl.constexpr):
    """(n, c, h, w) of flat element indices numbered in memory order: [N, H, W, C] or [N, C, H, W]."""
    if LAST_C:
        inner, middle, outer = C, W, H
    else:
        inner, middle, outer = W, H, C
    i = offs % inner
    r = offs // inner
    j = r % middle
    r = r // middle
    k = r % outer
    n = r // outer
    if LAST_C:
        c, w, h = i, j, k
    else:
        w, h, c = i, j, k
    return n, c, h, w


@triton.jit(do_not_specialize=["M", "C", "H", "W", "OH", "OW", "T"])
def _forward_kernel(x_ptr, out_ptr, sel_ptr, c_ptr, k_ptr, M, C, H, W, OH, OW, T,
                    xs_n, xs_c, xs_h, xs_w, os_t, os_n, os_c, os_h, os_w,
                    K: tl.constexpr, S: tl.constexpr, P: tl.constexpr, KK: tl.constexpr, LAST_C: tl.constexpr,
                    KIND: tl.constexpr, HARD: tl.constexpr, LOW: tl.constexpr, DT: tl.constexpr,
                    CDT: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask = _block(M, BLOCK)
    n, c, oh, ow = _decode(offs, C, OH, OW, LAST_C)
    th, reset_r, rest, th_r, v0, k = _neuron_constants(c_ptr, k_ptr, CDT)
    # Tiles are [KK, BLOCK]: window positions down, outputs across, so that neighbouring threads take neighbouring
    # elements (coalesced loads) and the reductions over the window stay within a thread.
    pos = tl.arange(0, KK)                                       # window position dh * K + dw
    hh = oh[None, :] * S - P + (pos // K)[:, None]
    ww = ow[None, :] * S - P + (pos % K)[:, None]
    inside = mask[None, :] & (pos < K * K)[:, None] & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    x = tl.load(x_ptr + (n * xs_n + c * xs_c)[None, :] + hh * xs_h + ww * xs_w, mask=inside, other=0.0).to(CDT)
    v = tl.zeros([KK, BLOCK], CDT) + v0
    o_offs = n * os_n + c * os_c + oh * os_h + ow * os_w
    for t in range(T):
        h = _charge(v, x, k, rest, KIND, LOW, DT)
        s = h - th >= 0
        v = _after_reset(h, s, th_r, reset_r, HARD, LOW, DT)
        spikes = tl.where(inside, tl.where(s, 1.0, 0.0), -1.0)   # padding is below any spike: it never wins
        best = tl.max(spikes, axis=0)
        won = tl.min(tl.where(spikes == best[None, :], pos[:, None], KK), axis=0)
        tl.store(out_ptr + o_offs, best.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(sel_ptr + o_offs, won.to(tl.int8), mask=mask)
        o_offs += os_t


@triton.jit(do_not_specialize=["M", "C", "H", "W", "OH", "OW", "T"])
def _backward_kernel(x_ptr, g_ptr, sel_ptr, gx_ptr, c_ptr, k_ptr, M, C, H, W, OH, OW, T,
                     xs_n, xs_c, xs_h, xs_w, gs_t, gs_n, gs_c, gs_h, gs_w, ss_t, ss_n, ss_c, ss_h, ss_w,
                     gxs_n, gxs_c, gxs_h, gxs_w,
                     K: tl.constexpr, S: tl.constexpr, P: tl.constexpr, WINDOWS: tl.constexpr, TP: tl.constexpr,
                     LAST_C: tl.constexpr, KIND: tl.constexpr, HARD: tl.constexpr, DETACH: tl.constexpr,
                     SURROGATE: tl.constexpr, LOW: tl.constexpr, DT: tl.constexpr, CDT: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs, mask = _block(M, BLOCK)
    n, c, h, w = _decode(offs, C, H, W, LAST_C)
    th, reset_r, rest, th_r, v0, k = _neuron_constants(c_ptr, k_ptr, CDT)
    a = tl.load(c_ptr + C_A)
    ha = tl.load(c_ptr + C_HA)
    x = tl.load(x_ptr + n * xs_n + c * xs_c + h * xs_h + w * xs_w, mask=mask, other=0.0).to(CDT)
    # H[t] of this input at every step, recomputed into registers ([TP, BLOCK]: each thread keeps its inputs' steps).
    steps = tl.arange(0, TP)
    hs = tl.zeros([TP, BLOCK], CDT)
    v = tl.zeros([BLOCK], CDT) + v0
    for t in range(T):
        ht = _charge(v, x, k, rest, KIND, LOW, DT)
        v = _after_reset(ht, ht - th >= 0, th_r, reset_r, HARD, LOW, DT)
        hs = tl.where(steps[:, None] == t, ht[None, :], hs)
    # The windows that can hold this input: oh = (h + P) // S - i for i < WINDOWS (the same along w), kept where the
    # window exists and the input lies inside it; dh = h + P - oh * S is then its row in the window.
    last = (T - 1).to(tl.int64)                                 # int64 offsets: T * N * C * OH * OW may pass 2**31
    g_t = n * gs_n + c * gs_c + last * gs_t                      # step t's (n, c) of dL/dS and of the winners
    s_t = n * ss_n + c * ss_c + last * ss_t
    gv = tl.zeros([BLOCK], CDT)
    gx = tl.zeros([BLOCK], CDT)
    for i in range(T):
        t = T - 1 - i
        ht = tl.sum(tl.where(steps[:, None] == t, hs, 0.0), axis=0)
        go = tl.zeros([BLOCK], CDT)
        for wi in tl.static_range(WINDOWS):
            oh = (h + P) // S - wi
            dh = h + P - oh * S
            row_ok = mask & (oh >= 0) & (oh < OH) & (dh < K)
            for wj in tl.static_range(WINDOWS):
                ow = (w + P) // S - wj
                dw = w + P - ow * S
                ok = row_ok & (ow >= 0) & (ow < OW) & (dw < K)
                won = tl.load(sel_ptr + s_t + oh * ss_h + ow * ss_w, mask=ok, other=-1)
                go += tl.load(g_ptr + g_t + oh * gs_h + ow * gs_w, mask=ok & (won == dh * K + dw),
                              other=0.0).to(CDT)
        gh = _dl_dh(ht, go, gv, th, reset_r, a, ha, HARD, DETACH, SURROGATE, CDT)
        gxt, gv = _dl_dx_dv(gh, k, KIND)
        gx += gxt
        g_t -= gs_t
        s_t -= ss_t
    tl.store(gx_ptr + n * gxs_n + c * gxs_c + h * gxs_h + w * gxs_w, gx.to(gx_ptr.dtype.element_ty), mask=mask)
