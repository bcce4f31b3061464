"""Several processes: the torchrun launcher (in ``train``) and the process group (in each worker).

``train`` on a host with several GPUs, or on one of several SageMaker hosts (resourceconfig.json),
re-runs itself under ``torch.distributed.run`` (torchrun): one worker process per GPU (or one per
host on CPU), DistributedDataParallel over NCCL on CUDA and gloo on CPU. A worker knows it is one
because torchrun sets ``LOCAL_RANK`` and ``WORLD_SIZE``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Mapping, Sequence

import torch
import torch.distributed as dist

from training.config import ConfigError, TrainConfig
from training.device import resolve_device
from training.sagemaker_env import ResourceConfig

DEFAULT_MASTER_PORT = 29500
#: SageMaker's DNS names for the other hosts (algo-2, ...) may appear a while after a container starts.
HOST_RESOLUTION_TIMEOUT_S = 300.0
#: The variables that pick the interface gloo and NCCL talk over; resourceconfig.json names it.
SOCKET_IFNAME_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
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


def check_replicas(model: torch.nn.Module, ctx: DistContext) -> str | None:
    """After training: do all workers hold the same weights? One ``replicas:`` log line (``None`` alone).

    DistributedDataParallel keeps the parameters identical bit for bit (every worker applies the same
    all-reduced gradients); a difference means the workers did not train one model. Buffers (BatchNorm
    statistics) are compared by their largest difference. Collective: every worker calls it.
    """
    if not ctx.enabled:
        return None
    params = [p.detach().to("cpu", torch.float32).contiguous() for p in model.parameters()]
    digest = hashlib.sha256(b"".join(p.numpy().tobytes() for p in params)).hexdigest()
    floats = [b.detach().to("cpu", torch.float64).reshape(-1) for b in model.buffers() if b.is_floating_point()]
    buffers = torch.cat(floats) if floats else torch.zeros(0, dtype=torch.float64)
    gathered: list[object] = [None] * ctx.world_size
    dist.all_gather_object(gathered, (digest, buffers))
    digests = [g[0] for g in gathered]  # type: ignore[index]
    buffer_diff = max(float((g[1] - buffers).abs().max()) if buffers.numel() else 0.0 for g in gathered)  # type: ignore[index]
    equal = len(set(digests)) == 1
    return (
        f"replicas: world_size: {ctx.world_size} parameters_equal: {str(equal).lower()} "
        f"parameters_sha256: {digest[:16]} buffers_max_abs_diff: {buffer_diff:.3g}"
        + ("" if equal else " digests: " + ",".join(d[:16] for d in digests))
    )


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
    hosts: tuple[str, ...] = ()
    network_interface: str | None = None

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
        hosts=resources.hosts,
        network_interface=resources.network_interface_name,
    )


def wait_for_hosts(
    hosts: Sequence[str],
    log: Callable[[str], None],
    timeout_s: float = HOST_RESOLUTION_TIMEOUT_S,
    resolve: Callable[[str], str] = socket.gethostbyname,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Every host's address, waiting for names that do not resolve yet; :class:`ConfigError` past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    addresses: dict[str, str] = {}
    while True:
        for host in hosts:
            if host not in addresses:
                try:
                    addresses[host] = resolve(host)
                except OSError:
                    pass
        missing = [h for h in hosts if h not in addresses]
        if not missing:
            log("hosts_resolved: " + " ".join(f"{h}={a}" for h, a in addresses.items()))
            return addresses
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"hosts {', '.join(missing)} of resourceconfig.json did not resolve within {timeout_s:.0f} s "
                "(multi-host training needs every host's name in DNS or /etc/hosts)"
            )
        sleep(1.0)


def socket_interface_env(plan: LaunchPlan, environ: Mapping[str, str], log: Callable[[str], None]) -> dict[str, str]:
    """GLOO/NCCL_SOCKET_IFNAME from resourceconfig's ``network_interface_name`` on a multi-host run.

    Left to gloo, each process picks the address its own hostname resolves to, which on a host-network
    container or a multi-homed instance is not the interface the hosts share. Variables already set win;
    an interface this host does not have is logged and left out (gloo's own choice then applies).
    """
    name = plan.network_interface
    if plan.nnodes < 2 or not name:
        return {}
    present = {n for _, n in socket.if_nameindex()} if hasattr(socket, "if_nameindex") else {name}
    if name not in present:
        log(f"network_interface_missing: {name} present: {','.join(sorted(present))}")
        return {}
    chosen = {var: name for var in SOCKET_IFNAME_VARIABLES if not environ.get(var)}
    if chosen:
        log(f"network_interface: {name} (" + ", ".join(chosen) + ")")
    return chosen


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
        f"node_rank: {plan.node_rank} world_size: {plan.world_size} master: {plan.master_addr}:{plan.master_port}"
    )
    env = dict(os.environ)
    if plan.nnodes > 1:
        wait_for_hosts(plan.hosts or (plan.master_addr,), log)
        env.update(socket_interface_env(plan, env, log))
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
