"""Two SageMaker hosts, for real: two containers of the training image (CPU build) train one model together.

Each container has its own ``/opt/ml`` (hyperparameters, its own ``resourceconfig.json`` naming it algo-1
or algo-2, a copy of the same synthetic train channel, as SageMaker's FullyReplicated channels give each
host) and shares the host's network; ``--add-host`` makes algo-1 and algo-2 resolve to loopback, the
way SageMaker's DNS makes them resolve to the instances. Needs a Docker engine (see test_docker.py).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from test_docker import COMPOSE_FILES, TINY_HYPERPARAMETERS, TRAIN_IMAGE, compose_env, docker, workdir  # noqa: F401

from docker_engine import Docker, free_port, torch_source_for_builds

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HOSTS = ["algo-1", "algo-2"]
REPLICAS = re.compile(r"^replicas: world_size: 2 parameters_equal: (\w+) parameters_sha256: (\w+)", re.M)


@pytest.fixture(scope="module")
def train_image(docker: Docker) -> str:  # noqa: F811
    """The training image with CPU torch, built through the compose file (cached layers make a rebuild quick)."""
    source = torch_source_for_builds()
    started = time.monotonic()
    docker.run(
        "compose",
        *COMPOSE_FILES,
        "--profile",
        "train",
        "build",
        "train",
        timeout=1800,
        extra_env=compose_env(BINSIGHT_TRAIN_TORCH_SOURCE=source),
    )
    print(f"docker_build_train_s: {time.monotonic() - started:.1f} torch_source: {source}")
    return TRAIN_IMAGE


def host_tree(root: Path, host: str) -> Path:
    """One host's /opt/ml: config files naming ``host``, the replicated train channel, empty output folders."""
    from training.synthetic import make_synthetic_abid

    config = root / "input" / "config"
    config.mkdir(parents=True)
    hyperparameters = {**TINY_HYPERPARAMETERS, "threads": "1", "device": "cpu"}
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": host, "hosts": HOSTS, "network_interface_name": "lo"})
    )
    make_synthetic_abid(root / "input" / "data" / "train", n_bins=32, max_count=2, size=64, seed=3)
    for sub in ("model", "checkpoints", "output"):
        (root / sub).mkdir()
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def wait_all(docker: Docker, names: list[str], limit_s: float = 300) -> list[int | None]:  # noqa: F811
    """Exit codes once every container ended; a failed one ends the others (a lone host would wait for its peer
    until the rendezvous timeout); ``None`` for one still running at ``limit_s`` (then stopped)."""
    deadline = time.monotonic() + limit_s
    codes: dict[str, int] = {}
    while len(codes) < len(names) and time.monotonic() < deadline:
        for name in names:
            state = docker.run("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", name).stdout.split()
            if state[0] == b"false":
                codes[name] = int(state[1])
        if any(code != 0 for code in codes.values()):
            break
        time.sleep(1)
    for name in names:
        if name not in codes:
            docker.run("kill", name, check=False)
    return [codes.get(name) for name in names]


def test_two_training_containers_train_one_model(docker: Docker, train_image: str, workdir: Path) -> None:  # noqa: F811
    roots = [host_tree(workdir / f"multihost-{host}", host) for host in HOSTS]
    names = [f"binsight-test-{host}-{os.getpid()}" for host in HOSTS]
    port = str(free_port())
    started = time.monotonic()
    try:
        for host, root, name in zip(HOSTS, roots, names):
            docker.run(
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "host",
                *[arg for h in HOSTS for arg in ("--add-host", f"{h}:127.0.0.1")],
                "-e",
                f"BINSIGHT_MASTER_PORT={port}",
                "-v",
                f"{root}:/opt/ml",
                train_image,
                "train",
            )
        codes = wait_all(docker, names)
        logs = [docker.run("logs", name, check=False) for name in names]
        outputs = [(log.stdout + log.stderr).decode(errors="replace") for log in logs]
    finally:
        for name in names:
            docker.run("rm", "-f", name, check=False)
    print(f"docker_multihost_train_s: {time.monotonic() - started:.1f}")
    for host, code, out in zip(HOSTS, codes, outputs):
        assert code == 0, f"{host} exited {code}\n{out[-4000:]}"
    first, second = outputs
    assert "hosts_resolved: algo-1=127.0.0.1 algo-2=127.0.0.1" in first
    assert "distributed_launch: nnodes: 2 nproc_per_node: 1 node_rank: 0 world_size: 2" in first
    assert "node_rank: 1 world_size: 2" in second
    for out in outputs:  # gloo binds to the interface resourceconfig.json names, not a loopback fallback
        assert "network_interface: lo (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME)" in out
        assert "Unable to resolve hostname" not in out
    match = REPLICAS.search(first)
    assert match and match.group(1) == "true", first[-3000:]  # the same weights on both hosts
    metadata = json.loads((roots[0] / "model" / "model.json").read_text())
    assert metadata["training"]["world_size"] == 2
    assert (roots[0] / "model" / "model.pth").stat().st_size > 1_000_000
    assert any((roots[0] / "checkpoints").iterdir())
    # algo-2 writes nothing SageMaker would upload (model.tar.gz, output.tar.gz, the checkpoint prefix)
    for folder in ("model", "checkpoints", "output"):
        assert not any((roots[1] / folder).iterdir()), f"algo-2 wrote to /opt/ml/{folder}"
    assert not (roots[0] / "output" / "failure").exists()
