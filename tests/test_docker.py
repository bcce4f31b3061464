"""The container images against a real Docker engine: build, train in the /opt/ml layout, serve, compose.

Needs a Docker engine; ``tests/docker_engine.py`` finds or starts one. In CI (``CI=true``) a missing
engine fails the run; elsewhere these tests are skipped with the reason. The images are built
through the compose file (with the host-network override), the training image with CPU torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from docker_engine import REPO_ROOT, Docker, EngineUnavailable, connect, free_port, torch_source_for_builds

pytestmark = [pytest.mark.docker, pytest.mark.slow]

COMPOSE_FILES = ("-f", str(REPO_ROOT / "docker-compose.yml"), "-f", str(REPO_ROOT / "docker" / "compose.hostnet.yml"))
SERVE_IMAGE = "binsight-serve:test"
TRAIN_IMAGE = "binsight-train:test"
#: SageMaker passes every hyperparameter as a string.
TINY_HYPERPARAMETERS = {
    "architecture": "efficientnet_lite0",
    "pretrained": "false",
    "input_size": "64",
    "epochs": "1",
    "batch_size": "8",
    "max_count": "2",
    "num_workers": "0",
    "seed": "0",
}
SAGEMAKER_LABEL = "com.amazonaws.sagemaker.capabilities.accept-bind-to-port"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="module")
def docker() -> Docker:
    try:
        return connect()
    except EngineUnavailable as exc:
        if _in_ci():
            pytest.fail(f"CI needs a Docker engine for the container tests: {exc}")
        pytest.skip(f"container tests skipped, no Docker engine: {exc}")


@pytest.fixture(scope="module")
def workdir() -> Path:
    """A temporary folder every container user can read (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="binsight-docker-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def compose_env(**extra: str) -> dict[str, str]:
    return {"BINSIGHT_SERVE_IMAGE": SERVE_IMAGE, "BINSIGHT_TRAIN_IMAGE": TRAIN_IMAGE, **extra}


@pytest.fixture(scope="module")
def images(docker: Docker) -> str:
    """Builds both images through the compose file; returns the torch source used."""
    source = torch_source_for_builds()
    started = time.monotonic()
    docker.run(
        "compose",
        *COMPOSE_FILES,
        "--profile",
        "train",
        "build",
        "serve",
        "train",
        timeout=1800,
        extra_env=compose_env(BINSIGHT_TORCH_SOURCE=source, BINSIGHT_TRAIN_TORCH_SOURCE=source),
    )
    print(f"docker_build_s: {time.monotonic() - started:.1f} torch_source: {source}")
    # Each rebuild leaves the previous images untagged; drop binsight's (their layers stay cached).
    for title in ("binsight-serve", "binsight-train"):
        docker.run("image", "prune", "-f", "--filter", f"label=org.opencontainers.image.title={title}", check=False)
    for image in (SERVE_IMAGE, TRAIN_IMAGE):
        size = int(docker.run("image", "inspect", "--format", "{{.Size}}", image).stdout)
        print(f"image: {image} size_mb: {size / 1e6:.0f}")
    return source


def _inspect(docker: Docker, image: str) -> dict:
    return json.loads(docker.run("image", "inspect", image).stdout)[0]["Config"]


def _http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait_for_ping(url: str, docker: Docker, container: str, limit_s: float = 180) -> tuple[int, dict]:
    deadline = time.monotonic() + limit_s
    status, body = 0, {}
    while time.monotonic() < deadline:
        try:
            status, body = _http(url + "/ping", timeout=5)
            if status == 200:
                return status, body
            if isinstance(body, dict) and body.get("status") == "failed":  # a failed load is final
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        running = docker.run("inspect", "--format", "{{.State.Running}}", container, check=False).stdout.strip()
        if running != b"true":
            break
        time.sleep(1)
    logs = docker.run("logs", container, check=False)
    raise AssertionError(
        f"{container} never answered /ping with 200 (last: {status} {body}); logs:\n"
        f"{(logs.stdout + logs.stderr).decode(errors='replace')[-4000:]}"
    )


def _predict_jpeg(url: str, jpeg: bytes) -> dict:
    status, body = _http(url + "/invocations", data=jpeg, headers={"Content-Type": "image/jpeg"})
    assert status == 200, body
    return body["predictions"][0]


@pytest.fixture(scope="module")
def opt_ml(workdir: Path) -> Path:
    """A SageMaker /opt/ml tree: string hyperparameters and a tiny synthetic ABID train channel."""
    from training.synthetic import make_synthetic_abid

    root = workdir / "opt_ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(TINY_HYPERPARAMETERS))
    make_synthetic_abid(root / "input" / "data" / "train", n_bins=36, max_count=2, size=64, seed=3)
    for sub in ("model", "checkpoints", "output"):
        (root / sub).mkdir()
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.fixture(scope="module")
def jpeg(opt_ml: Path) -> bytes:
    """A real JPEG: one of the synthetic bin photos."""
    return next((opt_ml / "input" / "data" / "train" / "bin-images").glob("*.jpg")).read_bytes()


@pytest.fixture(scope="module")
def trained(docker: Docker, images: str, opt_ml: Path) -> Path:
    """``docker run TRAIN_IMAGE train`` on the /opt/ml tree, without any network; returns the model dir."""
    started = time.monotonic()
    proc = docker.run(
        "run", "--rm", "--network", "none", "-v", f"{opt_ml}:/opt/ml", TRAIN_IMAGE, "train", timeout=600, check=False
    )
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    failure = opt_ml / "output" / "failure"
    assert proc.returncode == 0, (
        f"train exited {proc.returncode}; failure: {failure.read_text() if failure.exists() else '-'}\n{output[-4000:]}"
    )
    print(f"docker_train_s: {time.monotonic() - started:.1f}")
    return opt_ml / "model"


def test_serve_image_is_sagemaker_ready_and_runs_as_non_root(docker: Docker, images: str) -> None:
    config = _inspect(docker, SERVE_IMAGE)
    assert config["Labels"][SAGEMAKER_LABEL] == "true"
    assert config["User"] and config["User"] not in ("root", "0")
    assert config["Entrypoint"] == ["/usr/local/bin/binsight-entrypoint"]  # exec form: the server is PID 1
    assert config["Cmd"] == ["serve"]
    assert "healthcheck.py" in " ".join(config["Healthcheck"]["Test"])
    # No training code, tests or torchvision in the serving image; `train` explains itself.
    probe = (
        "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('training', 'torchvision', 'tests')))"
    )
    absent = docker.run("run", "--rm", "--network", "none", SERVE_IMAGE, "python", "-c", probe, check=False)
    assert absent.returncode == 0, "the serving image must carry no training code, tests or torchvision"
    wrong = docker.run("run", "--rm", "--network", "none", SERVE_IMAGE, "train", check=False)
    assert wrong.returncode == 2 and b"no 'train' command" in wrong.stderr


def test_train_image_leaves_opt_ml_to_the_platform(docker: Docker, images: str) -> None:
    config = _inspect(docker, TRAIN_IMAGE)
    assert config["Cmd"] == ["train"]
    proc = docker.run("run", "--rm", "--network", "none", TRAIN_IMAGE, "sh", "-c", "test ! -e /opt/ml", check=False)
    assert proc.returncode == 0, "the train image must not create /opt/ml (SageMaker mounts it)"


def test_train_writes_an_artifact_in_the_sagemaker_layout(trained: Path, opt_ml: Path) -> None:
    metadata = json.loads((trained / "model.json").read_text())
    assert metadata["architecture"] == "efficientnet_lite0"
    assert metadata["input_size"] == 64
    assert metadata["labels"] == ["0", "1", "2"]
    assert (trained / "model.pth").stat().st_size > 1_000_000
    assert not (opt_ml / "output" / "failure").exists()


def test_train_failure_reason_lands_in_output_failure(docker: Docker, images: str, workdir: Path) -> None:
    root = workdir / "opt_ml_bad"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"epochz": "1"}))
    proc = docker.run(
        "run", "--rm", "--network", "none", "-v", f"{root}:/opt/ml", TRAIN_IMAGE, "train", timeout=300, check=False
    )
    assert proc.returncode != 0
    assert "epochz" in (root / "output" / "failure").read_text()


