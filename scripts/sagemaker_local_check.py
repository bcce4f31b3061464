"""Both SageMaker contracts with the official SageMaker Python SDK as the client, in its local mode: the SDK
writes its own ``/opt/ml`` tree, config files and compose file and starts the images as SageMaker does.

    pip install -e '.[sdkcheck]'                 # the SDK (2.x) and what local mode needs
    eval "$(bash ../shared/docker/engine.sh)"    # or any running Docker engine
    docker compose -f docker-compose.yml -f docker/compose.hostnet.yml --profile train build serve train
    python scripts/sagemaker_local_check.py [--host-network] [--data ../shared/abid --limit 200]

Checks, each printed as ``check: NAME ok`` (the script exits 1 at the first failure, naming it):

1. ``train``: an ``Estimator`` on the training image, hyperparameters as the SDK writes them (strings);
   ``model.tar.gz`` holds ``model.json`` and ``model.pth`` at its root;
2. ``tuning_job_hyperparameters``: a training run with what a tuning job adds (``_tuning_objective_metric``)
   and the keys the SDK's ``HyperparameterTuner`` and framework estimators add (``sagemaker_*``): it runs to
   the end and logs the objective as printed (local mode has no tuner, so the keys are set by hand);
3. ``bad_hyperparameter``: a misspelt key fails the job with exit status 2 and the reason (with its hint) in
   the log (local mode keeps no ``/opt/ml/output/failure``; on SageMaker that file is the FailureReason);
4. ``deploy_predict``: a ``Model`` with the serving image answers ``predict()`` on a JPEG with the SDK's
   serializers: ``image/jpeg``, the ``IdentitySerializer`` default ``application/octet-stream``, WebP;
5. ``batch_transform``: a ``Transformer`` over a folder of JPEGs (local mode asks ``/execution-parameters``
   first; its ``BatchStrategy`` is given, see the comment there), one output per input.

Data: synthetic ABID bins (``training.synthetic``) unless ``--data`` names an ABID folder.

**Hosts without bridge networking** (Docker engines started with ``--bridge=none``, such as the one
``../shared/docker/engine.sh`` starts): the SDK hard-codes a bridge network (``sagemaker-local``) and a port
mapping (``8080:8080``) in the compose file it writes, which such an engine cannot run. ``--host-network``
(on by default when the engine reports no bridge network) rewrites that file after the SDK writes it: every
service gets ``network_mode: host`` and loses ``networks`` and ``ports``; the SDK's address for the
container is set to ``localhost``. Nothing else of the SDK is changed; see :func:`use_host_network`. (One more
thing the SDK trips on: it takes ``docker compose`` only when ``docker compose version`` prints ``v2``, which
Debian's plugin does not: :func:`accept_debian_compose`.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

#: Small and quick on a CPU; all strings, as SageMaker passes them.
HYPERPARAMETERS = {
    "architecture": "efficientnet_lite0",
    "pretrained": "False",
    "input_size": "64",
    "max_count": "3",
    "overflow": "True",
    "epochs": "2",
    "batch_size": "8",
    "lr": "0.003",
    "num_workers": "0",
    "log_every_steps": "2",
}
#: What a tuning job adds, and what the SDK's tuner / framework estimators add (JSON-encoded, as they write them).
TUNING_JOB_KEYS = {
    "_tuning_objective_metric": "val_acc",
    "sagemaker_estimator_class_name": '"Estimator"',
    "sagemaker_estimator_module": '"sagemaker.estimator"',
    "sagemaker_container_log_level": "20",
    "sagemaker_job_name": '"binsight-sdk-tune"',
    "sagemaker_region": '"us-east-1"',
    "sagemaker_program": '"train"',
    "sagemaker_submit_directory": '"file:///dev/null"',
}
ROLE = "arn:aws:iam::111111111111:role/binsight-local"


class CheckFailed(RuntimeError):
    pass


# ------------------------------------------------------------------------------- the host-network adaptation


def use_host_network() -> None:
    """Make the SDK's local mode run on an engine without bridge networking (see the module docstring).

    Wraps ``_SageMakerContainer._generate_compose_file``: the SDK writes its compose file, then the
    services are put on the host's network (``network_mode: host``, no ``networks``, no ``ports``: a host
    network publishes the container's 8080 as the host's 8080 already), the file is written again, and the
    SDK's ``get_docker_host`` answers ``localhost``.
    """
    import yaml
    from sagemaker.local import entities, image, local_session, utils

    original = image._SageMakerContainer._generate_compose_file

    def generate(self, *args: Any, **kwargs: Any) -> dict:
        content = original(self, *args, **kwargs)
        content.pop("networks", None)
        for service in content["services"].values():
            service.pop("networks", None)
            service.pop("ports", None)
            service["network_mode"] = "host"
        path = Path(self.container_root) / image.DOCKER_COMPOSE_FILENAME
        path.write_text(yaml.dump(content, default_flow_style=False))
        return content

    image._SageMakerContainer._generate_compose_file = generate
    for module in (utils, entities, local_session, image):
        if hasattr(module, "get_docker_host"):
            module.get_docker_host = lambda: "localhost"


def accept_debian_compose() -> None:
    """The SDK takes ``docker compose`` only when its version string contains ``v2``; Debian's plugin prints
    ``Docker Compose version 2.26.1-4``. When that command works, the SDK is told to use it."""
    from sagemaker.local import image

    proc = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if proc.returncode == 0 and "v2" not in proc.stdout:
        image._SageMakerContainer._get_compose_cmd_prefix = staticmethod(lambda: ["docker", "compose"])


def stop_containers(image_name: str) -> None:
    """Remove the containers of ``image_name`` still running (those this script's local mode started)."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"ancestor={image_name}"], capture_output=True, text=True
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


def engine_has_bridge() -> bool:
    proc = subprocess.run(["docker", "network", "ls", "--format", "{{.Driver}}"], capture_output=True, text=True)
    return proc.returncode == 0 and "bridge" in proc.stdout.split()


# ------------------------------------------------------------------------------- helpers


class Tee(io.TextIOBase):
    """Echo what the SDK prints (the containers' logs) and keep it for the checks."""

    def __init__(self, stream) -> None:
        self.stream, self.parts = stream, []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def text(self) -> str:
        return "".join(self.parts)


def check(name: str, condition: bool, detail: str = "") -> None:
    if not condition:
        raise CheckFailed(f"{name}: {detail}")


def run_check(name: str, fn: Callable[[], str]) -> None:
    started = time.monotonic()
    summary = fn()
    print(f"check: {name} ok seconds: {time.monotonic() - started:.0f} {summary}", flush=True)


def make_data(root: Path, data: Path | None, limit: int) -> dict[str, Path]:
    from training.synthetic import make_synthetic_abid

    if data is not None:
        return {"train": data}
    make_synthetic_abid(root / "train", 60, max_count=3, size=64, seed=1, overflow_extra=1)
    make_synthetic_abid(root / "validation", 16, max_count=3, size=64, seed=2, first_id=50_001)
    return {"train": root / "train", "validation": root / "validation"}


def photos(channel: Path, n: int) -> list[Path]:
    return sorted((channel / "bin-images").glob("*.jpg"))[:n]


# ------------------------------------------------------------------------------- the checks


class LocalModeCheck:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from sagemaker.local import LocalSession

        self.args, self.work = args, work
        self.session = LocalSession()
        self.session.config = {"local": {"local_code": True}}
        self.channels = make_data(work / "data", args.data, args.limit)
        self.hyperparameters = dict(HYPERPARAMETERS, **({"limit": str(args.limit)} if args.data else {}))
        self.model_data: str | None = None

    def estimator(self, hyperparameters: dict[str, str], name: str):
        from sagemaker.estimator import Estimator

        return Estimator(
            image_uri=self.args.train_image,
            role=ROLE,
            instance_count=1,
            instance_type="local",
            hyperparameters=hyperparameters,
            output_path=f"file://{self.work / 'output' / name}",
            sagemaker_session=self.session,
            base_job_name=f"binsight-{name}",
        )

    def fit(self, hyperparameters: dict[str, str], name: str):
        estimator = self.estimator(hyperparameters, name)
        tee = Tee(sys.stdout)
        with contextlib.redirect_stdout(tee):
            estimator.fit({k: f"file://{v}" for k, v in self.channels.items()})
        return estimator, tee.text()

    def train(self) -> str:
        estimator, _ = self.fit(self.hyperparameters, "train")
        self.model_data = estimator.model_data
        path = Path(self.model_data.removeprefix("file://"))
        with tarfile.open(path) as archive:
            names = set(archive.getnames())
        check("train", {"model.json", "model.pth"} <= names, f"model.tar.gz holds {sorted(names)}")
        return f"model_data: {self.model_data}"

    def tuning_job_hyperparameters(self) -> str:
        _, log = self.fit({**self.hyperparameters, **TUNING_JOB_KEYS}, "tune")
        check(
            "tuning_job_hyperparameters",
            "tuning_objective: val_acc printed: yes" in log,
            "the objective line is missing from the log",
        )
        check(
            "tuning_job_hyperparameters",
            "hyperparameters_ignored: _tuning_objective_metric" in log,
            "the ignored keys are not logged",
        )
        return "objective: val_acc printed"

    def bad_hyperparameter(self) -> str:
        # Local mode reports the exit status only (it keeps no /opt/ml/output/failure): the reason is checked
        # in the container's log, where train prints what it writes to the failure file.
        tee = Tee(sys.stdout)
        try:
            with contextlib.redirect_stdout(tee):
                self.estimator({**self.hyperparameters, "epocs": "2"}, "bad").fit(
                    {k: f"file://{v}" for k, v in self.channels.items()}
                )
        except Exception as exc:  # noqa: BLE001 - the SDK raises its own error types
            message = str(exc)
        else:
            raise CheckFailed("bad_hyperparameter: the job with 'epocs' did not fail")
        check("bad_hyperparameter", "exited with code: 2" in message, message[:500])
        check(
            "bad_hyperparameter",
            "unknown hyperparameter 'epocs'" in tee.text() and "did you mean 'epochs'" in tee.text(),
            "the reason is not in the log",
        )
        return "exit: 2 reason: unknown hyperparameter 'epocs' ... did you mean 'epochs'?"

    def deploy_predict(self) -> str:
        from PIL import Image
        from sagemaker.deserializers import JSONDeserializer
        from sagemaker.model import Model
        from sagemaker.predictor import Predictor
        from sagemaker.serializers import IdentitySerializer

        model = Model(
            image_uri=self.args.serve_image,
            model_data=self.model_data,
            role=ROLE,
            sagemaker_session=self.session,
            predictor_cls=Predictor,
        )
        predictor = model.deploy(initial_instance_count=1, instance_type="local")
        try:
            jpeg = photos(self.channels["train"], 1)[0].read_bytes()
            webp = io.BytesIO()
            Image.open(io.BytesIO(jpeg)).save(webp, "WEBP")
            answers = {}
            for label, serializer, body in (
                ("image/jpeg", IdentitySerializer("image/jpeg"), jpeg),
                ("octet-stream", IdentitySerializer(), jpeg),
                ("image/webp", IdentitySerializer("image/webp"), webp.getvalue()),
            ):
                predictor.serializer, predictor.deserializer = serializer, JSONDeserializer()
                result = predictor.predict(body)
                check(
                    "deploy_predict",
                    isinstance(result, dict) and "count" in result["predictions"][0],
                    f"{label}: {result!r:.300}",
                )
                answers[label] = result["predictions"][0]["count"]
        finally:
            predictor.delete_endpoint()
        return "counts: " + " ".join(f"{k}={v}" for k, v in answers.items())

    def batch_transform(self) -> str:
        from sagemaker.model import Model

        inputs = self.work / "transform-in"
        inputs.mkdir()
        for path in photos(self.channels["train"], 4):
            (inputs / path.name).write_bytes(path.read_bytes())
        outputs = self.work / "transform-out"
        model = Model(
            image_uri=self.args.serve_image, model_data=self.model_data, role=ROLE, sagemaker_session=self.session
        )
        # strategy given: local mode (2.257) checks a BatchStrategy read from /execution-parameters against the
        # API's spelling ("SingleRecord"), while SageMaker documents the container's answer as "SINGLE_RECORD" /
        # "MULTI_RECORD", which binsight sends; local mode still asks /execution-parameters (MaxPayloadInMB).
        transformer = model.transformer(
            instance_count=1,
            instance_type="local",
            output_path=f"file://{outputs}",
            accept="application/json",
            strategy="SingleRecord",
        )
        try:
            # local mode runs the transform before returning; waiting would ask CloudWatch for the job's logs
            transformer.transform(f"file://{inputs}", content_type="application/x-image", split_type=None, wait=False)
        finally:  # local mode leaves the serving container running when a transform fails
            stop_containers(self.args.serve_image)
        results = sorted(outputs.glob("*.out"))
        check("batch_transform", len(results) == 4, f"outputs: {[p.name for p in results]}")
        counts = [json.loads(p.read_text())["predictions"][0]["count"] for p in results]
        return f"outputs: {len(results)} counts: {counts}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-image", default=os.environ.get("BINSIGHT_TRAIN_IMAGE", "binsight-train:latest"))
    parser.add_argument("--serve-image", default=os.environ.get("BINSIGHT_SERVE_IMAGE", "binsight-serve:latest"))
    parser.add_argument("--data", type=Path, help="an ABID folder (bin-images/ + metadata/) instead of synthetic bins")
    parser.add_argument("--limit", type=int, default=200, help="bins used from --data")
    parser.add_argument(
        "--host-network",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put the SDK's compose file on the host network (default: when the engine has no bridge network)",
    )
    parser.add_argument("--only", nargs="*", help="run only these checks (train runs whenever a later one needs it)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # local mode builds a boto session; nothing is called
    host_network = args.host_network if args.host_network is not None else not engine_has_bridge()
    if host_network:
        use_host_network()
    accept_debian_compose()
    print(
        f"sdk_check: host_network: {host_network} train_image: {args.train_image} serve_image: {args.serve_image}",
        flush=True,
    )
    names = ["train", "tuning_job_hyperparameters", "bad_hyperparameter", "deploy_predict", "batch_transform"]
    wanted = set(args.only or names)
    if wanted & {"deploy_predict", "batch_transform"}:
        wanted.add("train")
    with tempfile.TemporaryDirectory(prefix="binsight-sdk-", ignore_cleanup_errors=True) as tmp:
        checks = LocalModeCheck(args, Path(tmp))
        try:
            for name in names:
                if name in wanted:
                    run_check(name, getattr(checks, name))
        except CheckFailed as exc:
            print(f"check_failed: {exc}", flush=True)
            return 1
    print("sdk_check: all passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
