"""``python -m training.report --run RUN``: render a training run's report again from what the run left.

``RUN`` is the run's output data dir (``report/run.json`` inside), a folder above it (a local run's root),
or a downloaded ``output.tar.gz`` (extracted beside it into a folder of the archive's name, or into
``--out-dir``). Writes ``report.html``, ``findings.json`` and ``summary.csv`` into that folder (or
``--out-dir``) and prints one ``report_finding:`` line per evaluated rule. ``--thresholds`` changes
thresholds as the ``report_thresholds`` hyperparameter does (default: the run's own). Exit status:
0 rendered, 1 no run there, 2 bad options.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from service.options import parse_options
from training.log import print_line
from training.report.rules import ISSUE, NOT_EVALUATED
from training.report.store import REPORT_FILE

ENV_PREFIX = "BINSIGHT_REPORT_"


class ReportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Output data dir of a run, a folder above it, or an output.tar.gz")
    out_dir: Path | None = Field(None, description="Where to write; default: the run's output data dir")
    thresholds: str | None = Field(None, description="name=value,... over the run's report_thresholds")


def unpack(archive: Path, into: Path | None) -> Path:
    """Extract ``archive`` (``output.tar.gz``) into ``into`` or a folder beside it named after it."""
    target = into or archive.with_name(archive.name.removesuffix(".gz").removesuffix(".tar").removesuffix(".tgz"))
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    options = parse_options(ReportOptions, ENV_PREFIX, "python -m training.report", __doc__, argv, environ)
    from training.report.render import render_folder  # matplotlib only when rendering

    run = options.run
    try:
        if run.is_file() and tarfile.is_tarfile(run):
            run = unpack(run, options.out_dir)
        findings = render_folder(run, options.out_dir, options.thresholds)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    for f in findings:
        if f.status != NOT_EVALUATED:
            print_line(f"report_finding: {f.rule} status: {f.status.replace(' ', '_')} evidence: {f.evidence}")
    from training.report.store import find_output_dir

    where = options.out_dir or find_output_dir(run)
    issues = [f.rule for f in findings if f.status == ISSUE]
    print_line(f"report_done: report_issues: {len(issues)} report: {where / REPORT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
