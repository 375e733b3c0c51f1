"""A model registry in the style of timm: entry functions register by name, `create_model(name, **kw)` builds."""
from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODEL_ENTRYPOINTS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODEL_ENTRYPOINTS


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model. The name and kwargs are kept on the model (`model.model_name`, `model.model_kwargs`)
    so that an exported checkpoint carries everything needed to rebuild it."""
    if name not in _MODEL_ENTRYPOINTS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    model = _MODEL_ENTRYPOINTS[name](**kwargs)
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model