def test_serve_image_serves_the_trained_model_and_stops_on_sigterm(docker: Docker, trained: Path, jpeg: bytes) -> None:
    port = free_port()
    name = f"binsight-test-serve-{os.getpid()}"
    docker.run(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "-e",
        f"SAGEMAKER_BIND_TO_PORT={port}",
        "-v",
        f"{trained}:/opt/ml/model:ro",
        SERVE_IMAGE,
        "serve",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        _wait_for_ping(url, docker, name)
        print(f"docker_serve_ready_s: {time.monotonic() - started:.1f}")
        status, info = _http(url + "/model")
        assert status == 200 and info["model_dir"] == "/opt/ml/model"
        assert info["metadata"]["input_size"] == 64
        prediction = _predict_jpeg(url, jpeg)
        assert prediction["count"] in (0, 1, 2)
        # `docker stop` sends SIGTERM; an exec-form start lets the server get it and exit cleanly,
        # long before docker's 10 s kill.
        stopped = time.monotonic()
        docker.run("stop", name, timeout=60)
        assert time.monotonic() - stopped < 9
        assert docker.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == b"0"
    finally:
        docker.run("rm", "-f", name, check=False)


def test_serve_image_without_a_mounted_model_uses_the_built_in_one(docker: Docker, images: str, jpeg: bytes) -> None:
    """Nothing in /opt/ml/model: the package's default model serves; without one, /ping says why (503)."""
    port = free_port()
    name = f"binsight-test-default-{os.getpid()}"
    docker.run(
        "run", "-d", "--name", name, "--network", "host", "-e", f"SAGEMAKER_BIND_TO_PORT={port}", SERVE_IMAGE, "serve"
    )
    try:
        url = f"http://127.0.0.1:{port}"
        if (REPO_ROOT / "service" / "default_model" / "model.json").is_file():
            _wait_for_ping(url, docker, name)
            status, info = _http(url + "/model")
            assert status == 200 and info["model_dir"].endswith("site-packages/service/default_model")
            assert isinstance(_predict_jpeg(url, jpeg)["count"], int)
        else:
            with pytest.raises(AssertionError, match="no model found"):
                _wait_for_ping(url, docker, name, limit_s=60)
    finally:
        docker.run("rm", "-f", name, check=False)


def test_compose_trains_then_serves_the_new_model(
    docker: Docker, images: str, opt_ml: Path, workdir: Path, jpeg: bytes
) -> None:
    """`docker compose run train` (data, config, model, checkpoint folders; a BINSIGHT_ variable wins
    over hyperparameters.json), then `docker compose up -d --wait` serves that model; `down -v`."""
    root = workdir / "compose"
    folders = {name: root / name for name in ("model", "checkpoints", "config")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    root.chmod(0o755)
    (folders["config"] / "hyperparameters.json").write_text(json.dumps({**TINY_HYPERPARAMETERS, "epochs": "3"}))
    port = free_port()
    project = ("-p", f"binsight-test-{os.getpid()}")
    env = compose_env(
        BINSIGHT_PORT=str(port),
        DATA_HOST_DIR=str(opt_ml / "input" / "data" / "train"),
        MODEL_HOST_DIR=str(folders["model"]),
        CHECKPOINT_HOST_DIR=str(folders["checkpoints"]),
        CONFIG_HOST_DIR=str(folders["config"]),
        BINSIGHT_EPOCHS="1",
    )
    try:
        started = time.monotonic()
        docker.run(
            "compose",
            *COMPOSE_FILES,
            *project,
            "--profile",
            "train",
            "run",
            "--rm",
            "train",
            timeout=600,
            extra_env=env,
        )
        print(f"docker_compose_train_s: {time.monotonic() - started:.1f}")
        trained = json.loads((folders["model"] / "model.json").read_text())
        assert trained["input_size"] == 64  # from ./config/hyperparameters.json
        assert trained["training"]["epochs_completed"] == 1  # BINSIGHT_EPOCHS beat the file's 3
        assert any(folders["checkpoints"].iterdir())

        started = time.monotonic()
        docker.run(
            "compose",
            *COMPOSE_FILES,
            *project,
            "up",
            "-d",
            "--wait",
            "--wait-timeout",
            "180",
            "serve",
            timeout=300,
            extra_env=env,
        )
        print(f"docker_compose_up_s: {time.monotonic() - started:.1f}")
        url = f"http://127.0.0.1:{port}"
        status, info = _http(url + "/model")
        assert status == 200 and info["metadata"]["created_at"] == trained["created_at"]
        assert _predict_jpeg(url, jpeg)["label"] in ("0", "1", "2")
    finally:
        docker.run(
            "compose",
            *COMPOSE_FILES,
            *project,
            "--profile",
            "train",
            "down",
            "-v",
            timeout=120,
            extra_env=env,
            check=False,
        )
