"""The training engine: Dual-Stream Training with DeepSpeed, one process or N ranks, CPU (gloo) or GPU (NCCL).

Flat and readable in the style of torchvision's references/classification: `train` composes
build_model / build_optimizer / deepspeed_config, then loops over train_one_epoch and evaluate, checkpointing each
epoch (collectively: every rank calls save) and logging from rank 0. Restarting with the same output directory
resumes from checkpoints/latest and continues the same MLflow run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from pipeline import checkpoint as ckpt
from pipeline import storage
from pipeline.config import ExperimentConfig, dump_config
from pipeline.errors import UsageError
from pipeline.tracking import redact_uri

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A non-finite loss: training stops; the last good checkpoint stays intact."""


# --------------------------------------------------------------------------------------------- distributed
def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------------------------------- components
def model_kwargs(cfg: ExperimentConfig, num_classes: int) -> dict[str, Any]:
    m = cfg.model
    kw: dict[str, Any] = {"num_classes": m.num_classes or num_classes, "T": m.T, "connect": m.connect, "aap": m.aap}
    if m.neuron is not None:
        kw["neuron"] = m.neuron
    if m.neuron_kwargs:
        kw["neuron_kwargs"] = dict(m.neuron_kwargs)
    if m.zero_init_residual is not None:
        kw["zero_init_residual"] = m.zero_init_residual
    if m.channels_last is not None:
        kw["channels_last"] = m.channels_last
    if m.fused_stem is not None:
        kw["fused_stem"] = m.fused_stem
    return kw


def build_model(cfg: ExperimentConfig, num_classes: int) -> torch.nn.Module:
    """The model as training runs it: create_model from the model's identity (model_kwargs, which the checkpoint
    records), then the memory options, which are not part of it (so a run can resume with them changed)."""
    from dst.memory_options import MemoryOptions, apply_memory_options
    from dst.models import create_model
    try:
        model = create_model(cfg.model.name, **model_kwargs(cfg, num_classes))
        return apply_memory_options(model, MemoryOptions(activation_checkpointing=cfg.trainer.activation_checkpointing))
    except (TypeError, ValueError) as err:
        raise UsageError(f"model {cfg.model.name}: {err}") from None


