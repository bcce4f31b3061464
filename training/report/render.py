"""A run's records -> ``summary.csv``, ``findings.json`` and ``report.html`` in its output data dir.

The HTML is one file with everything inline (CSS, PNG plots as ``data:`` URIs, no script, no font, no
CDN), so it opens offline, from an e-mail or from an extracted ``output.tar.gz``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from service.files import atomic_write_json
from training.report.rules import ISSUE, NOT_EVALUATED, OK, Finding, evaluate, percentile
from training.report.store import FINDINGS_FILE, REPORT_FILE, SUMMARY_FILE, RunRecords, load_records
from training.report.thresholds import Thresholds, parse_thresholds

SUMMARY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_rmse",
    "val_mae",
    "lr",
    "epoch_time_s",
    "img_per_s",
    "data_wait_share",
    "peak_memory_mb",
    "grad_norm",
    "report_cost_share",
)
PERCENTILES = (("max", 100), ("p99", 99), ("p95", 95), ("p50", 50), ("min", 0))


def summary_rows(records: RunRecords) -> list[dict[str, Any]]:
    """The history's epochs joined with their timing and health (blank where a resumed run lacks them)."""
    timing = {e["epoch"]: e for e in records.epochs}
    rows = []
    for entry in records.history:
        epoch = entry["epoch"]
        norms = [
            float(h["grad_norm"])
            for h in records.health
            if h.get("epoch") == epoch and isinstance(h.get("grad_norm"), (int, float))
        ]
        extra = timing.get(epoch, {})
        row = {
            **entry,
            **{k: extra.get(k) for k in ("img_per_s", "data_wait_share", "peak_memory_mb", "report_cost_share")},
        }
        row["grad_norm"] = round(sum(norms) / len(norms), 6) if norms else None
        rows.append(row)
    return rows


def write_summary(records: RunRecords, path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary_rows(records))
    tmp.replace(path)


def percentile_table(columns: dict[str, Sequence[float]], names: dict[str, str]) -> list[list[str]]:
    rows = []
    for key, label in names.items():
        values = columns.get(key)
        if not values:
            continue
        cells = [percentile(values, q) for _, q in PERCENTILES]
        if all(math.isnan(c) for c in cells):
            continue
        rows.append([label, *(f"{c:.4g}" for c in cells)])
    return rows


def step_table(records: RunRecords) -> list[list[str]]:
    ms = {k: [1000 * v for v in records.steps.get(k, [])] for k in ("data_wait_s", "h2d_s", "compute_s", "step_s")}
    return percentile_table(
        ms,
        {"data_wait_s": "data wait (ms)", "h2d_s": "H2D copy (ms)", "compute_s": "compute (ms)", "step_s": "step (ms)"},
    )


def system_table(records: RunRecords) -> list[list[str]]:
    names = {
        "cpu_percent": "CPU, all cores (%)",
        "cpu_max_core": "CPU, busiest core (%)",
        "iowait": "iowait (%)",
        "rss_mb": "RSS with workers (MiB)",
        "disk_read_mb_s": "disk read (MiB/s)",
        "disk_write_mb_s": "disk write (MiB/s)",
        "net_rx_mb_s": "network in (MiB/s)",
        "net_tx_mb_s": "network out (MiB/s)",
    }
    for col in records.system:
        if col.startswith("gpu"):
            gpu, _, what = col.partition("_")
            names[col] = f"{gpu} " + {
                "util": "utilisation (%)",
                "mem_mb": "memory (MiB)",
                "mem_percent": "memory (%)",
            }.get(what, "power (W)")
    return percentile_table(records.system, names)


# ------------------------------------------------------------------------------------------------ plots


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(title: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 2.8))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig, ax


