"""Element-wise connect functions g(s, d) joining a block's spikes s with its shortcut d.

On binary inputs IAND, AND, OR and XOR return binary outputs, so the network stays full-spike.
ADD (SEW ResNet's default) returns 0, 1 or 2: kept only as the non-full-spike baseline.
"""
from __future__ import annotations

from typing import Callable

import torch

ConnectFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def iand(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return d * (1.0 - s)


def and_(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return s * d


def or_(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return s + d - s * d


def xor(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return d * (1.0 - s) + s * (1.0 - d)


def add(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return s + d


CONNECT_FUNCTIONS: dict[str, ConnectFn] = {"IAND": iand, "AND": and_, "OR": or_, "XOR": xor, "ADD": add}
SPIKE_ONLY = frozenset({"IAND", "AND", "OR", "XOR"})


def get_connect(name: str) -> ConnectFn:
    key = name.upper()
    if key not in CONNECT_FUNCTIONS:
        raise ValueError(f"unknown connect function {name!r}; choose one of {sorted(CONNECT_FUNCTIONS)}")
    return CONNECT_FUNCTIONS[key]
