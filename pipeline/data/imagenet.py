"""ImageNet (or any class-folder image set) -> FFCV files: <out>/train.beton, <out>/val.beton, meta.json.

The raw layout is checked completely before anything is written (missing split, empty class folder,
class sets that differ between splits, unlabelled flat val images), so a bad layout costs seconds.
Images that cannot be decoded are found while writing; they fail the run (naming every one), or with
skip_bad are left out and listed in <out>/bad_images.txt.
"""
from __future__ import annotations

import csv
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.common import META_FILE, atomic_outputs, check_file_size, resolve_workers, write_meta
from pipeline.storage import temp_name
from pipeline.errors import UsageError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
LOC_CSV = "LOC_val_solution.csv"
DEVKIT_GROUND_TRUTH = Path("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt")
SPLITS = ("train", "val")
LAYOUT_HINT = "see raw_layout in datasets/imagenet.yaml"


@dataclass
class Split:
    name: str
    paths: list[Path]
    labels: list[int]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: Path) -> list[Path]:
    """All images below a class folder, in a stable order (as torchvision's ImageFolder)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
    return found


def _class_folders(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir())


def scan_class_folders(split_dir: Path, classes: list[str] | None = None) -> tuple[list[str], Split]:
    """A split in class-folder layout. With `classes` given (from train), the folder set must match."""
    folders = _class_folders(split_dir)
    names = [f.name for f in folders]
    if classes is not None and names != classes:
        only_train = sorted(set(classes) - set(names))
        only_here = sorted(set(names) - set(classes))
        raise UsageError(
            f"class folders differ between {split_dir.parent / 'train'} and {split_dir}: "
            f"{len(only_train)} only in train {_few(only_train)}, {len(only_here)} only in {split_dir.name} "
            f"{_few(only_here)}")
    paths, labels = [], []
    for label, folder in enumerate(folders):
        images = _images_under(folder)
        if not images:
            raise UsageError(f"empty class folder {folder}: no {'/'.join(IMAGE_EXTENSIONS)} images")
        paths += images
        labels += [label] * len(images)
    return names, Split(split_dir.name, paths, labels)


def _few(items: list, n: int = 5) -> str:
    shown = ", ".join(map(str, items[:n]))
    return f"[{shown}{', ...' if len(items) > n else ''}]"


def read_loc_csv(path: Path) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv: ImageId -> synset (the first token of PredictionString)."""
    mapping = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise UsageError(f"{path}: expected the columns ImageId,PredictionString (LOC_val_solution.csv)")
        for line, row in enumerate(reader, start=2):
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise UsageError(f"{path}:{line}: empty PredictionString for {row['ImageId']}")
            mapping[row["ImageId"]] = tokens[0]
    return mapping


def read_devkit_ground_truth(path: Path) -> dict[str, str]:
    """The devkit's ILSVRC2012_validation_ground_truth.txt (line i: ILSVRC2012_ID of
    ILSVRC2012_val_<i>.JPEG) mapped to synsets through meta.mat in the same folder."""
    meta_path = path.parent / "meta.mat"
    if not meta_path.is_file():
        raise UsageError(f"{meta_path} is missing: the devkit's ground truth {path.name} gives ILSVRC2012_IDs, "
                         f"which meta.mat maps to synsets")
    from scipy.io import loadmat

    try:
        synsets = loadmat(meta_path, squeeze_me=True)["synsets"]
        id_to_wnid = {int(i): str(w) for i, w in zip(synsets["ILSVRC2012_ID"], synsets["WNID"])}
    except Exception as err:  # scipy raises several types for a bad file
        raise UsageError(f"{meta_path}: not the devkit's meta.mat with synsets.ILSVRC2012_ID/WNID ({err})") from None
    mapping = {}
    for line, text in enumerate(path.read_text().split(), start=1):
        if not text.isdigit() or int(text) not in id_to_wnid:
            raise UsageError(f"{path}:{line}: {text!r} is not an ILSVRC2012_ID listed in {meta_path}")
        mapping[f"ILSVRC2012_val_{line:08d}"] = id_to_wnid[int(text)]
    return mapping


def find_val_labels(raw: Path, val_labels: Path | None) -> Path:
    candidates = [val_labels] if val_labels else [raw / LOC_CSV, raw / DEVKIT_GROUND_TRUTH]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if val_labels:
        raise UsageError(f"--val-labels {val_labels} does not exist")
    raise UsageError(f"{raw / 'val'} holds images but no class folders (the official flat layout), and no labels "
                     f"were found: expected {raw / LOC_CSV} or {raw / DEVKIT_GROUND_TRUTH} (+ meta.mat), "
                     f"or pass --val-labels ({LAYOUT_HINT})")


