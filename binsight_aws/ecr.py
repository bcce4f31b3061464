"""``push-images``: tag and push the local serving and training images to ECR.

The repositories are created when missing (scan on push, immutable tags off so ``latest`` can move).
``docker login`` gets the password on stdin (never on the command line, where ``ps`` would show it).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from binsight_aws.configs import PushImagesConfig
from binsight_aws.session import AwsClients
from binsight_aws.validate import InputError
from training.log import Log, print_line


class DockerError(RuntimeError):
    """A docker command failed; the message holds its output."""


def docker(command: Sequence[str], *, input_text: str | None = None, log: Log | None = None) -> str:
    """Run docker; with ``log``, stream its output line by line (push progress)."""
    try:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE if input_text is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    except OSError as exc:
        raise DockerError(f"cannot run {command[0]!r}: {exc}") from None
    if input_text is not None:
        assert process.stdin is not None
        process.stdin.write(input_text)
        process.stdin.close()
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        lines.append(line)
        if log is not None and line:
            log(f"docker: {line}")
    if process.wait() != 0:
        tail = "\n".join(lines[-10:])
        raise DockerError(f"'{' '.join(command[:3])} ...' failed (exit {process.returncode}): {tail}")
    return "\n".join(lines)


def ensure_repository(ecr: Any, name: str, log: Log) -> str:
    """The repository's URI, creating the repository when it does not exist."""
    try:
        repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        log(f"ecr_repository: {name} exists uri: {repo['repositoryUri']}")
    except ecr.exceptions.RepositoryNotFoundException:
        repo = ecr.create_repository(
            repositoryName=name, imageScanningConfiguration={"scanOnPush": True}, imageTagMutability="MUTABLE"
        )["repository"]
        log(f"ecr_repository: {name} created uri: {repo['repositoryUri']}")
    return repo["repositoryUri"]


def login(ecr: Any, docker_cmd: str, log: Log) -> str:
    """``docker login`` to the account's registry; returns the registry host."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    registry = data["proxyEndpoint"].removeprefix("https://").removeprefix("http://").rstrip("/")
    docker([docker_cmd, "login", "--username", user, "--password-stdin", registry], input_text=password)
    log(f"docker_login: {registry}")
    return registry


def run(config: PushImagesConfig, log: Log = print_line, clients: AwsClients | None = None) -> int:
    local = {
        "serving": (config.serving_image, config.serving_repository),
        "training": (config.training_image, config.training_repository),
    }
    wanted = list(dict.fromkeys(config.images))
    if shutil.which(config.docker) is None:
        raise InputError(f"docker command {config.docker!r} not found (install Docker or pass --docker)")
    for kind in wanted:  # before any AWS call: the images must exist here
        image = local[kind][0]
        try:
            docker([config.docker, "image", "inspect", "--format", "{{.Id}}", image])
        except DockerError:
            raise InputError(
                f"local {kind} image {image!r} not found: build it first (see README) or pass --{kind}-image"
            ) from None
    clients = clients or AwsClients.for_command(config)
    ecr = clients.client("ecr")
    uris = {kind: ensure_repository(ecr, local[kind][1], log) for kind in wanted}
    login(ecr, config.docker, log)
    for kind in wanted:
        remote = f"{uris[kind]}:{config.tag}"
        docker([config.docker, "tag", local[kind][0], remote])
        log(f"docker_push: {local[kind][0]} -> {remote}")
        docker([config.docker, "push", remote], log=log)
        log(f"image_uri: {kind} {remote}")
    return 0
