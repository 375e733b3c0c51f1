"""torch.distributed / DeepSpeed set-up from whatever launched this process.

One process may have been started by
- submitit (a SLURM job step, or its local executor, or its in-process debug executor): ranks come from submitit's
  job environment, exported with `TorchDistributedEnvironment().export(set_cuda_visible_devices=False)` (submitit's
  default also rewrites CUDA_VISIBLE_DEVICES per rank, which confuses DeepSpeed's own set_device);
- torchrun / the deepspeed launcher: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are already set;
- a plain `srun` step with several tasks (no submitit): ranks from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, the
  master is the first node of the allocation;
- nothing: a single process (rank 0 of 1 on a free loopback port).

`setup_environment()` only exports the env:// variables; `init_process_group()` also creates the default process
group (what the engine's `deepspeed.init_distributed` would do). Backend: nccl with CUDA, gloo without.
"""
from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, Literal

Source = Literal["auto", "submitit", "torchrun", "slurm", "single"]

ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class DistributedEnvironment:
    """Where this process sits in the job (what was exported to os.environ)."""

    source: str  # submitit | torchrun | slurm | single
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def default_backend() -> str:
    """nccl when this process can see a CUDA device, gloo otherwise (CPU ranks, DeepSpeed's CPU accelerator)."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def detect_source() -> str:
    """Which launcher started this process (see the module docstring), without changing anything."""
    if os.environ.get("SUBMITIT_EXECUTOR") or "SUBMITIT_DEBUG_JOB_ID" in os.environ:
        return "submitit"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return "torchrun"
    if "SLURM_STEP_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    return "single"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_first_host() -> str:
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodelist:
        return socket.gethostname()
    try:  # the authoritative expansion of node[001-004] style lists
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    from submitit.slurm.slurm import _parse_node_list

    return _parse_node_list(nodelist)[0]


def setup_environment(source: Source = "auto") -> DistributedEnvironment:
    """Export MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE for env:// initialisation
    (and what DeepSpeed's init_distributed reads), and cap CPU threads per rank. Idempotent."""
    src = detect_source() if source == "auto" else source
    env = os.environ
    if src == "submitit":
        import submitit

        # overwrite=True: the submitting shell's own MASTER_* (e.g. from an outer torchrun) must not leak in.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    elif src == "torchrun":
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise RuntimeError(f"RANK/WORLD_SIZE are set but {', '.join(missing)} not: incomplete torchrun-style env")
        env.setdefault("LOCAL_RANK", env["RANK"])
        env.setdefault("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1"))
    elif src == "slurm":
        ntasks, nnodes = int(env["SLURM_NTASKS"]), int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
        job_id = env.get("SLURM_JOB_ID", "0")
        env.update({
            "MASTER_ADDR": env.get("MASTER_ADDR") or _slurm_first_host(),
            "MASTER_PORT": env.get("MASTER_PORT") or str(random.Random(job_id).randint(20000, 60000)),
            "RANK": env["SLURM_PROCID"],
            "WORLD_SIZE": str(ntasks),
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": str(max(1, ntasks // max(1, nnodes))),
        })
    elif src == "single":
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
        env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    else:
        raise ValueError(f"unknown distributed source {source!r}")
    _cap_threads(int(env["LOCAL_WORLD_SIZE"]))
    return current_environment(src)


def current_environment(source: str = "env") -> DistributedEnvironment:
    env = os.environ
    return DistributedEnvironment(
        source=source,
        rank=int(env.get("RANK", 0)),
        world_size=int(env.get("WORLD_SIZE", 1)),
        local_rank=int(env.get("LOCAL_RANK", 0)),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(env.get("MASTER_PORT", 0) or 0),
    )


def _cap_threads(local_world_size: int) -> None:
    """N ranks on one node each defaulting to all cores oversubscribe the CPU badly: give each its share (SLURM's
    cpus-per-task when known). An explicit OMP_NUM_THREADS wins."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    per_task = os.environ.get("SLURM_CPUS_PER_TASK")
    n = int(per_task) if per_task else max(1, (os.cpu_count() or 1) // max(1, local_world_size))
    os.environ["OMP_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)


def init_process_group(backend: str | None = None, source: Source = "auto",
                       timeout_s: float = 600) -> DistributedEnvironment:
    """setup_environment() + the default process group (env://). With CUDA, binds this rank to its local GPU."""
    import torch
    import torch.distributed as dist

    denv = setup_environment(source)
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(denv.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=denv.rank, world_size=denv.world_size,
                                timeout=timedelta(seconds=timeout_s))
    return denv


def init_deepspeed(backend: str | None = None, source: Source = "auto") -> DistributedEnvironment:
    """setup_environment() + deepspeed.init_distributed (what the engine does; here for scripts and tests)."""
    import deepspeed

    denv = setup_environment(source)
    backend = backend or default_backend()
    if backend == "gloo":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return denv


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    if is_initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    if is_initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_rank0() -> bool:
    """True on global rank 0 (or when not distributed at all): where logging, MLflow and file writes happen."""
    return get_rank() == 0


def barrier() -> None:
    """All ranks wait here; a no-op without a process group or with one rank."""
    if is_initialized() and get_world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def cleanup() -> None:
    """Destroy the default process group if there is one (safe to call twice)."""
    if is_initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(backend: str | None = None, source: Source = "auto") -> Iterator[DistributedEnvironment]:
    """`with distributed() as denv:` init the process group, always clean it up."""
    denv = init_process_group(backend, source)
    try:
        yield denv
    finally:
        cleanup()