def scan_flat_val(val_dir: Path, classes: list[str], labels_file: Path) -> Split:
    if labels_file.suffix.lower() == ".csv":
        stem_to_wnid = read_loc_csv(labels_file)
    else:
        stem_to_wnid = read_devkit_ground_truth(labels_file)
    images = sorted(p for p in val_dir.iterdir() if p.is_file() and _is_image(p.name))
    unlabelled = [p.name for p in images if p.stem not in stem_to_wnid]
    if unlabelled:
        raise UsageError(f"{len(unlabelled)} images in {val_dir} have no label in {labels_file}: {_few(unlabelled)}")
    present = {p.stem for p in images}
    missing = sorted(set(stem_to_wnid) - present)
    if missing:
        raise UsageError(f"{labels_file} lists {len(missing)} images that are not in {val_dir}: {_few(missing)} "
                         f"(incomplete extraction?)")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({w for w in stem_to_wnid.values() if w not in index})
    if unknown:
        raise UsageError(f"class sets differ: {labels_file} uses {len(unknown)} classes that have no folder in "
                         f"{val_dir.parent / 'train'}: {_few(unknown)}")
    return Split("val", images, [index[stem_to_wnid[p.stem]] for p in images])


def scan_raw(raw: Path, val_labels: Path | None = None) -> tuple[list[str], dict[str, Split]]:
    """Check the whole raw layout and list (path, label) for each split."""
    if not raw.is_dir():
        raise UsageError(f"raw folder {raw} does not exist ({LAYOUT_HINT})")
    for name in SPLITS:
        if not (raw / name).is_dir():
            raise UsageError(f"missing split: {raw / name} does not exist (expected {raw / name}/<class>/<image>.JPEG; "
                             f"{LAYOUT_HINT})")
    if not _class_folders(raw / "train"):
        raise UsageError(f"{raw / 'train'} has no class folders (expected {raw / 'train'}/<class>/<image>.JPEG)")
    classes, train = scan_class_folders(raw / "train")
    val_dir = raw / "val"
    if _class_folders(val_dir):
        _, val = scan_class_folders(val_dir, classes)
    elif any(_is_image(p.name) for p in val_dir.iterdir()):
        val = scan_flat_val(val_dir, classes, find_val_labels(raw, val_labels))
    else:
        raise UsageError(f"missing split: {val_dir} has neither class folders nor images ({LAYOUT_HINT})")
    return classes, {"train": train, "val": val}


class ImageFiles:
    """What FFCV's writer indexes: (RGB uint8 array, label). An image that cannot be decoded is logged to
    `bad_log` (one line per image, appended by whichever writer process met it) and replaced by a tiny
    placeholder, so that the writer's processes never die mid-file; the caller decides what to do."""

    def __init__(self, split: Split, bad_log: Path):
        self.split = split
        self.bad_log = bad_log

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        path = self.split.paths[index]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # EXIF/ICC warnings are common in ImageNet and harmless
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
        except Exception as err:  # PIL raises many types for bad files
            with open(self.bad_log, "a") as log:
                log.write(f"{index}\t{path}\t{type(err).__name__}: {err}".replace("\n", " ") + "\n")
            pixels = np.zeros((8, 8, 3), np.uint8)
        return pixels, self.split.labels[index]


def _read_bad_log(path: Path) -> list[tuple[int, str, str]]:
    if not path.is_file():
        return []
    rows = [line.split("\t", 2) for line in path.read_text().splitlines() if line]
    return sorted((int(i), p, e) for i, p, e in rows)


def write_beton(dataset, path: Path, workers: int, field_args: dict, indices: list[int] | None = None,
                desc: str = "") -> None:
    from ffcv.fields import IntField, RGBImageField

    from pipeline.data.ffcv_writer import BetonWriter

    # 2 MiB pages (FFCV's minimum) suit small images; the upstream 8 MiB default suits ImageNet-sized ones.
    page_size = 1 << 21 if field_args["max_resolution"] <= 256 else 1 << 23
    writer = BetonWriter(str(path), {"image": RGBImageField(write_mode="proportion", **field_args),
                                     "label": IntField()}, num_workers=max(workers, 1), desc=desc,
                         page_size=page_size)
    writer.from_indexed_dataset(dataset, indices=indices, chunksize=100)


