"""The typed experiment config: one pydantic schema, loaded from YAML with dotted command-line overrides.

    cfg = load_config("config/experiments/demo_fsnn_resnet18.yaml", ["trainer.epochs=2", "model.T=2"])

Unknown keys and bad values are errors naming the file and the dotted key, raised before any work starts.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UsageError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str
    T: int = Field(4, ge=1, description="time steps (image models); DVS models take T from the frames")
    connect: Literal["IAND", "AND", "OR", "XOR", "ADD"] = "IAND"
    aap: bool = True
    neuron: Literal["if", "lif", "plif"] | None = None  # None: the model's default (IF for ResNets, PLIF for DVS)
    neuron_kwargs: dict[str, Any] = {}
    num_classes: int | None = Field(None, ge=2, description="None: taken from the dataset card")
    zero_init_residual: bool | None = None
    channels_last: bool | None = Field(None, description="None: the model's default (the ResNets run channels-last; "
                                                         "the DVS nets have no such option)")
    fused_stem: bool | None = Field(None, description="the ResNet stem's neuron + max pool as one kernel: None: on "
                                                      "CPU only; true: also on CUDA (Triton); false: never")

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from dst.models import is_model, list_models
        if not is_model(name):
            raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
        return name


class DataConfig(Section):
    dataset: Literal["imagenet", "dvs_gesture", "cifar10_dvs", "demo_images", "demo_dvs"]
    root: str = Field(description="prepared data directory (train/val .beton files or DVS frame files)")
    batch_size: int = Field(64, ge=1, description="per rank")
    eval_batch_size: int | None = Field(None, ge=1)
    workers: int | None = Field(None, ge=0, description="None: SLURM_CPUS_PER_TASK or the CPUs this process may use")
    resolution: int = Field(224, ge=8)
    frames: int = Field(16, ge=1)
    train_frames: int | None = Field(None, ge=1, description="random subset of frames for training (SEW: 12 of 16)")
    augment: bool = True


class OptimizerConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleConfig(Section):
    name: Literal["cosine", "step", "constant"] = "cosine"
    t_max: int | None = Field(None, ge=1, description="cosine period in epochs; None: trainer.epochs")
    step_size: int = Field(64, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)


class LossConfig(Section):
    fsnn_weight: float = Field(1.0, ge=0)
    dsnn_weight: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class TrainerConfig(Section):
    epochs: int = Field(1, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    zero_stage: int = Field(0, ge=0, le=3)
    seed: int = 2020
    eval_every: int = Field(1, ge=1, description="epochs between evaluations (the last epoch is always evaluated)")
    checkpoint_every: int = Field(64, ge=1, description="keep a checkpoint every K epochs (latest and best are kept)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap for quick runs")
    max_eval_batches: int | None = Field(None, ge=1)
    log_every_steps: int = Field(50, ge=1)
    progress: bool = True
    activation_checkpointing: Literal["none", "blocks"] = Field(
        "none", description="'blocks': each residual block recomputes its forward in backward instead of keeping its "
                            "activations (less memory, slower steps; dst/memory_options.py). How the model runs, not "
                            "what its weights mean: not part of the checkpoint's model identity")


class TrackingConfig(Section):
    enabled: bool = True
    uri: str | None = Field(None, description="None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd")
    experiment: str = "dst"
    run_name: str | None = None
    tags: dict[str, str] = {}
    parent_run_id: str | None = Field(None, description="nest this run under a parent (the workflow's run)")
    log_system_metrics: bool = True


class LauncherConfig(Section):
    cluster: Literal["slurm", "local", "debug"] = "local"
    nodes: int = Field(1, ge=1)
    tasks_per_node: int = Field(1, ge=1, description="ranks per node (= GPUs per node on GPU clusters)")
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = Field(60, ge=1)
    signal_delay_s: int = Field(120, ge=1)
    max_requeues: int = Field(3, ge=0)
    additional_parameters: dict[str, Any] = {}
    folder: str | None = Field(None, description="None: <output_dir>/submitit")


class ExperimentConfig(Section):
    name: str
    output_dir: str = Field(description="the run directory: checkpoints, resolved config, metrics")
    model: ModelConfig
    data: DataConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    trainer: TrainerConfig = TrainerConfig()
    tracking: TrackingConfig = TrackingConfig()
    launcher: LauncherConfig = LauncherConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        if self.model.name.startswith("spiking_resnet") and self.model.aap:
            raise ValueError("model.aap: Spiking ResNet cannot carry an AAP; set model.aap=false")
        if self.data.train_frames is not None and self.data.train_frames > self.data.frames:
            raise ValueError(f"data.train_frames ({self.data.train_frames}) exceeds data.frames ({self.data.frames})")
        return self


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` assignment (value parsed as YAML) to a nested dict, in place."""
    if "=" not in assignment:
        raise UsageError(f"override {assignment!r} is not of the form key.path=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UsageError(f"override {assignment!r} has an empty key")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"override {key}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise UsageError(f"override {key}: cannot parse value {raw!r}: {err}") from None


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
        lines.append(f"{source}: {key}: {e['msg']}{value}")
    return "\n".join(lines)


def config_from_dict(tree: dict, source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        raise UsageError(format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise UsageError(f"{path}: the top level must be a mapping of sections, got {type(tree).__name__}")
    tree = copy.deepcopy(tree)
    for assignment in overrides:
        apply_override(tree, assignment)
    source = str(path) + (" (with overrides)" if overrides else "")
    return config_from_dict(tree, source)


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'model': {'T': 4}} -> {'model.T': 4}: the MLflow param names, identical across runs."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
