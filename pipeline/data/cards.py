"""Dataset cards: one YAML per dataset under <repo>/datasets/ (source, licence, layout, sizes, classes).

The code reads class counts, class names, sensor sizes, normalisation and augmentation from here, so a
dataset's facts live in one place. `load_card("demo_images")` returns the demo card's variant merged
with the demo card's common keys.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import yaml

from pipeline.errors import UsageError

# The names the rest of the pipeline uses (config `data.dataset`), and the card each comes from.
DATASETS = {
    "imagenet": ("imagenet", None),
    "dvs_gesture": ("dvs_gesture", None),
    "cifar10_dvs": ("cifar10_dvs", None),
    "demo_images": ("demo", "demo_images"),
    "demo_dvs": ("demo", "demo_dvs"),
}
CARD_FILES = ("imagenet", "dvs_gesture", "cifar10_dvs", "demo")


def cards_dir() -> Path:
    """<repo>/datasets, or $DST_DATASETS_DIR when the package runs outside a checkout."""
    return Path(os.environ.get("DST_DATASETS_DIR") or Path(__file__).resolve().parents[2] / "datasets")


@lru_cache(maxsize=None)
def _read(file_stem: str) -> dict:
    path = cards_dir() / f"{file_stem}.yaml"
    if not path.is_file():
        raise UsageError(f"dataset card {path} is missing (set DST_DATASETS_DIR to the datasets/ folder)")
    with open(path) as f:
        card = yaml.safe_load(f)
    if not isinstance(card, dict):
        raise UsageError(f"dataset card {path} is not a YAML mapping")
    return card


def load_card(name: str) -> dict:
    """The card of a dataset: a card file name (imagenet, dvs_gesture, cifar10_dvs, demo) or a
    dataset name of the config (also demo_images, demo_dvs). Returns a fresh dict (safe to modify)."""
    if name in DATASETS:
        file_stem, variant = DATASETS[name]
    elif name in CARD_FILES:
        file_stem, variant = name, None
    else:
        raise UsageError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)} (cards in {cards_dir()})")
    card = _read(file_stem)
    if variant is None:
        return _deep_copy(card)
    common = {k: v for k, v in card.items() if k != "variants"}
    try:
        specific = card["variants"][variant]
    except (KeyError, TypeError):
        raise UsageError(f"dataset card {cards_dir() / (file_stem + '.yaml')} has no variants.{variant}") from None
    return _deep_copy({**common, **specific, "name": variant})


def _deep_copy(value):
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
