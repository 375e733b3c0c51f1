"""`dst data demo` and the data command line: real layouts, determinism, learnable classes, cards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.data.cards import load_card
from pipeline.data.demo import moving_shape_events, write_digit_images, write_gesture_tree
from pipeline.errors import UsageError

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "raw"
    assert main(["data", "demo", "--out", str(out), "--seed", "0"]) == 0
    return out


def test_demo_writes_the_real_layouts(demo):
    images = load_card("demo_images")
    for split, n in images["sizes"].items():
        folders = sorted(p.name for p in (demo / "demo_images" / split).iterdir())
        assert folders == images["classes"]
        assert len(list((demo / "demo_images" / split).glob("*/*.JPEG"))) == n
    gesture = demo / "demo_dvs" / "DVSGesture"
    assert (gesture / "ibmGestureTrain.tar.gz").is_file() and (gesture / "ibmGestureTest.tar.gz").is_file()
    assert len(list(gesture.glob("ibmGestureTrain/user*_*/*.npy"))) == 460
    assert len(list(gesture.glob("ibmGestureTest/user*_*/*.npy"))) == 120
    assert not list(demo.glob(".*tmp*"))  # no temporaries left


def test_tonic_reads_the_demo_as_dvs_gesture(demo):
    import tonic

    train = tonic.datasets.DVSGesture(str(demo / "demo_dvs"), train=True)
    test = tonic.datasets.DVSGesture(str(demo / "demo_dvs"), train=False)
    assert len(train) == 460 and len(test) == 120
    events, label = train[0]
    assert set(train.targets) == {0, 1, 2, 3} and label in range(4)
    assert {"x", "y", "p", "t"} <= set(events.dtype.names) and len(events) > 500
    assert events["x"].max() < 128 and events["y"].max() < 128 and np.all(np.diff(events["t"]) >= 0)


def test_demo_event_classes_are_learnable(demo):
    """The direction is readable from the polarities: ON events lie ahead of OFF events."""
    import tonic

    test = tonic.datasets.DVSGesture(str(demo / "demo_dvs"), train=False)
    correct = 0
    for index in range(len(test)):
        events, label = test[index]
        on, off = events[events["p"]], events[~events["p"]]
        dx = on["x"].mean() - off["x"].mean()
        dy = on["y"].mean() - off["y"].mean()
        guess = (0 if dx > 0 else 1) if abs(dx) > abs(dy) else (2 if dy > 0 else 3)
        correct += guess == label
    assert correct / len(test) > 0.9


def test_demo_is_deterministic_from_the_seed(demo, tmp_path):
    """The same seed rebuilds the same files (generate_demo seeds each tree with [seed, position])."""
    write_gesture_tree(tmp_path / "dvs", np.random.default_rng([0, 1]))
    for path in sorted((demo / "demo_dvs").rglob("*.npy")):
        assert path.read_bytes() == (tmp_path / "dvs" / path.relative_to(demo / "demo_dvs")).read_bytes()
    # fewer images consume the same random stream first: the first class's images must match
    write_digit_images(tmp_path / "img", np.random.default_rng([0, 0]), {"train": 100, "val": 10})
    for path in sorted((tmp_path / "img" / "train" / "digit_0").iterdir()):
        assert path.read_bytes() == (demo / "demo_images" / "train" / "digit_0" / path.name).read_bytes()
    assert not np.array_equal(moving_shape_events(np.random.default_rng(1), 0.0),
                              moving_shape_events(np.random.default_rng(2), 0.0))


def test_cli_prepares_demo_images_and_reports(demo, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["data", "imagenet", "--raw", str(demo / "demo_images"), "--out", str(out),
                 "--max-resolution", "64", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'train.beton'}: 600 images, 10 classes" in printed
    assert f"{out / 'val.beton'}: 200 images, 10 classes" in printed


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["data", "imagenet", "--raw", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"raw folder {tmp_path / 'missing'} does not exist" in err
    assert main(["data", "imagenet", "--raw", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--jpeg-quality", "0"]) == 2
    assert "--jpeg-quality must be in [1, 100]" in capsys.readouterr().err


def test_cards_hold_what_the_code_reads():
    for name, classes, sensor in (("imagenet", 1000, None), ("dvs_gesture", 11, [128, 128, 2]),
                                  ("cifar10_dvs", 10, [128, 128, 2]), ("demo_images", 10, None),
                                  ("demo_dvs", 4, [128, 128, 2])):
        card = load_card(name)
        assert card["num_classes"] == classes and card.get("sensor_size") == sensor
        assert card["source"] and card["licence"] and card["raw_layout"] and card["sizes"]
        if isinstance(card["classes"], list):
            assert len(card["classes"]) == classes
    assert load_card("demo")["variants"].keys() == {"demo_images", "demo_dvs"}
    card = load_card("demo_dvs")
    card["num_classes"] = 99  # callers get a copy
    assert load_card("demo_dvs")["num_classes"] == 4
    with pytest.raises(UsageError, match="unknown dataset 'mnist'"):
        load_card("mnist")
    cards_dir = Path(__file__).resolve().parents[1] / "datasets"
    assert not (cards_dir / "__init__.py").exists()  # datasets/ must never become a Python package