def plots(records: RunRecords) -> list[tuple[str, str]]:
    """``(caption, data URI)`` of each plot there is data for."""
    out: list[tuple[str, str]] = []
    history = records.history
    if history:
        fig, ax = _figure("loss per epoch")
        epochs = [e["epoch"] for e in history]
        for key in ("train_loss", "val_loss"):
            if any(e.get(key) is not None for e in history):
                ax.plot(epochs, [e.get(key, math.nan) for e in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        out.append(("Losses per epoch", _png(fig)))
    steps = records.steps
    losses = steps.get("loss", [])
    if losses:
        fig, ax = _figure("loss per step")
        ax.plot(range(1, len(losses) + 1), losses, lw=0.8)
        ax.set_xlabel("step of the run")
        out.append(("Loss of each step's batch", _png(fig)))
        fig, ax = _figure("time per step (ms)")
        x = range(1, len(losses) + 1)
        parts = [(k, [1000 * v for v in steps.get(k, [])]) for k in ("data_wait_s", "h2d_s", "compute_s")]
        ax.stackplot(x, *[v for _, v in parts], labels=["data wait", "H2D copy", "compute"], alpha=0.8)
        ax.plot(x, [1000 * v for v in steps.get("step_s", [])], lw=0.6, color="black", label="whole step")
        ax.set_xlabel("step of the run")
        ax.legend(fontsize=8, loc="upper right")
        out.append(("Where each step's time went", _png(fig)))
    system = records.system
    if system.get("t"):
        fig, ax = _figure("CPU (%) and memory")
        ax.plot(system["t"], system.get("cpu_percent", []), label="CPU all cores", lw=0.8)
        ax.plot(system["t"], system.get("cpu_max_core", []), label="busiest core", lw=0.6)
        ax.plot(system["t"], system.get("iowait", []), label="iowait", lw=0.6)
        ax.set_ylim(0, 105)
        ax.set_xlabel("seconds since the start")
        ax2 = ax.twinx()
        ax2.plot(system["t"], system.get("rss_mb", []), color="grey", ls="--", lw=0.8, label="RSS (MiB)")
        ax.legend(fontsize=8, loc="upper left")
        ax2.legend(fontsize=8, loc="upper right")
        out.append(("What the CPU did", _png(fig)))
        gpus = sorted({c.split("_")[0] for c in system if c.startswith("gpu")})
        if gpus:
            fig, ax = _figure("GPU utilisation and memory (%)")
            for g in gpus:
                ax.plot(system["t"], system.get(f"{g}_util", []), label=f"{g} utilisation", lw=0.8)
                ax.plot(system["t"], system.get(f"{g}_mem_percent", []), label=f"{g} memory", lw=0.8, ls="--")
            ax.set_ylim(0, 105)
            ax.set_xlabel("seconds since the start")
            ax.legend(fontsize=8)
            out.append(("What the GPUs did", _png(fig)))
    return out


# ------------------------------------------------------------------------------------------------ HTML

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #dde;padding:3px 7px;text-align:left}
th{background:#f3f5f9}td.num{text-align:right;font-variant-numeric:tabular-nums}
.issue{background:#fde2e1;font-weight:600}.ok{background:#e3f6e5}.not{background:#eef0f3;color:#667}
.cards span{display:inline-block;margin-right:14px;padding:6px 10px;border-radius:6px}
.wide{overflow-x:auto}figure{margin:10px 0}figcaption{font-size:12px;color:#556}small{color:#667}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = "" if cell is None else (f"{cell:.4g}" if isinstance(cell, float) else str(cell))
            cls = ' class="num"' if i >= numeric_from else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="wide"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _findings_html(findings: Sequence[Finding]) -> str:
    css = {ISSUE: "issue", OK: "ok", NOT_EVALUATED: "not"}
    rows = []
    for f in findings:
        rows.append(
            f'<tr class="{css[f.status]}"><td>{html.escape(f.family)}</td><td>{html.escape(f.rule)}</td>'
            f"<td>{html.escape(f.status)}</td><td>{html.escape(f.evidence)}</td>"
            f"<td><small>{html.escape(f.threshold)}</small></td></tr>"
        )
    head = "<tr><th>family</th><th>rule</th><th>status</th><th>evidence</th><th>threshold</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _profile_html(profile: dict[str, Any] | None) -> str:
    if not profile:
        return "<p>No profiler window was asked for (<code>profile_steps</code>).</p>"
    ranges = profile.get("ranges") or {}
    parts = [
        f"<p>{profile.get('steps')} steps profiled; trace: "
        f"{html.escape(str((profile.get('trace') or {}).get('file') or (profile.get('trace') or {}).get('dropped')))}"
        f" ({(profile.get('trace') or {}).get('size_mb')} MiB gzipped, opens in Perfetto)</p>"
    ]
    if ranges:
        parts.append(
            _table(
                ["phase", "CPU ms", "device ms", "calls"],
                [[k, v.get("cpu_ms"), v.get("device_ms"), v.get("count")] for k, v in ranges.items()],
            )
        )
    ops = profile.get("top_operators") or []
    parts.append(
        _table(
            ["operator", "calls", "self CPU ms", "CPU total ms", "self device ms"],
            [[o["name"], o["count"], o["self_cpu_ms"], o["cpu_total_ms"], o.get("self_device_ms")] for o in ops],
        )
    )
    return "".join(parts)


def render_html(records: RunRecords, findings: Sequence[Finding]) -> str:
    run = records.run
    config = run.get("config") or {}
    counts = {s: sum(1 for f in findings if f.status == s) for s in (ISSUE, OK, NOT_EVALUATED)}
    title = f"binsight training report: {config.get('architecture', '?')} on {run.get('device', '?')}"
    summary = summary_rows(records)
    test = (records.metrics.get("test") or {}) if records.metrics else {}
    costs = [e["report_cost_s"] for e in records.epochs if e.get("report_cost_s") is not None]
    trained = sum(e.get("train_s") or 0 for e in records.epochs if e.get("report_cost_s") is not None)
    cost_line = (
        f"<p><small>The report itself took {100 * sum(costs) / trained:.2f}% of the training time "
        "(its sampler thread's CPU time, health checks and writes).</small></p>"
        if costs and trained > 0
        else ""
    )
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p><small>{html.escape(str(records.folder))} &middot; started {html.escape(str(run.get('started', '?')))}"
        f" &middot; {run.get('cores')} cores, {run.get('num_workers')} loader workers, batch {config.get('batch_size')}"
        f", {run.get('steps_per_epoch')} steps per epoch</small></p>",
        '<div class="cards">'
        f'<span class="issue">{counts[ISSUE]} issue{"" if counts[ISSUE] == 1 else "s"}</span>'
        f'<span class="ok">{counts[OK]} ok</span>'
        f'<span class="not">{counts[NOT_EVALUATED]} not evaluated</span></div>',
        cost_line,
        "<h2>Findings</h2>",
        _findings_html(findings),
        "<h2>Epochs</h2>",
        _table(SUMMARY_COLUMNS, [[row.get(c) for c in SUMMARY_COLUMNS] for row in summary]),
    ]
    if test:
        sections.append(
            "<p>Test: "
            + ", ".join(
                f"{k} {test[k]:.4f}" for k in ("accuracy", "rmse", "mae", "macro_f1") if isinstance(test.get(k), float)
            )
            + f" on {test.get('n')} bins</p>"
        )
    header = ["figure", *(name for name, _ in PERCENTILES)]
    sections += ["<h2>Step timing</h2>", _table(header, step_table(records))]
    system = system_table(records)
    sections += [
        "<h2>System</h2>",
        _table(header, system) if system else "<p>Not sampled (psutil missing or the report was off).</p>",
    ]
    sections.append("<h2>Plots</h2>")
    for caption, uri in plots(records):
        sections.append(
            f'<figure><img alt="{html.escape(caption)}" src="{uri}"><figcaption>{caption}</figcaption></figure>'
        )
    sections += ["<h2>Profiler</h2>", _profile_html(records.profile)]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )


def render(records: RunRecords, thresholds: Thresholds, out_dir: Path | None = None) -> list[Finding]:
    """Evaluate the rules and write ``summary.csv``, ``findings.json`` and ``report.html`` to ``out_dir``
    (default: the run's output data dir); returns the findings."""
    out = Path(out_dir or records.folder)
    out.mkdir(parents=True, exist_ok=True)
    findings = evaluate(records, thresholds)
    write_summary(records, out / SUMMARY_FILE)
    atomic_write_json(
        out / FINDINGS_FILE,
        {
            "issues": [f.rule for f in findings if f.status == ISSUE],
            "findings": [f.as_dict() for f in findings],
            "thresholds": thresholds.model_dump(),
        },
    )
    tmp = out / (REPORT_FILE + ".tmp")
    tmp.write_text(render_html(records, findings), encoding="utf-8")
    tmp.replace(out / REPORT_FILE)
    return findings


def render_folder(folder: Path, out_dir: Path | None = None, thresholds: str | None = None) -> list[Finding]:
    """Render a finished (or stopped) run's report again from its folder, with its own thresholds unless given."""
    records = load_records(folder)
    text = thresholds if thresholds is not None else (records.run.get("config") or {}).get("report_thresholds", "")
    return render(records, parse_thresholds(text), out_dir)


def findings_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
