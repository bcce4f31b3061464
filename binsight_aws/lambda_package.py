"""The Lambda function's zip: :mod:`binsight_aws.lambda_fn`, the torch-free part of ``service`` it imports,
the served model's ``model.json``, and pydantic (the Lambda Python runtime brings boto3, not pydantic).

pydantic comes from ``--dependencies-dir`` (a ``pip install --target`` folder made for the Lambda platform), or
from this environment when its wheels fit the function's runtime (CPython 3.11 on Linux, manylinux2014 /
manylinux_2_17 x86_64 wheels, which Lambda's Amazon Linux 2 runs). Nothing is downloaded. The archive is
deterministic (sorted names, fixed times): the same inputs give the same CodeSha256. torch is never in it.
"""

from __future__ import annotations

import importlib.metadata
import io
import re
import sys
import sysconfig
import zipfile
from pathlib import Path

from binsight_aws.lambda_fn.settings import BUNDLED_MODEL_JSON
from binsight_aws.validate import InputError

ROOT = Path(__file__).resolve().parents[1]
#: What the handler imports from the project (checked by tests/test_aws_lambda.py against a torch-free import).
PROJECT_FILES = (
    "binsight_aws/__init__.py",
    "binsight_aws/lambda_fn/*.py",
    "service/__init__.py",
    "service/schemas.py",
    "service/manual_check.py",
    "service/model_metadata.py",
    "service/options.py",
)
DEPENDENCIES = ("pydantic",)
RUNTIME = "python3.11"
HANDLER = "binsight_aws.lambda_fn.handler.handler"
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)
_LAMBDA_WHEEL_TAG = re.compile(r"^Tag: (py3-none-any|cp311-cp311-manylinux(2014|_2_(1[7-9]|2[0-6]))_x86_64)$")


def _distributions(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """``names`` and everything they require (markers evaluated here), each once."""
    from packaging.markers import Marker
    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        dist = importlib.metadata.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or Marker(str(requirement.marker)).evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(seen.values())


def local_dependency_files() -> dict[str, Path]:
    """Archive name -> file of this environment's pydantic (and what it needs), if it fits the Lambda runtime."""
    if sys.platform != "linux" or sys.version_info[:2] != (3, 11) or sysconfig.get_platform() != "linux-x86_64":
        raise InputError(
            f"this environment (Python {sys.version_info[0]}.{sys.version_info[1]}, {sysconfig.get_platform()}) "
            f"cannot give pydantic for Lambda's {RUNTIME} x86_64; pass --dependencies-dir made with: pip install "
            "--target DIR --platform manylinux2014_x86_64 --only-binary=:all: --python-version 3.11 pydantic"
        )
    files: dict[str, Path] = {}
    for dist in _distributions(DEPENDENCIES):
        tags = [line for line in (dist.read_text("WHEEL") or "").splitlines() if line.startswith("Tag:")]
        if not any(_LAMBDA_WHEEL_TAG.match(tag) for tag in tags):
            raise InputError(
                f"{dist.metadata['Name']} {dist.version} is installed from a wheel Lambda may not run ({tags}); "
                "pass --dependencies-dir"
            )
        for entry in dist.files or []:
            name = str(entry)
            if "__pycache__" in name or name.endswith(".pyc") or name.startswith(".."):
                continue
            path = Path(entry.locate())
            if path.is_file():
                files[name] = path
    return files


def folder_files(folder: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(folder)): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def project_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for pattern in PROJECT_FILES:
        matches = sorted(ROOT.glob(pattern))
        if not matches:
            raise InputError(f"{pattern} is missing from {ROOT}: is binsight installed from its source tree?")
        files.update({str(p.relative_to(ROOT)): p for p in matches})
    return files


def build_zip(model_json: bytes | None, dependencies_dir: Path | None = None) -> bytes:
    """The function's zip, in memory (a few MB)."""
    files = {**(folder_files(dependencies_dir) if dependencies_dir else local_dependency_files()), **project_files()}
    heavy = sorted({name.split("/")[0] for name in files if name.split("/")[0] in ("torch", "torchvision", "PIL")})
    if heavy:
        raise InputError(f"the function zip must not carry {', '.join(heavy)} (the model runs in the endpoint)")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        entries = sorted(files.items())
        if model_json is not None:
            entries.append((BUNDLED_MODEL_JSON, None))
        for name, path in entries:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, model_json if path is None else path.read_bytes())
    return buffer.getvalue()