def _write_split(split: Split, tmp: Path, raw: Path, workers: int, field_args: dict,
                 skip_bad: bool) -> tuple[int, list[dict]]:
    """Write one split to `tmp`; returns (samples written, skipped images)."""
    bad_log = temp_name(tmp.parent / f"bad-{split.name}.log")
    try:
        dataset = ImageFiles(split, bad_log)
        write_beton(dataset, tmp, workers, field_args, desc=f"{split.name}.beton")
        bad = _read_bad_log(bad_log)
    finally:
        bad_log.unlink(missing_ok=True)
    if not bad:
        return len(dataset), []
    if not skip_bad:
        listing = "; ".join(f"{p} ({e})" for _, p, e in bad[:10])
        raise UsageError(f"{len(bad)} undecodable image(s) in {raw / split.name}: {listing}"
                         f"{' ...' if len(bad) > 10 else ''} (fix or remove them, or pass --skip-bad)")
    bad_ids = {i for i, _, _ in bad}
    keep = [i for i in range(len(dataset)) if i not in bad_ids]
    if not keep:
        raise UsageError(f"every image in {raw / split.name} failed to decode")
    tmp.unlink()  # write again without them: a .beton cannot drop samples in place
    write_beton(dataset, tmp, workers, field_args, indices=keep, desc=f"{split.name}.beton (without bad images)")
    return len(keep), [{"split": split.name, "path": p, "error": e} for _, p, e in bad]


def prepare_imagenet(raw: Path, out: Path, *, max_resolution: int = 500, compress_probability: float = 0.5,
                     jpeg_quality: int = 90, workers: int | None = None, val_labels: Path | None = None,
                     skip_bad: bool = False) -> dict:
    """Write <out>/train.beton and <out>/val.beton (renamed into place only when both are complete)."""
    if not 0 <= compress_probability <= 1:
        raise UsageError(f"--compress-probability must be in [0, 1], got {compress_probability}")
    if not 1 <= jpeg_quality <= 100:
        raise UsageError(f"--jpeg-quality must be in [1, 100], got {jpeg_quality}")
    if max_resolution < 8:
        raise UsageError(f"--max-resolution must be >= 8, got {max_resolution}")
    workers = resolve_workers(workers) or 1
    classes, splits = scan_raw(raw, val_labels)
    out.mkdir(parents=True, exist_ok=True)
    field_args = {"max_resolution": max_resolution, "compress_probability": compress_probability,
                  "jpeg_quality": jpeg_quality}
    started = time.time()
    info, skipped = {}, []
    finals = [out / f"{name}.beton" for name in SPLITS] + [out / "bad_images.txt", out / META_FILE]
    with atomic_outputs(finals) as temps:
        for name, tmp in zip(SPLITS, temps):
            samples, bad = _write_split(splits[name], tmp, raw, workers, field_args, skip_bad)
            skipped += bad
            info[name] = {"file": f"{name}.beton", "samples": samples, "bytes": tmp.stat().st_size}
        # bad_images.txt is always written (empty when nothing was skipped), so no stale list survives.
        temps[-2].write_text("".join(f"{s['split']}\t{s['path']}\t{s['error']}\n" for s in skipped))
        meta = {"format": "ffcv", "kind": "images", "raw": str(raw), "num_classes": len(classes),
                "classes": classes, "splits": info, "prepare": field_args, "skipped": skipped,
                "seconds": round(time.time() - started, 1)}
        write_meta(temps[-1], meta)
    return meta


def check_beton(path: Path, expected_bytes: int | None = None) -> None:
    """Detect a truncated or foreign .beton before FFCV reads garbage from it."""
    if expected_bytes is not None:
        check_file_size(path, expected_bytes)
    elif not path.is_file():
        raise UsageError(f"prepared file {path} is missing")
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, HeaderType

    size = path.stat().st_size
    if size < HeaderType.itemsize:
        raise UsageError(f"prepared file {path} is truncated ({size} bytes): not an FFCV file")
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    table = int(header["alloc_table_ptr"])
    if header["version"] != CURRENT_VERSION or not 0 < table <= size:
        raise UsageError(f"prepared file {path} is truncated or not an FFCV file (header points past its end)")
    if (size - table) % ALLOC_TABLE_TYPE.itemsize:
        raise UsageError(f"prepared file {path} is truncated (its allocation table is cut)")
    allocations = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=table)
    if len(allocations) and int((allocations["ptr"] + allocations["size"]).max()) > table:
        raise UsageError(f"prepared file {path} is truncated or corrupt (a sample lies past the data region)")

