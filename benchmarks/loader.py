"""Benchmark 3, loader: our FFCV training loader against a PIL + numpy + torch DataLoader doing the same work.

Data: synthetic ImageNet-like JPEGs (500x375 and 375x500, quality 90, ~100 KB like ImageNet's), in class folders,
written once to a cache folder. Both loaders produce training batches of float32 [N, 3, 224, 224]: decode,
RandomResizedCrop(224, scale (0.08, 1), ratio (3/4, 4/3)), random horizontal flip, normalise with ImageNet's mean/std.
  ours       the pipeline's loader: pipeline.data.imagenet.prepare_imagenet writes train.beton, and
             pipeline.data.loaders.build_image_loaders reads it (FFCV, the CPU pipeline order), for several
             preparations: the public ffcv-imagenet recipe (max side 500, half JPEG q90 / half raw) and tuned ones
  pil        torch DataLoader over the JPEG files: PIL decode, crop + resize (bilinear), flip, numpy normalise
Same batch size, same number of workers; an epoch over the training images is timed after a warm-up epoch.

Target: ours >= 2x the PIL loader's throughput (an untuned FFCV pipeline measured 1.8x on this machine).
The headline ratio is the best preparation's; each preparation's is in the table and the JSON.
Prints a table, then one JSON line {"name": "loader", ...}.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, best_ratio, emit, environment, min_ms, table, time_interleaved  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# (name, max_resolution, compress_probability, jpeg_quality): stored size and format are what FFCV decodes each epoch
PREPARATIONS = [
    ("recipe-500-half-jpeg", 500, 0.5, 90),
    ("320-jpeg-q90", 320, 1.0, 90),
    ("256-jpeg-q90", 256, 1.0, 90),
    ("256-raw", 256, 0.0, 90),
]


# ---------------------------------------------------------------- data
def make_jpegs(root: Path, classes: int, per_class: int, seed: int = 0) -> None:
    """Class-folder JPEGs of ImageNet-like size and content (smooth shapes + texture, so JPEG sizes are realistic)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", 2)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = (500, 375) if (i + c) % 3 else (375, 500)
                low = rng.random((h // 25 + 2, w // 25 + 2, 3)).astype(np.float32)
                img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC),
                                 np.float32)
                img += rng.normal(0, 18, (h, w, 3)).astype(np.float32)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img{i:05d}.JPEG",
                                                                             quality=90)


def prepared(cache: Path, classes: int, per_class: int, preparation) -> tuple[Path, Path]:
    """(raw folder, prepared folder), built once and reused (keyed by their parameters)."""
    from pipeline.data.imagenet import prepare_imagenet
    raw = cache / f"raw-{classes}x{per_class}"
    if not (raw / ".done").exists():
        make_jpegs(raw, classes, per_class)
        (raw / ".done").write_text("")
    name, max_res, compress, quality = preparation
    out = cache / f"prepared-{classes}x{per_class}-{name}"
    if not (out / "meta.json").exists():
        prepare_imagenet(raw, out, max_resolution=max_res, compress_probability=compress, jpeg_quality=quality,
                         workers=2)
    return raw, out


