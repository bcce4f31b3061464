"""Print the project's requirements from pyproject.toml, one per line, for `pip install -r`.

The images install dependencies in a layer of their own, before the code is copied, so that a
code change does not reinstall them; this keeps pyproject.toml the one list of dependencies.

    python docker/requirements.py [--extra train --extra aws] [--exclude torch --exclude torchvision]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def _name(requirement: str) -> str:
    """The canonical distribution name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, extras: list[str], exclude: list[str]) -> list[str]:
    """The base dependencies plus those of ``extras``, leaving out the names in ``exclude``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise ValueError(f"unknown extras {unknown}; pyproject.toml defines {sorted(optional)}")
    wanted = list(project.get("dependencies", []))
    for extra in extras:
        wanted += optional[extra]
    skip = {_name(name) for name in exclude}
    return [req for req in wanted if _name(req) not in skip]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--extra", action="append", default=[], help="an optional-dependencies group to add")
    parser.add_argument("--exclude", action="append", default=[], help="a distribution name to leave out")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.extra, args.exclude)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
