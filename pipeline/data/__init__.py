"""Data for the pipeline: preparing raw datasets (ImageNet -> FFCV, DVS -> frames, demo data) and the
training/evaluation loaders over the prepared files. `build_loaders` is what the engine calls."""
from pipeline.data.cards import load_card
from pipeline.data.loaders import Loaders, build_loaders

__all__ = ["Loaders", "build_loaders", "load_card"]