# ---------------------------------------------------------------- the PIL loader
class PilTrainSet(torch.utils.data.Dataset):
    """torchvision's RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize, written with PIL and numpy."""

    def __init__(self, files: list[Path], labels: list[int], size: int = 224, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3)):
        self.files, self.labels, self.size, self.scale, self.ratio = files, labels, size, scale, ratio

    def __len__(self):
        return len(self.files)

    def _crop_box(self, w: int, h: int):
        area = w * h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*log_ratio))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = random.randint(0, w - cw), random.randint(0, h - ch)
                return x0, y0, x0 + cw, y0 + ch
        side = min(w, h)  # fallback: center crop
        return (w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            im = im.resize((self.size, self.size), Image.BILINEAR, box=self._crop_box(*im.size))
        if random.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        a = (np.asarray(im, np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(a.transpose(2, 0, 1).copy()), self.labels[i]


def pil_loader(raw: Path, batch_size: int, workers: int):
    files, labels = [], []
    for label, folder in enumerate(sorted((raw / "train").iterdir())):
        for f in sorted(folder.glob("*.JPEG")):
            files.append(f)
            labels.append(label)
    return torch.utils.data.DataLoader(PilTrainSet(files, labels), batch_size=batch_size, shuffle=True,
                                       num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                                       multiprocessing_context="fork" if workers > 0 else None)


def ffcv_loader(prepared_root: Path, batch_size: int, workers: int):
    from pipeline.data.cards import load_card
    from pipeline.data.common import read_meta
    from pipeline.data.loaders import build_image_loaders
    card = load_card("imagenet")
    data = SimpleNamespace(resolution=224, augment=True, batch_size=batch_size)
    train, _ = build_image_loaders(prepared_root, read_meta(prepared_root), card, data, workers=workers,
                                   eval_batch_size=batch_size, rank=0, world_size=1, seed=0, device="cpu")
    return train


def epoch(loader):
    def run():
        n = 0
        for images, labels in loader:
            assert images.dtype == torch.float32 and images.shape[1:] == (3, 224, 224)
            n += images.shape[0]
        return n
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--per-class", type=int, default=96)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dst-bench-loader")
    p.add_argument("--preparations", nargs="+", default=[name for name, *_ in PREPARATIONS])
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    torch.set_num_threads(args.workers)
    chosen = [prep for prep in PREPARATIONS if prep[0] in args.preparations]
    roots = {prep[0]: prepared(args.cache, args.classes, args.per_class, prep) for prep in chosen}
    raw = next(iter(roots.values()))[0]

    # The DataLoader's worker processes are forked first, before FFCV starts any threads.
    loaders = {"pil": pil_loader(raw, args.batch, args.workers)}
    epoch(loaders["pil"])()
    for name, (_, root) in roots.items():
        loaders[f"ffcv-{name}"] = ffcv_loader(root, args.batch, args.workers)
    calls = {name: epoch(loader) for name, loader in loaders.items()}
    times = time_interleaved(calls, args.rounds, warmup=1)

    images = (args.per_class * args.classes // args.batch) * args.batch
    rows = []
    stored = {}
    for name, ts in times.items():
        row = {"loader": name, "ms / epoch": min_ms(ts), "images/s": round(images / min(ts), 1)}
        if name != "pil":
            prep = name[len("ffcv-"):]
            meta = json.loads((roots[prep][1] / "meta.json").read_text())
            stored[prep] = meta["splits"]["train"]["bytes"]
            row["train.beton MiB"] = round(stored[prep] / 2**20, 1)
            row["pil / this"] = best_ratio(times["pil"], ts)
        rows.append(row)
    per_prep = {name[len("ffcv-"):]: best_ratio(times["pil"], ts) for name, ts in times.items() if name != "pil"}
    best = max(per_prep, key=per_prep.get)
    raw_bytes = sum(f.stat().st_size for f in (raw / "train").rglob("*.JPEG"))
    env = environment("cpu")
    print(f"training loader, {images} images/epoch ({args.classes} classes x {args.per_class}, ~"
          f"{raw_bytes / images / 1024:.0f} KiB JPEGs), batch {args.batch}, {args.workers} workers, 224x224 "
          f"RandomResizedCrop + flip + normalise; best of {args.rounds} epochs after a warm-up epoch")
    print(table(rows, ["loader", "ms / epoch", "images/s", "pil / this", "train.beton MiB"]))
    print(f"\nbest preparation: {best} ({per_prep[best]}x); the public recipe: "
          f"{per_prep.get(PREPARATIONS[0][0])}x")
    emit({"name": "loader", "ratio": per_prep[best], "target": 2.0, "met": per_prep[best] >= 2.0,
          "best_preparation": best, "ratio_by_preparation": per_prep,
          "preparations": {name: {"max_resolution": r, "compress_probability": c, "jpeg_quality": q,
                                  "train_beton_bytes": stored.get(name)} for name, r, c, q in chosen},
          "ms_per_epoch": {n: min_ms(t) for n, t in times.items()},
          "config": {"images_per_epoch": images, "batch": args.batch, "workers": args.workers,
                     "raw_jpeg_bytes_per_image": round(raw_bytes / images)},
          "env": env})


if __name__ == "__main__":
    main()
