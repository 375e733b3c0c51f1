"""The experiment config: every shipped YAML validates; overrides apply; errors name the file and the key."""
from pathlib import Path

import pytest
import yaml

from pipeline.config import apply_override, flatten, load_config
from pipeline.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "config" / "experiments").glob("*.yaml"))

MINIMAL = {"name": "x", "output_dir": "runs/x", "model": {"name": "fsnn_resnet18"},
           "data": {"dataset": "demo_images", "root": "datasets/prepared/demo/images"}}


def write(tmp_path, tree) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_shipped_experiments_validate(path):
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_paper_recipe_imagenet_resnet18():
    cfg = load_config(ROOT / "config/experiments/imagenet_fsnn_resnet18.yaml")
    assert (cfg.model.T, cfg.model.connect, cfg.model.aap) == (4, "IAND", True)
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.schedule.t_max) == (0.1, 1e-5, 320)
    assert cfg.data.batch_size * cfg.launcher.tasks_per_node * cfg.launcher.nodes == 512


def test_overrides_are_typed(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["trainer.epochs=3", "model.T=2", "model.aap=false",
                                                 "optimizer.lr=0.5", "tracking.tags.team=snn"])
    assert (cfg.trainer.epochs, cfg.model.T, cfg.model.aap, cfg.optimizer.lr) == (3, 2, False, 0.5)
    assert cfg.tracking.tags == {"team": "snn"}


@pytest.mark.parametrize("overrides, fragment", [
    (["trainer.epocs=2"], "trainer.epocs"),
    (["trainer.epochs=zero"], "trainer.epochs"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["model.connect=NAND"], "model.connect"),
    (["model.name=resnet9000"], "resnet9000"),
    (["data.dataset=mnist"], "data.dataset"),
    (["launcher.cluster=kubernetes"], "launcher.cluster"),
    (["bogus=1"], "bogus"),
    (["model.name=spiking_resnet18"], "model.aap"),
])
def test_bad_values_name_the_key(tmp_path, overrides, fragment):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(UsageError) as err:
        load_config(path, overrides)
    assert fragment in str(err.value) and str(path) in str(err.value)


def test_missing_section_and_file(tmp_path):
    tree = {k: v for k, v in MINIMAL.items() if k != "data"}
    with pytest.raises(UsageError, match="data"):
        load_config(write(tmp_path, tree))
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_override_syntax_errors():
    with pytest.raises(UsageError, match="key.path=value"):
        apply_override({}, "trainer.epochs")
    with pytest.raises(UsageError, match="is a value"):
        apply_override({"trainer": 3}, "trainer.epochs=2")


def test_flatten_gives_stable_param_names(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    flat = flatten(cfg.model_dump(mode="json"))
    for key in ("model.name", "model.T", "model.connect", "model.aap", "data.dataset", "trainer.epochs"):
        assert key in flat


def test_model_memory_format_reaches_the_model(tmp_path):
    """model.channels_last: unset keeps the model's default (channels-last ResNets), set it is passed on; a model
    without the option (the DVS nets) is a clear error naming the model."""
    from pipeline.engine import build_model
    default = build_model(load_config(write(tmp_path, MINIMAL)), 10)
    nchw = build_model(load_config(write(tmp_path, MINIMAL), ["model.channels_last=false"]), 10)
    assert default.channels_last and not nchw.channels_last
    dvs = dict(MINIMAL, model={"name": "fsnn_7b_net", "channels_last": True})
    with pytest.raises(UsageError, match="model fsnn_7b_net: .*channels_last"):
        build_model(load_config(write(tmp_path, dvs)), 11)


def test_model_fused_stem_reaches_the_model(tmp_path):
    """model.fused_stem: unset leaves the model's default (None: fused on CPU only), set it is passed on."""
    from pipeline.engine import build_model
    assert build_model(load_config(write(tmp_path, MINIMAL)), 10).fused_stem is None
    for value in (True, False):
        model = build_model(load_config(write(tmp_path, MINIMAL), [f"model.fused_stem={str(value).lower()}"]), 10)
        assert model.fused_stem is value
    dvs = dict(MINIMAL, model={"name": "fsnn_7b_net", "fused_stem": True})
    with pytest.raises(UsageError, match="model fsnn_7b_net: .*fused_stem"):
        build_model(load_config(write(tmp_path, dvs)), 11)
