"""ImageNet-style preparation (FFCV) and the image loaders, on generated data in the real layouts."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import build_loaders, load_card
from pipeline.data.common import read_meta
from pipeline.data.demo import write_digit_images
from pipeline.data.imagenet import check_beton, prepare_imagenet
from pipeline.errors import UsageError

# numba's dispatcher finalisers (inside FFCV) complain harmlessly at interpreter shutdown.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
SIZES = {"train": 300, "val": 100}  # the demo's layout and classes, fewer images


def labels_in(beton: Path) -> np.ndarray:
    """The IntField 'label' lives in the file's metadata table: read it without building a Loader."""
    from ffcv.reader import Reader

    return np.asarray(Reader(str(beton)).metadata["f1"])


def make_tree(root: Path, classes: list[str], per_class: int, split: str = "train", size: int = 24) -> None:
    rng = np.random.default_rng(0)
    for name in classes:
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{k}.JPEG", quality=90)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def config(root: Path, **kw) -> SimpleNamespace:
    values = dict(dataset="demo_images", root=str(root), batch_size=32, eval_batch_size=None, workers=2,
                  resolution=32, frames=16, train_frames=None, augment=True)
    values.update(kw)
    return SimpleNamespace(**values)


@pytest.fixture(scope="module")
def demo_prepared(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("images")
    write_digit_images(base / "raw", np.random.default_rng(0), SIZES)
    prepare_imagenet(base / "raw", base / "prepared", max_resolution=64, workers=2)
    return base / "prepared"


def test_prepare_writes_both_splits_with_labels(demo_prepared):
    card = load_card("demo_images")
    meta = read_meta(demo_prepared)
    assert card["sizes"] == {"train": 600, "val": 200}
    assert leftovers(demo_prepared) == ["bad_images.txt", "meta.json", "train.beton", "val.beton"]
    assert meta["classes"] == card["classes"] and meta["num_classes"] == 10
    for split in ("train", "val"):
        labels = labels_in(demo_prepared / f"{split}.beton")
        assert len(labels) == meta["splits"][split]["samples"] == SIZES[split]
        # class-folder order, as torchvision's ImageFolder: equal blocks of 0, 1, ..., 9
        assert np.array_equal(labels, np.repeat(np.arange(10), SIZES[split] // 10))
        check_beton(demo_prepared / f"{split}.beton", meta["splits"][split]["bytes"])


@pytest.mark.timeout(180)
def test_loaders_round_trip(demo_prepared):
    loaders = build_loaders(config(demo_prepared), seed=0)
    assert loaders.num_classes == 10 and loaders.input_kind == "image"
    assert len(loaders.train) == 300 // 32 and len(loaders.val) == -(-100 // 32)
    seen = []
    for images, labels in loaders.train:
        assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
        assert labels.shape == (32,) and labels.dtype == torch.int64
        seen.append(labels.clone())
    assert set(torch.cat(seen).tolist()) == set(range(10))
    val_images, val_labels = zip(*[(x.clone(), y.clone()) for x, y in loaders.val])
    assert [len(y) for y in val_labels] == [32] * 3 + [4]  # no drop_last
    assert torch.equal(torch.cat(val_labels), torch.arange(10).repeat_interleave(10))  # sequential
    pixels = torch.cat(val_images)
    assert abs(pixels.mean().item()) < 1.0 and 0.3 < pixels.std().item() < 3.0  # normalised, not 0..255

    # order: deterministic per (seed, epoch), different across epochs, padded shards disjoint across ranks
    order = loaders.train.loader.traversal_order
    assert np.array_equal(order.sample_order(3), order.sample_order(3))
    assert not np.array_equal(order.sample_order(3), order.sample_order(4))
    loaders.train.set_epoch(5)
    assert loaders.train.loader.next_epoch == 5


def first_batches(root: Path, *, seed: int, epoch: int, workers: int, n: int = 3) -> list[torch.Tensor]:
    loader = build_loaders(config(root, workers=workers), seed=seed).train
    loader.set_epoch(epoch)
    batches = []
    for images, _ in loader:
        batches.append(images.clone())
        if len(batches) == n:
            break
    return batches


@pytest.mark.timeout(300)
def test_training_augmentations_repeat_with_the_seed(demo_prepared):
    """Random crops and flips are drawn from per-image seeds: the same (seed, epoch) gives the same batches in a
    new loader and with another thread count (what a resumed run, or one on another node, sees); another epoch or
    another seed gives other crops."""
    reference = first_batches(demo_prepared, seed=3, epoch=1, workers=2)
    again = first_batches(demo_prepared, seed=3, epoch=1, workers=2)
    one_thread = first_batches(demo_prepared, seed=3, epoch=1, workers=1)
    assert all(torch.equal(a, b) for a, b in zip(reference, again))
    assert all(torch.equal(a, b) for a, b in zip(reference, one_thread))
    other_seed = first_batches(demo_prepared, seed=4, epoch=1, workers=2)
    assert not any(torch.equal(a, b) for a, b in zip(reference, other_seed))
    assert not any(torch.equal(a, b) for a, b in zip(reference, first_batches(demo_prepared, seed=3, epoch=2,
                                                                               workers=2)))


def test_per_image_seeds_spread():
    """Seeds differ across images of a batch, across batches holding the same image, and across run seeds."""
    from pipeline.data.seeded_augment import batch_key, seed_for
    batch = np.arange(64, dtype=np.uint64)
    key = batch_key(0, batch)
    seeds = {int(seed_for(key, i)) for i in batch}
    assert len(seeds) == 64
    shuffled = batch_key(0, batch[::-1].copy())
    assert seed_for(shuffled, 5) != seed_for(key, 5)
    assert batch_key(1, batch) != key


@pytest.mark.timeout(180)
def test_gpu_pipeline_order_matches_cpu_order(demo_prepared):
    """The GPU order (uint8 -> ToDevice -> torch normalisation) must build without FFCV's CPU-order hang and
    give the CPU order's numbers; on a CPU machine it runs with ToDevice('cpu')."""
    from pipeline.data.loaders import build_image_loaders

    meta, card = read_meta(demo_prepared), load_card("demo_images")
    kw = dict(workers=2, eval_batch_size=50, rank=0, world_size=1, seed=0, device="cpu")
    _, val_cpu = build_image_loaders(demo_prepared, meta, card, config(demo_prepared), order="cpu", **kw)
    _, val_gpu = build_image_loaders(demo_prepared, meta, card, config(demo_prepared), order="gpu", **kw)
    cpu = [(x.clone(), y.clone()) for x, y in val_cpu]
    gpu = [(x.clone(), y.clone()) for x, y in val_gpu]
    assert len(cpu) == len(gpu) == 2
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.dtype == torch.float32 and torch.equal(yc, yg)
        assert torch.allclose(xc, xg, atol=1e-4)


@pytest.mark.timeout(120)
def test_distributed_shards(demo_prepared):
    """Two ranks: train shards are disjoint (up to DistributedSampler's padding) and cover every sample;
    val is split exactly, each sample on one rank."""
    shards = {}
    for rank in (0, 1):
        loaders = build_loaders(config(demo_prepared, eval_batch_size=64), rank=rank, world_size=2, seed=7)
        shards[rank] = (loaders.train.loader.traversal_order.sample_order(2),
                        loaders.val.loader.traversal_order.sample_order(0), len(loaders.train))
    (train0, val0, len0), (train1, val1, len1) = shards[0], shards[1]
    assert len(train0) == len(train1) == 150 and len0 == len1 == 150 // 32
    assert not set(train0.tolist()) & set(train1.tolist())
    assert set(train0.tolist()) | set(train1.tolist()) == set(range(300))
    assert sorted(val0.tolist() + val1.tolist()) == list(range(100))


def test_truncated_beton_is_detected(demo_prepared, tmp_path):
    copy = tmp_path / "prepared"
    shutil.copytree(demo_prepared, copy)
    with open(copy / "train.beton", "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    with pytest.raises(UsageError, match=r"train\.beton is truncated"):
        build_loaders(config(copy))
    with pytest.raises(UsageError, match="truncated"):  # without meta.json's size: the header check
        check_beton(copy / "train.beton")


def test_wrong_dataset_for_root_is_an_error(demo_prepared):
    with pytest.raises(UsageError, match="10 classes but the card of 'imagenet' says 1000"):
        build_loaders(config(demo_prepared, dataset="imagenet"))
    with pytest.raises(UsageError, match="needs 'frames'"):
        build_loaders(config(demo_prepared, dataset="demo_dvs"))


def test_flat_val_with_loc_csv(tmp_path):
    raw = tmp_path / "raw"
    classes = ["n01440764", "n01443537", "n01484850"]
    make_tree(raw, classes, per_class=3)
    (raw / "val").mkdir()
    expected = []
    with open(raw / "LOC_val_solution.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "PredictionString"])
        for i in range(1, 7):
            label = (i * 2) % 3
            stem = f"ILSVRC2012_val_{i:08d}"
            Image.new("RGB", (30, 20), (i * 30, 0, 0)).save(raw / "val" / f"{stem}.JPEG")
            writer.writerow([stem, f"{classes[label]} 1 2 3 4 {classes[label]} 5 6 7 8"])
            expected.append(label)
    meta = prepare_imagenet(raw, tmp_path / "out", max_resolution=64, workers=1)
    assert meta["splits"]["val"]["samples"] == 6
    assert labels_in(tmp_path / "out" / "val.beton").tolist() == expected


def test_flat_val_with_devkit_ground_truth(tmp_path):
    from scipy.io import savemat

    raw = tmp_path / "raw"
    classes = ["n01440764", "n01443537"]
    make_tree(raw, classes, per_class=2)
    (raw / "val").mkdir()
    devkit = raw / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    # The devkit numbers synsets in its own order (ILSVRC2012_ID), not the sorted one; parents have children.
    synsets = np.zeros(3, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    synsets[0] = (1, "n01443537", 0)
    synsets[1] = (2, "n01440764", 0)
    synsets[2] = (3, "n00001740", 2)
    savemat(devkit / "meta.mat", {"synsets": synsets})
    ids = [1, 2, 2, 1]
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    for n in range(1, 5):
        Image.new("RGB", (20, 20)).save(raw / "val" / f"ILSVRC2012_val_{n:08d}.JPEG")
    prepare_imagenet(raw, tmp_path / "out", max_resolution=64, workers=1)
    # ID 1 = n01443537 = label 1 in sorted order, ID 2 = n01440764 = label 0
    assert labels_in(tmp_path / "out" / "val.beton").tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize("problem, message", [
    ("missing_val", r"missing split: .*/raw/val does not exist"),
    ("missing_train", r"missing split: .*/raw/train does not exist"),
    ("empty_class", r"empty class folder .*/raw/val/b"),
    ("class_mismatch", r"class folders differ between .*/raw/train and .*/raw/val: 1 only in train \[c\]"),
    ("flat_val_without_labels", r"no labels were found: expected .*LOC_val_solution\.csv"),
    ("csv_misses_an_image", r"1 images in .*/raw/val have no label in .*LOC_val_solution\.csv"),
])
def test_bad_layouts_fail_before_writing(tmp_path, problem, message):
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_tree(raw, ["a", "b", "c"], per_class=2)
    make_tree(raw, ["a", "b", "c"], per_class=2, split="val")
    if problem == "missing_val":
        shutil.rmtree(raw / "val")
    elif problem == "missing_train":
        shutil.rmtree(raw / "train")
    elif problem == "empty_class":
        for f in (raw / "val" / "b").iterdir():
            f.unlink()
        (raw / "val" / "b" / "notes.txt").write_text("not an image")
    elif problem == "class_mismatch":
        shutil.rmtree(raw / "val" / "c")
    else:
        shutil.rmtree(raw / "val")
        (raw / "val").mkdir()
        for n in (1, 2):
            Image.new("RGB", (20, 20)).save(raw / "val" / f"ILSVRC2012_val_{n:08d}.JPEG")
        if problem == "csv_misses_an_image":
            (raw / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,a 1 2 3 4\n")
    with pytest.raises(UsageError, match=message):
        prepare_imagenet(raw, out, workers=1)
    assert leftovers(out) == []


def test_undecodable_image_fails_or_is_skipped(tmp_path):
    raw = tmp_path / "raw"
    make_tree(raw, ["a", "b"], per_class=3)
    make_tree(raw, ["a", "b"], per_class=2, split="val")
    bad = raw / "train" / "b" / "b_1.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with pytest.raises(UsageError, match=rf"1 undecodable image\(s\) in .*{bad}.*--skip-bad"):
        prepare_imagenet(raw, tmp_path / "out", max_resolution=64, workers=2)
    assert leftovers(tmp_path / "out") == []  # nothing partial under the final names, no temporaries

    meta = prepare_imagenet(raw, tmp_path / "out", max_resolution=64, workers=2, skip_bad=True)
    assert meta["splits"]["train"]["samples"] == 5
    assert labels_in(tmp_path / "out" / "train.beton").tolist() == [0, 0, 0, 1, 1]
    assert meta["skipped"][0]["path"] == str(bad)
    assert str(bad) in (tmp_path / "out" / "bad_images.txt").read_text()


def test_workers_default_follows_slurm(monkeypatch):
    from pipeline.data.common import default_workers, resolve_workers

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "7")
    assert default_workers() == 7 and resolve_workers(None) == 7 and resolve_workers(3) == 3
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert default_workers() == len(os.sched_getaffinity(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.timeout(180)
def test_gpu_loaders_on_cuda(demo_prepared):
    """The GPU order on a real device: batches on CUDA, the same numbers as the CPU order."""
    gpu = build_loaders(config(demo_prepared, eval_batch_size=50), device="cuda", seed=0)
    cpu = build_loaders(config(demo_prepared, eval_batch_size=50), device="cpu", seed=0)
    images, labels = next(iter(gpu.train))
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.float32 and labels.dtype == torch.int64
    for (xg, yg), (xc, yc) in zip(gpu.val, cpu.val):
        assert torch.equal(yg.cpu(), yc) and torch.allclose(xg.cpu(), xc, atol=1e-4)
