"""Finding or starting a Docker engine for the container tests, and running the docker CLI on it.

The project's machines have a Docker client but no running engine, no registry and no bridge
networking; ``../shared/docker/engine.sh`` starts one (as root) and prints the
``DOCKER_HOST``/``DOCKER_CONFIG`` it listens on. An engine that already answers (the
environment's ``DOCKER_HOST`` or the default socket) is used as it is.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ENGINE_SCRIPT_ENV = "BINSIGHT_DOCKER_ENGINE"
DEFAULT_ENGINE_SCRIPT = REPO_ROOT.parent / "shared" / "docker" / "engine.sh"
#: The local CPU torch wheel looked for in pip's find-links folders when .wheels/ has none (BINSIGHT_TORCH_WHEEL wins).
LOCAL_WHEEL_PATTERN = "torch-*+cpu-cp311-*.whl"
WHEEL_DIR = REPO_ROOT / ".wheels"


class EngineUnavailable(RuntimeError):
    """No Docker engine answers and none could be started; the message says why."""


@dataclass
class Docker:
    """The docker CLI bound to one engine (its DOCKER_HOST/DOCKER_CONFIG live in ``env``)."""

    env: dict[str, str] = field(default_factory=dict)

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **self.env, **(extra or {})}

    def run(
        self,
        *args: str,
        timeout: float = 120,
        check: bool = True,
        extra_env: dict[str, str] | None = None,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess:
        """``docker ARGS``; with ``check`` a failure raises with the command's output in the message."""
        proc = subprocess.run(
            ["docker", *args], env=self.environ(extra_env), capture_output=True, timeout=timeout, input=input
        )
        if check and proc.returncode != 0:
            out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
            raise AssertionError(
                f"docker {shlex.join(args)} exited {proc.returncode}\n"
                f"--- stdout\n{out[-4000:]}\n--- stderr\n{err[-6000:]}"
            )
        return proc

    def answers(self) -> bool:
        try:
            return self.run("info", "--format", "{{.ServerVersion}}", timeout=20, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def _exports(stdout: str) -> dict[str, str]:
    """``export A=1 B=2`` lines printed by engine.sh -> {"A": "1", "B": "2"}."""
    env: dict[str, str] = {}
    for line in stdout.splitlines():
        words = shlex.split(line)
        if words[:1] == ["export"]:
            for word in words[1:]:
                key, _, value = word.partition("=")
                env[key] = value
    return env


def connect(engine_script: Path | None = None, timeout: float = 900) -> Docker:
    """An engine that answers: the current one, else one started by the engine script (needs root)."""
    if shutil.which("docker") is not None:
        current = Docker()
        if current.answers():
            return current
    script = Path(engine_script or os.environ.get(ENGINE_SCRIPT_ENV) or DEFAULT_ENGINE_SCRIPT)
    if not script.is_file():
        raise EngineUnavailable(
            f"no engine answers and the engine script {script} does not exist (set {ENGINE_SCRIPT_ENV} to it)"
        )
    if os.geteuid() != 0:
        raise EngineUnavailable(f"no engine answers and {script} must run as root to start one")
    started = time.monotonic()
    try:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EngineUnavailable(f"{script} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise EngineUnavailable(f"{script} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    docker = Docker(env=_exports(proc.stdout))
    if shutil.which("docker", path=docker.environ()["PATH"]) is None or not docker.answers():
        raise EngineUnavailable(f"{script} finished but no engine answers at {docker.env.get('DOCKER_HOST')}")
    print(f"docker_engine_start_s: {time.monotonic() - started:.1f}")
    return docker


def pip_find_links(python: str = sys.executable) -> list[Path]:
    """The local folders pip is configured to look in (``find-links`` from pip.conf or ``PIP_FIND_LINKS``)."""
    try:
        out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    values = [
        line.split("=", 1)[1].strip().strip("'\"")
        for line in out.splitlines()
        if line.split("=", 1)[0].endswith("find-links")
    ]
    values += os.environ.get("PIP_FIND_LINKS", "").split()
    folders = []
    for value in values:
        for entry in value.split():
            path = Path(entry.removeprefix("file://"))
            if path.is_dir() and path not in folders:
                folders.append(path)
    return folders


def torch_source_for_builds() -> str:
    """``local`` when .wheels/ holds (or can be given) one CPU torch wheel, else ``index`` (the PyTorch CPU index).

    The wheel is hard-linked (or copied) from ``BINSIGHT_TORCH_WHEEL`` or a folder of pip's ``find-links``.
    """
    present = sorted(WHEEL_DIR.glob("torch-*.whl"))
    if len(present) > 1:
        raise AssertionError(
            f".wheels/ holds {len(present)} torch wheels; TORCH_SOURCE=local needs exactly one: "
            f"{[p.name for p in present]}"
        )
    if present:
        return "local"
    candidates = (
        [Path(os.environ["BINSIGHT_TORCH_WHEEL"])]
        if os.environ.get("BINSIGHT_TORCH_WHEEL")
        else [path for folder in pip_find_links() for path in sorted(folder.glob(LOCAL_WHEEL_PATTERN))]
    )
    if not candidates:
        return "index"
    wheel = candidates[-1]
    WHEEL_DIR.mkdir(exist_ok=True)
    try:
        os.link(wheel, WHEEL_DIR / wheel.name)
    except OSError:
        shutil.copy2(wheel, WHEEL_DIR / wheel.name)
    return "local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