def build_optimizer(cfg: ExperimentConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def lr_at(cfg: ExperimentConfig, epoch: int) -> float:
    """Learning rate for a 0-based epoch: linear warmup, then cosine (T_max epochs) / step / constant."""
    s, base = cfg.schedule, cfg.optimizer.lr
    if epoch < s.warmup_epochs:
        return base * (epoch + 1) / (s.warmup_epochs + 1)
    e = epoch - s.warmup_epochs
    if s.name == "cosine":
        t_max = s.t_max or max(1, cfg.trainer.epochs - s.warmup_epochs)
        return s.min_lr + (base - s.min_lr) * (1 + math.cos(math.pi * min(e, t_max) / t_max)) / 2
    if s.name == "step":
        return base * s.gamma ** (e // s.step_size)
    return base


def deepspeed_config(cfg: ExperimentConfig) -> dict[str, Any]:
    t = cfg.trainer
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": t.grad_accumulation,
        "zero_optimization": {"stage": t.zero_stage},
        # torch SGD is not among the optimizers DeepSpeed tested with ZeRO; it is correct with it.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if t.clip_grad_norm:
        ds["gradient_clipping"] = t.clip_grad_norm
    if t.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif t.precision == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return ds


def average_norm_stats(model: torch.nn.Module, world_size: int) -> None:
    """Average BatchNorm running statistics over ranks once per epoch (as timm's distribute_bn): each rank only saw
    its own shard, and without this every rank evaluates with different statistics while the checkpoint keeps rank
    0's, so a resumed run would evaluate differently from an uninterrupted one."""
    import torch.distributed as dist
    if world_size < 2:
        return
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            for buf in (m.running_mean, m.running_var):
                if buf is not None:
                    dist.all_reduce(buf)
                    buf.div_(world_size)


def match_norm_buffers(model: torch.nn.Module) -> None:
    """DeepSpeed's bf16/fp16 modes cast parameters but not buffers; BatchNorm then sees bf16 weights with fp32
    running statistics, which the CPU kernel rejects. Cast the statistics like `module.half()` would."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            for name in ("running_mean", "running_var"):
                buf = getattr(m, name)
                if buf is not None and buf.dtype != m.weight.dtype:
                    setattr(m, name, buf.to(m.weight.dtype))


def input_dtype(cfg: ExperimentConfig) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.trainer.precision]


def progress(iterable, total: int | None, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False)


def _limited(loader, limit: int | None):
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield batch


def _len(loader, limit: int | None) -> int | None:
    try:
        n = len(loader)
    except TypeError:
        return limit
    return min(n, limit) if limit else n


# ------------------------------------------------------------------------------------------------ epoch loops
def train_one_epoch(engine, criterion, loader, epoch: int, cfg: ExperimentConfig, is_rank0: bool) -> dict[str, float]:
    engine.train()
    dtype, device = input_dtype(cfg), engine.device
    limit = cfg.trainer.max_steps_per_epoch
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, loss_fsnn, loss_dsnn, samples (this rank)
    start = time.perf_counter()
    bar = progress(_limited(loader, limit), _len(loader, limit), is_rank0 and cfg.trainer.progress,
                   f"epoch {epoch + 1}/{cfg.trainer.epochs}")
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, dtype, non_blocking=True), y.to(device, non_blocking=True)
        out = criterion(engine(x), y)
        loss_values = [out.total.item(), out.fsnn.item(), 0.0 if out.dsnn is None else out.dsnn.item()]
        # Every rank checks the same all-reduced flag, so a NaN on one rank stops all ranks together.
        nonfinite = all_reduce_sum([0.0 if all(map(math.isfinite, loss_values)) else 1.0], device)[0]
        if nonfinite:
            raise TrainingDiverged(f"non-finite loss at epoch {epoch + 1}, step {step + 1} "
                                   f"(loss={loss_values[0]}); the last complete checkpoint is kept")
        engine.backward(out.total)
        engine.step()
        n = y.shape[0]
        sums = [s + v * n for s, v in zip(sums, loss_values + [1.0])]
        if is_rank0 and hasattr(bar, "set_postfix") and step % 5 == 0:
            bar.set_postfix(loss=f"{loss_values[0]:.3f}")
    elapsed = time.perf_counter() - start
    loss, loss_f, loss_a, samples = all_reduce_sum(sums, device)
    if samples == 0:
        raise UsageError(f"data.root {cfg.data.root}: the training loader produced no batch "
                         f"(batch_size {cfg.data.batch_size} larger than the training split?)")
    metrics = {"train/loss": loss / samples, "train/loss_fsnn": loss_f / samples,
               "throughput": samples / max(elapsed, 1e-9)}
    if engine.module.has_aap:
        metrics["train/loss_dsnn"] = loss_a / samples
    return metrics


@torch.no_grad()
def evaluate(model, loader, cfg: ExperimentConfig, device, is_rank0: bool) -> dict[str, float]:
    from dst.monitor import FiringRateMonitor
    model.eval()
    dtype = input_dtype(cfg)
    streams = ("fsnn", "dsnn") if model.has_aap else ("fsnn",)
    counts = {s: [0.0, 0.0] for s in streams}  # top1, top5 correct
    samples = 0.0
    limit = cfg.trainer.max_eval_batches
    with FiringRateMonitor(model) as monitor:
        for x, y in progress(_limited(loader, limit), _len(loader, limit), is_rank0 and cfg.trainer.progress, "eval"):
            x, y = x.to(device, dtype), y.to(device)
            out = model(x)
            logits = out._asdict() if model.has_aap else {"fsnn": out}
            for s in streams:
                k = min(5, logits[s].shape[1])
                top = logits[s].float().topk(k, dim=1).indices
                hit = top.eq(y[:, None])
                counts[s][0] += hit[:, 0].sum().item()
                counts[s][1] += hit.any(dim=1).sum().item()
            samples += y.shape[0]
        rate_sum = monitor.mean_rate * samples
    flat = [v for s in streams for v in counts[s]] + [samples, rate_sum]
    reduced = all_reduce_sum(flat, device)
    total = reduced[-2]
    if total == 0:
        raise UsageError(f"data.root {cfg.data.root}: the validation loader produced no batch")
    metrics = {}
    for i, s in enumerate(streams):
        metrics[f"val/{s}_top1"] = 100.0 * reduced[2 * i] / total
        metrics[f"val/{s}_top5"] = 100.0 * reduced[2 * i + 1] / total
    metrics["firing_rate"] = reduced[-1] / total
    return metrics


# ------------------------------------------------------------------------------------------------------- train
def train(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train one experiment; every rank calls this. Returns the final metrics (same on every rank)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed picks its accelerator
    import deepspeed
    from pipeline.distributed import init_deepspeed
    denv = init_deepspeed()  # from submitit, torchrun-style env vars, srun, or a single process
    rank, world_size = denv.rank, denv.world_size
    from dst.loss import DSTLoss
    from pipeline.data import build_loaders
    from pipeline.tracking import Tracker, run_tags

    is_rank0 = rank == 0
    out_dir = Path(cfg.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    # Nothing is written into output_dir until the inputs have been checked (data, checkpoint, tracking server): a
    # bad input must leave no partial run behind, nor overwrite the config.yaml of another model's run.

    torch.manual_seed(cfg.trainer.seed)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else \
        torch.device("cpu")
    loaders = build_loaders(cfg.data, rank=rank, world_size=world_size, seed=cfg.trainer.seed, device=str(device))
    model = build_model(cfg, loaders.num_classes)
    optimizer = build_optimizer(cfg, model)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg))
    match_norm_buffers(engine.module)
    criterion = DSTLoss(cfg.loss.fsnn_weight, cfg.loss.dsnn_weight, cfg.loss.label_smoothing)

    state: dict[str, Any] = {"epoch": 0, "global_step": 0, "best_metric": None, "best_epoch": None,
                             "history": [], "mlflow_run_id": None}
    tag = ckpt.read_pointer(ckpt_dir, "latest") if ckpt_dir.exists() else None
    if tag is not None:
        # Compare models from the client state first (memory-mapped, cheap): DeepSpeed's strict load_state_dict
        # would otherwise fail on another architecture with a page of missing/unexpected keys.
        _check_same_model(ckpt.read_client_state(ckpt_dir / tag), model, ckpt_dir / tag)
        try:
            with ckpt.weights_only_loads():  # DeepSpeed's loader passes weights_only=False itself
                _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
        except Exception as err:  # truncated or corrupted shard, refused pickled object, shape mismatch
            raise UsageError(f"{ckpt_dir / tag}: cannot resume from this checkpoint "
                             f"({ckpt.describe_load_error(err)})") from None
        if client is None or "dst" not in client:
            raise UsageError(f"{ckpt_dir / tag}: not a checkpoint written by `dst train`")
        state.update({k: client["dst"][k] for k in state})
        if is_rank0:
            log.info("resuming %s from %s (epoch %d)", cfg.name, ckpt_dir / tag, state["epoch"])

    tracker = Tracker(cfg, enabled=is_rank0)
    state["mlflow_run_id"] = tracker.start(state["mlflow_run_id"], run_tags(world_size)) or state["mlflow_run_id"]
    if is_rank0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        config_text = redact_uri(dump_config(cfg))  # logged as an artifact: no user:password@ of a URI
        storage.write_atomically(out_dir / "config.yaml", "the run's config", lambda tmp: tmp.write_text(config_text))
        tracker.log_artifact(out_dir / "config.yaml")
    status = "FAILED"
    try:
        for epoch in range(state["epoch"], cfg.trainer.epochs):
            lr = lr_at(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if hasattr(loaders.train, "set_epoch"):
                loaders.train.set_epoch(epoch)
            metrics = train_one_epoch(engine, criterion, loaders.train, epoch, cfg, is_rank0)
            metrics["lr"] = lr
            average_norm_stats(engine.module, world_size)
            last = epoch + 1 == cfg.trainer.epochs
            if (epoch + 1) % cfg.trainer.eval_every == 0 or last:
                metrics.update(evaluate(engine.module, loaders.val, cfg, engine.device, is_rank0))
            state["global_step"] = engine.global_steps
            state["epoch"] = epoch + 1
            state["history"].append({"epoch": epoch + 1, **metrics})
            improved = "val/fsnn_top1" in metrics and (state["best_metric"] is None
                                                       or metrics["val/fsnn_top1"] > state["best_metric"])
            if improved:
                state["best_metric"], state["best_epoch"] = metrics["val/fsnn_top1"], epoch + 1
            save_checkpoint(engine, ckpt_dir, cfg, state, improved, is_rank0)
            tracker.log_metrics(metrics, step=epoch + 1)
            if is_rank0:
                log.info("epoch %d: %s", epoch + 1, _fmt(metrics))
                if epoch + 1 < cfg.trainer.epochs:
                    warn_if_the_next_checkpoint_may_not_fit(ckpt_dir, ckpt.tag_for_epoch(epoch + 1), epoch + 2)
        status = "FINISHED"
    finally:
        tracker.end(status)
    if is_rank0:
        save_val_batch(loaders.val, out_dir / VAL_BATCH_FILE)
    final = dict(state["history"][-1]) if state["history"] else {}
    final.update(best_fsnn_top1=state["best_metric"], best_epoch=state["best_epoch"],
                 mlflow_run_id=state["mlflow_run_id"], world_size=world_size)
    if is_rank0:
        write_json(out_dir / "metrics.json", {"final": final, "history": state["history"]})
    return final


def save_checkpoint(engine, ckpt_dir: Path, cfg: ExperimentConfig, state: dict, improved: bool,
                    is_rank0: bool) -> None:
    """Collective: every rank writes its shard; rank 0 then moves the pointers (temp name + rename)."""
    import torch.distributed as dist
    tag = ckpt.tag_for_epoch(state["epoch"])
    client = {"dst": {**state, "model_name": engine.module.model_name, "model_kwargs": engine.module.model_kwargs,
                      "config": cfg.model_dump(mode="json"), "zero_stage": cfg.trainer.zero_stage}}
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client, save_latest=False)
    except (OSError, RuntimeError) as err:
        # No pointer names the partial tag; removing it gives the space back for the resume.
        previous = ckpt.read_pointer(ckpt_dir, "latest")
        kept = (f"The last complete checkpoint, {ckpt_dir / previous} "
                f"({storage.human_bytes(storage.tree_bytes(ckpt_dir / previous))}), is intact: free about that much "
                f"space and run the same command to resume from it" if previous
                else "No earlier checkpoint of this run exists")
        raise storage.write_failure(err, ckpt_dir / tag, "checkpoint",
                                    remove_partial=lambda: shutil.rmtree(ckpt_dir / tag, ignore_errors=True),
                                    kept=kept) from err
    dist.barrier()
    if is_rank0:
        ckpt.write_pointer(ckpt_dir, "latest", tag)
        if improved:
            ckpt.write_pointer(ckpt_dir, "best", tag)
        ckpt.prune(ckpt_dir, cfg.trainer.checkpoint_every)
    dist.barrier()


def warn_if_the_next_checkpoint_may_not_fit(ckpt_dir: Path, tag: str, next_epoch: int) -> None:
    """Said an epoch ahead: the next checkpoint is about as big as this one, and a disk or quota that fills during
    the save costs the epoch (the save fails, and the run resumes from this one)."""
    size, free = storage.tree_bytes(ckpt_dir / tag), storage.free_bytes(ckpt_dir)
    if free is not None and free < size:
        log.warning("%s free on the filesystem of %s, but the next checkpoint needs about %s (as %s did): free some "
                    "space before epoch %d ends", storage.human_bytes(free), ckpt_dir, storage.human_bytes(size), tag,
                    next_epoch)


VAL_BATCH_FILE = "val_batch.pt"


def save_val_batch(loader, path: Path, samples: int = 16) -> None:
    """A few validation inputs next to the checkpoints: export measures firing rates on real data with them."""
    for x, y in loader:
        batch = {"inputs": x[:samples].float().cpu(), "targets": y[:samples].cpu()}
        storage.write_atomically(path, "the validation batch", lambda tmp: torch.save(batch, tmp))
        return


def _check_same_model(client: dict, model, where: Path) -> None:
    if client.get("model_name") != model.model_name or client.get("model_kwargs") != model.model_kwargs:
        raise UsageError(f"{where}: checkpoint is of model {client.get('model_name')} {client.get('model_kwargs')}, "
                         f"but the config builds {model.model_name} {model.model_kwargs}; use another output_dir")


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str)
    storage.write_atomically(path, "the run's metrics", lambda tmp: tmp.write_text(text))


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
