"""Forward hooks as a context manager: installed on entry, always removed on exit (so they cost nothing after)."""
from __future__ import annotations

from torch import nn


class ForwardHooks:
    """A forward hook on every module that `select` accepts; subclasses define `select` and `_hook(name)`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._handles: list = []

    def select(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def _hook(self, name: str):
        raise NotImplementedError

    def __enter__(self):
        for name, module in self.model.named_modules():
            if self.select(module):
                self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
