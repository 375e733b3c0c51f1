"""Seeing a [T, ...] sequence as T rows of M elements, each row dense in memory, without copying when possible.

Elementwise neurons do not care about the order of elements inside a time step, only that step t and step t+1 line up.
So any layout whose steps are dense (contiguous, channels-last folded over T, or a stride-0 expand over T as the stem
feeds) is used in place: rows[t, i] is element i of step t in memory order, the row stride may be anything >= M or 0.
Outputs are allocated in the same memory order, so they keep the input's layout (channels-last stays channels-last).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dst.kernels.memory import advise_huge_pages


@dataclass(frozen=True)
class Rows:
    perm: tuple[int, ...]   # dims 1.. of the input in memory order (outermost first)
    T: int
    M: int

    def rows_of(self, t: torch.Tensor) -> torch.Tensor:
        """[T, M] view of a tensor shaped like the input, in this memory order; copies only if it must."""
        tp = t.permute(0, *self.perm)
        rows = tp.reshape(self.T, self.M)
        if self.M > 1 and rows.stride(1) != 1:
            rows = tp.contiguous().view(self.T, self.M)
        if self.T > 1 and rows.stride(0) != 0 and rows.stride(0) < self.M:
            rows = rows.contiguous()
        return rows

    def empty(self, like: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tensor shaped like the input in this memory order, its contiguous [T, M] rows)."""
        shape = [like.shape[0]] + [like.shape[d] for d in self.perm]
        buf = advise_huge_pages(torch.empty(shape, dtype=dtype or like.dtype, device=like.device))
        inverse = [0] * (len(self.perm) + 1)
        for i, d in enumerate(self.perm):
            inverse[d] = i + 1
        return buf.permute(*inverse), buf.view(self.T, self.M)


def forward_buffers(x: torch.Tensor) -> tuple[Rows, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a forward kernel reads and writes: (x's layout, the output shaped like x in the same memory order, the
    output's [T, M] rows, x's [T, M] rows)."""
    layout = rows_layout(x)
    out, out_rows = layout.empty(x)
    return layout, out, out_rows, layout.rows_of(x.detach())


def row_stride(rows: torch.Tensor) -> int:
    """The distance between the steps of [T, M] rows (from rows_of or empty) as the kernels take it: 0 for an input
    expanded over T, M for a single step."""
    T, M = rows.shape
    return rows.stride(0) if T > 1 else M


def rows_layout(x: torch.Tensor) -> Rows:
    """The memory order of one time step of x (dims sorted by stride, size-1 dims last)."""
    dims = range(1, x.dim())
    perm = tuple(sorted(dims, key=lambda d: (x.shape[d] == 1, -x.stride(d))))
    M = 1
    for d in dims:
        M *= x.shape[d]
    return Rows(perm, x.shape[0], M)
