"""Several processes: the torchrun launcher (in ``train``) and the process group (in each worker).

``train`` on a host with several GPUs, or on one of several SageMaker hosts (resourceconfig.json),
re-runs itself under ``torch.distributed.run`` (torchrun): one worker process per GPU (or one per
host on CPU), DistributedDataParallel over NCCL on CUDA and gloo on CPU. A worker knows it is one
because torchrun sets ``LOCAL_RANK`` and ``WORLD_SIZE``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Mapping, Sequence

import torch
import torch.distributed as dist

from training.config import ConfigError, TrainConfig
from training.device import resolve_device
from training.sagemaker_env import ResourceConfig

DEFAULT_MASTER_PORT = 29500
#: Collectives wait this long (rank 0 evaluates while the others wait at most this).
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def in_torchrun_worker(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return "LOCAL_RANK" in environ and "WORLD_SIZE" in environ


def init_distributed(config: TrainConfig, environ: Mapping[str, str] | None = None) -> DistContext:
    """Join the process group when started by torchrun; a plain single-process context otherwise."""
    environ = os.environ if environ is None else environ
    world = int(environ.get("WORLD_SIZE", "1")) if in_torchrun_worker(environ) else 1
    rank = int(environ.get("RANK", "0")) if world > 1 else 0
    local_rank = int(environ.get("LOCAL_RANK", "0")) if world > 1 else 0
    local_world = int(environ.get("LOCAL_WORLD_SIZE", str(world))) if world > 1 else 1
    try:
        device = resolve_device(config.device, local_rank)
    except ValueError as exc:
        raise ConfigError(f"hyperparameter 'device': {exc}") from None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, timeout=PROCESS_GROUP_TIMEOUT, device_id=device if device.type == "cuda" else None
        )
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world, device=device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, ctx: DistContext, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or max) across workers; a no-op for a single process."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


# --------------------------------------------------------------------------------------------
# The launcher
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchPlan:
    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def plan_launch(config: TrainConfig, resources: ResourceConfig, environ: Mapping[str, str] | None = None) -> LaunchPlan:
    """How many workers: ``nproc_per_node`` or one per visible GPU (one on CPU), on every host."""
    environ = os.environ if environ is None else environ
    nproc = config.nproc_per_node
    if nproc is None:
        cuda = config.device != "cpu" and torch.cuda.is_available()
        nproc = torch.cuda.device_count() if cuda else 1
    port = int(environ.get("BINSIGHT_MASTER_PORT", DEFAULT_MASTER_PORT))
    return LaunchPlan(
        nnodes=resources.num_hosts,
        nproc_per_node=max(1, nproc),
        node_rank=resources.node_rank,
        master_addr=resources.master_host,
        master_port=port,
    )


def torchrun_command(plan: LaunchPlan, argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run ... -m training <argv>`` for this host."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={plan.nproc_per_node}"]
    if plan.nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--nnodes={plan.nnodes}",
            f"--node-rank={plan.node_rank}",
            f"--master-addr={plan.master_addr}",
            f"--master-port={plan.master_port}",
        ]
    return cmd + ["-m", "training", *argv]


def launch(plan: LaunchPlan, argv: Sequence[str], log: Callable[[str], None]) -> tuple[int, bool]:
    """Run the workers under torchrun; SIGTERM/SIGINT are passed on (torchrun hands them to the workers).

    Returns ``(exit code, interrupted)``.
    """
    cmd = torchrun_command(plan, argv)
    log(
        f"distributed_launch: nnodes: {plan.nnodes} nproc_per_node: {plan.nproc_per_node} "
        f"node_rank: {plan.node_rank} world_size: {plan.world_size}"
    )
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // plan.nproc_per_node)))
    proc = subprocess.Popen(cmd, env=env)
    interrupted = False

    def forward(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code, interrupted
