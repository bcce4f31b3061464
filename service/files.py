"""One way to write a file so that a reader never sees half of it: temporary file, fsync, rename.

Used by serving (the artifact), training (checkpoints, split manifest, history, metrics) and the
AWS client (downloads, model archives); it lives in ``service`` because serving may import nothing
from the other two.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

Content = bytes | str | Callable[[BinaryIO], None]


def atomic_write(path: str | os.PathLike, content: Content, *, mode: int = 0o644, suffix: str = ".tmp") -> Path:
    """Write ``content`` (bytes, text as UTF-8, or a function writing to the open binary file) to ``path``.

    The bytes go to a hidden temporary file beside ``path`` (``.<name>.<random><suffix>``), are
    fsynced, get ``mode`` and replace ``path`` in one ``os.replace``; on any error the temporary
    file is removed and ``path`` is left as it was. ``mode`` defaults to 0644 because mkstemp's
    0600 would hide a model folder from the serving container's non-root user.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content.encode("utf-8") if isinstance(content, str) else content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, payload: Any, *, indent: int | None = 2) -> Path:
    """:func:`atomic_write` of ``payload`` as JSON with a final newline."""
    return atomic_write(path, json.dumps(payload, indent=indent) + "\n")
