"""``package-model``: an artifact folder -> ``model.tar.gz`` as SageMaker hosting wants it.

SageMaker extracts the archive into ``/opt/ml/model``, where the serving image looks for
``model.json`` and ``model.pth``; so both sit at the archive's root (no folder), with the small
JSON files training writes beside them (split manifest, history). The folder is loaded with
:func:`service.artifact.load_artifact` first: an archive that packs is one that serves.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import BinaryIO

from binsight_aws.configs import PackageModelConfig
from binsight_aws.session import AwsClients
from binsight_aws.validate import InputError, S3Uri, parse_s3_uri
from service.files import atomic_write
from training.log import Log, print_line

REQUIRED = ("model.json", "model.pth")
ARCHIVE_NAME = "model.tar.gz"


def validate_model_dir(model_dir: Path) -> str:
    """Load the artifact (weights included); returns a one-line description. :class:`InputError` if bad."""
    from service.artifact import ArtifactError, load_artifact  # torch import: only here

    try:
        loaded = load_artifact(model_dir)
    except ArtifactError as exc:
        raise InputError(f"--model-dir: {exc}") from None
    meta = loaded.metadata
    return f"architecture: {meta.architecture} labels: {','.join(meta.labels)} input_size: {meta.input_size}"


def archive_members(model_dir: Path) -> list[Path]:
    members = [model_dir / name for name in REQUIRED]
    members += sorted(
        p
        for p in model_dir.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and p.suffix == ".json"
        and not p.name.startswith(".")
        and p.name not in REQUIRED
    )
    return members


def _tarinfo(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def build_archive(model_dir: Path, output: Path) -> list[str]:
    """Write ``output`` atomically; returns the member names."""
    members = archive_members(model_dir)

    def write(fh: BinaryIO) -> None:
        with tarfile.open(fileobj=fh, mode="w:gz") as tar:
            for path in members:
                tar.add(path, arcname=path.name, recursive=False, filter=_tarinfo)

    atomic_write(output, write, suffix=".part")
    return [p.name for p in members]


def check_archive(path: Path) -> list[str]:
    """Member names of a model archive; :class:`InputError` unless model.json and model.pth sit at the root."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            names = tar.getnames()
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in Path(member.name).parts or not member.isfile():
                    raise InputError(f"{path}: unsafe or non-file member {member.name!r}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"{path} is not a readable .tar.gz ({exc})") from None
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)} at its root (members: {', '.join(names[:10])})")
    return names


def upload_target(upload_uri: str, default_name: str = ARCHIVE_NAME) -> S3Uri:
    """An S3 key ending in .tar.gz is used as is; anything else is a prefix the archive goes under."""
    uri = parse_s3_uri(upload_uri, need_key=True)
    return uri if uri.key.endswith(".tar.gz") else uri.join(default_name)


def upload_archive(s3: object, archive: Path, target: S3Uri, log: Log = print_line) -> str:
    s3.upload_file(
        str(archive),
        target.bucket,
        target.key,  # type: ignore[attr-defined]
        ExtraArgs={"ContentType": "application/gzip"},
    )
    log(f"model_data: {target.uri} bytes: {archive.stat().st_size}")
    return target.uri


def package(model_dir: Path, output: Path, log: Log = print_line) -> Path:
    if not model_dir.is_dir():
        raise InputError(f"--model-dir {model_dir} is not a folder")
    description = validate_model_dir(model_dir)
    names = build_archive(model_dir, output)
    check_archive(output)
    log(f"model_archive: {output} bytes: {output.stat().st_size} members: {','.join(names)} {description}")
    return output


def run(config: PackageModelConfig, log: Log = print_line, clients: AwsClients | None = None) -> int:
    archive = package(config.model_dir, config.output, log)
    if config.upload_uri:
        clients = clients or AwsClients.for_command(config)
        upload_archive(clients.client("s3"), archive, upload_target(config.upload_uri), log)
    return 0
