"""Models behind a registry: `create_model(name, **kw)`, `list_models(pattern)`."""
from dst.models import dvs, resnet  # noqa: F401  (registers the entry points)
from dst.models.base import STREAMS, DualStreamNet, StreamLogits
from dst.models.registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "list_models", "is_model", "register_model", "DualStreamNet", "StreamLogits", "STREAMS"]
