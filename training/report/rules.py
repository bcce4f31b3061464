"""The rules: each reads a run's records (:class:`training.report.store.RunRecords`) and says ``not evaluated``
(the figure it needs was not measured, e.g. GPU rules on a CPU), ``ok`` or ``issue``, with the evidence
either way and the threshold it compared with (:mod:`training.report.thresholds`).

Four families: performance (the machine and the input pipeline), model health (gradients and weights),
convergence (losses and validation) and data (classes and inputs).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Sequence

from training.report.store import RunRecords
from training.report.thresholds import Thresholds

Status = Literal["not evaluated", "ok", "issue"]
NOT_EVALUATED, OK, ISSUE = "not evaluated", "ok", "issue"


@dataclass(frozen=True)
class Finding:
    rule: str
    family: str
    status: Status
    evidence: str
    threshold: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100) of the finite values (``nan`` for none)."""
    xs = sorted(_finite(values))
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _gpu_columns(records: RunRecords, suffix: str) -> list[str]:
    return [c for c in records.system if c.startswith("gpu") and c.endswith(suffix)]


def _is_bad(value: Any) -> bool:
    """A health record's value that is non-finite (stored as ``"nan"``/``"inf"``) or ``False``."""
    if value is False:
        return True
    if isinstance(value, str):
        return True
    return isinstance(value, float) and not math.isfinite(value)


# ------------------------------------------------------------------------------------------------ performance


def low_gpu_utilization(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"p95 < {t.gpu_util_p95:g}%"
    cols = _gpu_columns(r, "_util")
    if not cols:
        return Finding("low_gpu_utilization", "performance", NOT_EVALUATED, "no GPU was sampled", limit)
    p95s = {c.removesuffix("_util"): percentile(r.system[c], 95) for c in cols}
    low = {g: p for g, p in p95s.items() if p < t.gpu_util_p95}
    evidence = ", ".join(f"{g} p95 {p:.0f}%" for g, p in p95s.items())
    return Finding("low_gpu_utilization", "performance", ISSUE if low else OK, evidence, limit)


def _busy_share(cpu: Sequence[float], gpu: Sequence[float], cpu_above: float, gpu_below: float) -> float:
    pairs = [(c, g) for c, g in zip(cpu, gpu) if math.isfinite(c) and math.isfinite(g)]
    return sum(1 for c, g in pairs if c > cpu_above and g < gpu_below) / max(1, len(pairs))


def cpu_bottleneck(r: RunRecords, t: Thresholds) -> Finding:
    limit = (
        f"CPU > {t.cpu_bottleneck_cpu:g}% while GPU < {t.cpu_bottleneck_gpu:g}% in "
        f"more than {t.bottleneck_share:.0%} of samples"
    )
    cols = _gpu_columns(r, "_util")
    if not cols or "cpu_percent" not in r.system:
        return Finding("cpu_bottleneck", "performance", NOT_EVALUATED, "needs CPU and GPU samples", limit)
    gpu = [max(_finite(vals) or [math.nan]) for vals in zip(*(r.system[c] for c in cols))]
    share = _busy_share(r.system["cpu_percent"], gpu, t.cpu_bottleneck_cpu, t.cpu_bottleneck_gpu)
    status = ISSUE if share > t.bottleneck_share else OK
    return Finding("cpu_bottleneck", "performance", status, f"{share:.0%} of samples", limit)


def io_bottleneck(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"iowait > {t.iowait:g}% in more than {t.bottleneck_share:.0%} of samples"
    iowait = _finite(r.system.get("iowait", []))
    if not iowait:
        return Finding("io_bottleneck", "performance", NOT_EVALUATED, "no iowait samples", limit)
    share = sum(1 for v in iowait if v > t.iowait) / len(iowait)
    status = ISSUE if share > t.bottleneck_share else OK
    return Finding(
        "io_bottleneck",
        "performance",
        status,
        f"{share:.0%} of samples, p95 iowait {percentile(iowait, 95):.1f}%",
        limit,
    )


def _epoch_waits(r: RunRecords) -> dict[int, float]:
    """Data-wait share per epoch from the steps, without each epoch's first (the loader starting: initialisation)."""
    waits: dict[int, list[float]] = {}
    totals: dict[int, float] = {}
    for e, s, w, x in zip(
        r.steps.get("epoch", []), r.steps.get("step", []), r.steps.get("data_wait_s", []), r.steps.get("step_s", [])
    ):
        if s > 1 and math.isfinite(w) and math.isfinite(x):
            waits.setdefault(int(e), []).append(w)
            totals[int(e)] = totals.get(int(e), 0.0) + x
    return {e: sum(ws) / totals[e] for e, ws in waits.items() if totals[e] > 0}


def data_wait(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"data-wait share of an epoch's steps (but its first) > {t.data_wait_share:.0%}"
    shares = _epoch_waits(r)
    if not shares:
        return Finding("data_wait", "performance", NOT_EVALUATED, "no epoch was timed past its first step", limit)
    worst = max(shares, key=lambda k: shares[k])
    waits = [v * 1000 for v in _finite(r.steps.get("data_wait_s", []))]
    evidence = (
        f"worst epoch {worst}: {shares[worst]:.0%} of step time waiting for the loader"
        f" (per step p50 {percentile(waits, 50):.1f} ms, p95 {percentile(waits, 95):.1f} ms)"
    )
    return Finding("data_wait", "performance", ISSUE if shares[worst] > t.data_wait_share else OK, evidence, limit)


MIN_OUTLIER_STEPS = 20


def step_outliers(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"steps beyond mean + {t.step_outlier_sigma:g} std costing > {t.step_outlier_time_share:.0%} of step time"
    epochs, steps, times = r.steps.get("epoch", []), r.steps.get("step", []), r.steps.get("step_s", [])
    # The first step of an epoch starts the loader's workers: slow initialisation's business, not an outlier.
    body = [(int(e), int(s), x) for e, s, x in zip(epochs, steps, times) if s > 1 and math.isfinite(x)]
    if len(body) < MIN_OUTLIER_STEPS:
        evidence = f"{len(body)} steps timed past each epoch's first (needs {MIN_OUTLIER_STEPS})"
        return Finding("step_outliers", "performance", NOT_EVALUATED, evidence, limit)
    xs = [x for _, _, x in body]
    mean, std = statistics.fmean(xs), statistics.pstdev(xs)
    cut = max(mean + t.step_outlier_sigma * std, 2 * statistics.median(xs))
    out = [(e, s, x) for e, s, x in body if x > cut]
    share = sum(x - mean for _, _, x in out) / max(sum(xs), 1e-12)
    where = ", ".join(f"epoch {e} step {s} ({1000 * x:.0f} ms)" for e, s, x in sorted(out, key=lambda o: -o[2])[:5])
    evidence = (
        f"{len(out)} of {len(xs)} steps above {1000 * cut:.0f} ms (mean {1000 * mean:.0f} ms); extra time {share:.1%}"
    )
    if where:
        evidence += f"; slowest: {where}"
    return Finding("step_outliers", "performance", ISSUE if share > t.step_outlier_time_share else OK, evidence, limit)


def dataloader_workers(r: RunRecords, t: Thresholds) -> Finding:
    limit = (
        f"fewer than {t.workers_min_share:g} x cores while waiting for data, "
        f"or more than {t.workers_max_share:g} x cores"
    )
    workers, cores = r.run.get("num_workers"), r.run.get("cores")
    if workers is None or not cores:
        return Finding("dataloader_workers", "performance", NOT_EVALUATED, "worker or core count unknown", limit)
    shares = list(_epoch_waits(r).values())
    waiting = bool(shares) and max(shares) > t.data_wait_share
    evidence = f"{workers} loader workers on {cores} cores"
    if workers > t.workers_max_share * cores:
        return Finding("dataloader_workers", "performance", ISSUE, evidence + ": they compete for the cores", limit)
    if waiting and workers < t.workers_min_share * cores and workers < cores - 1:
        return Finding(
            "dataloader_workers",
            "performance",
            ISSUE,
            evidence + f", and the loop waits for data ({max(shares):.0%}): more workers (num_workers) may help",
            limit,
        )
    return Finding("dataloader_workers", "performance", OK, evidence, limit)


def gpu_memory_growth(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"allocated GPU memory at the end of an epoch grows by > {t.gpu_memory_growth:.0%} after epoch 1"
    memory = [(e["epoch"], e["device_memory_mb"]) for e in r.epochs if e.get("device_memory_mb") is not None]
    if len(memory) < 2:
        return Finding("gpu_memory_growth", "performance", NOT_EVALUATED, "needs two epochs on a GPU", limit)
    (e0, m0), (e1, m1) = memory[0], memory[-1]
    growth = (m1 - m0) / max(m0, 1e-9)
    evidence = f"epoch {e0}: {m0:.0f} MiB, epoch {e1}: {m1:.0f} MiB ({growth:+.1%})"
    return Finding("gpu_memory_growth", "performance", ISSUE if growth > t.gpu_memory_growth else OK, evidence, limit)


def batch_too_small(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"GPU utilisation, GPU memory and CPU p95 all below {t.batch_small_p95:g}%"
    util, mem = _gpu_columns(r, "_util"), _gpu_columns(r, "_mem_percent")
    if not util or not mem or "cpu_percent" not in r.system:
        return Finding("batch_too_small", "performance", NOT_EVALUATED, "no GPU was sampled", limit)
    figures = {
        "GPU": max(percentile(r.system[c], 95) for c in util),
        "GPU memory": max(percentile(r.system[c], 95) for c in mem),
        "CPU": percentile(r.system["cpu_percent"], 95),
    }
    small = all(v < t.batch_small_p95 for v in figures.values())
    evidence = ", ".join(f"{k} p95 {v:.0f}%" for k, v in figures.items())
    if small:
        evidence += f"; batch_size {r.run.get('config', {}).get('batch_size')}: a larger batch would use the device"
    return Finding("batch_too_small", "performance", ISSUE if small else OK, evidence, limit)


def slow_initialisation(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"first step later than {t.init_seconds:g} s after the start"
    first = r.run.get("first_step_s")
    if first is None:
        return Finding("slow_initialisation", "performance", NOT_EVALUATED, "no step was trained", limit)
    evidence = f"first step done {first:.1f} s after the start (data preparation, model, loader workers)"
    return Finding("slow_initialisation", "performance", ISSUE if first > t.init_seconds else OK, evidence, limit)


# ------------------------------------------------------------------------------------------------ model health


def nan_or_inf(r: RunRecords, t: Thresholds) -> Finding:
    limit = "any non-finite loss, gradient or weight"
    losses = r.steps.get("loss", [])
    bad_steps = [i for i, x in enumerate(losses) if not math.isfinite(x)]
    if not r.health and not losses:
        return Finding("nan_or_inf", "model health", NOT_EVALUATED, "no step was checked", limit)
    bad = [
        (h["step"], name)
        for h in r.health
        for name in ("loss", "grads", "weights")
        if h.get(f"{name}_finite") is False or (name == "loss" and _is_bad(h.get("loss")))
    ]
    if bad or bad_steps:
        what = sorted({name for _, name in bad} or {"loss"})
        evidence = f"non-finite {', '.join(what)}"
        if bad:
            evidence += f", first at global step {min(s for s, _ in bad)}"
        if bad_steps:
            evidence += f"; {len(bad_steps)} steps with a non-finite loss"
        return Finding("nan_or_inf", "model health", ISSUE, evidence, limit)
    return Finding(
        "nan_or_inf", "model health", OK, f"{len(r.health)} checks and {len(losses)} step losses finite", limit
    )


def _grad_norms(r: RunRecords) -> list[tuple[int, float]]:
    return [(h["step"], float(h["grad_norm"])) for h in r.health if not _is_bad(h.get("grad_norm"))]


def vanishing_gradients(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"total gradient norm < {t.vanishing_grad_norm:g}"
    norms = _grad_norms(r)
    if not norms:
        return Finding("vanishing_gradients", "model health", NOT_EVALUATED, "no finite gradient norm checked", limit)
    low = [(s, n) for s, n in norms if n < t.vanishing_grad_norm]
    smallest = min(norms, key=lambda sn: sn[1])
    evidence = f"smallest total norm {smallest[1]:.3g} at step {smallest[0]} ({len(low)} of {len(norms)} checks below)"
    return Finding("vanishing_gradients", "model health", ISSUE if low else OK, evidence, limit)


def exploding_gradients(r: RunRecords, t: Thresholds) -> Finding:
    limit = (
        f"total gradient norm > {t.exploding_grad_norm:g}, "
        f"> {t.exploding_grad_growth:g} x the first checks', or non-finite"
    )
    if not r.health:
        return Finding("exploding_gradients", "model health", NOT_EVALUATED, "no step was checked", limit)
    nonfinite = [h["step"] for h in r.health if _is_bad(h.get("grad_norm")) or h.get("grads_finite") is False]
    norms = _grad_norms(r)
    base = statistics.median([n for _, n in norms[:5]]) if norms else math.nan
    high = [(s, n) for s, n in norms if n > t.exploding_grad_norm or (base > 0 and n > t.exploding_grad_growth * base)]
    if nonfinite or high:
        parts = []
        if nonfinite:
            parts.append(f"non-finite gradients from step {nonfinite[0]}")
        if high:
            s, n = max(high, key=lambda sn: sn[1])
            parts.append(f"norm {n:.3g} at step {s} (first checks' median {base:.3g})")
        return Finding("exploding_gradients", "model health", ISSUE, "; ".join(parts), limit)
    largest = max(norms, key=lambda sn: sn[1]) if norms else (0, math.nan)
    evidence = f"largest total norm {largest[1]:.3g} at step {largest[0]} (first checks' median {base:.3g})"
    return Finding("exploding_gradients", "model health", OK, evidence, limit)


def update_ratio(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"median ||update|| / ||weights|| outside [{t.update_ratio_min:g}, {t.update_ratio_max:g}]"
    ratios = [
        (h["step"], float(h["update_ratio"]))
        for h in r.health
        if not _is_bad(h.get("update_ratio")) and h.get("update_ratio") is not None
    ]
    if not ratios:
        return Finding("update_ratio", "model health", NOT_EVALUATED, "no finite update checked", limit)
    # The first steps are warm-up (learning rate from 1%); the ratio of the rest tells whether the weights move.
    later = [x for s, x in ratios if s > 5] or [x for _, x in ratios]
    median = statistics.median(later)
    status = ISSUE if not (t.update_ratio_min <= median <= t.update_ratio_max) else OK
    evidence = f"median {median:.3g} over {len(later)} checks (min {min(later):.3g}, max {max(later):.3g})"
    if status == ISSUE and median < t.update_ratio_min:
        evidence += ": the weights barely move (frozen network, learning rate too small)"
    elif status == ISSUE:
        evidence += ": each step rewrites the weights (learning rate too large)"
    return Finding("update_ratio", "model health", status, evidence, limit)


def poor_initialisation(r: RunRecords, t: Thresholds) -> Finding:
    classes = len(r.run.get("labels") or []) or 2
    bound = t.init_loss_factor * math.log(classes)
    limit = f"a loss of the first 5 steps > {t.init_loss_factor:g} x ln({classes}) = {bound:.2f}, or non-finite"
    first = [h for h in r.health if h["step"] <= 5]
    if not first:
        return Finding(
            "poor_initialisation",
            "model health",
            NOT_EVALUATED,
            "the first steps were not checked (resumed run)",
            limit,
        )
    losses = [h.get("loss") for h in first]
    bad = [h["step"] for h in first if _is_bad(h.get("loss")) or _is_bad(h.get("grad_norm"))]
    high = [x for x in _finite(losses) if x > bound]
    shown = ", ".join(f"{x:.3f}" if isinstance(x, float) else str(x) for x in losses)
    evidence = f"first losses {shown} (ln {classes} = {math.log(classes):.3f})"
    return Finding("poor_initialisation", "model health", ISSUE if bad or high else OK, evidence, limit)


def stale_batchnorm_statistics(r: RunRecords, t: Thresholds) -> Finding:
    bn = r.run.get("batchnorm") or {}
    momentum, steps = bn.get("smallest_momentum"), r.run.get("steps_per_epoch") or 0
    limit = (
        f"without recalibration: averaging window 1/momentum > {t.bn_window_share:g} x steps per epoch; "
        f"with it: a mean moved by > {t.bn_shift_sigma:g} sigma (reported, fixed)"
    )
    if momentum is None:
        return Finding(
            "stale_batchnorm_statistics", "model health", NOT_EVALUATED, "no adapting BatchNorm layer", limit
        )
    window = 1 / momentum if momentum > 0 else math.inf
    shifts = [(e["epoch"], e["bn_recalibration"]) for e in r.epochs if e.get("bn_recalibration")]
    if bn.get("recalibration"):
        worst = max(shifts, key=lambda es: es[1]["max_mean_shift_sigma"]) if shifts else None
        evidence = f"momentum {momentum:g}: statistics recomputed before each validation and the saved model"
        if worst:
            evidence += (
                f"; the trailing ones were off by up to {worst[1]['max_mean_shift_sigma']:.2f} sigma (epoch {worst[0]})"
            )
        return Finding("stale_batchnorm_statistics", "model health", OK, evidence, limit)
    evidence = f"momentum {momentum:g} averages the last ~{window:.0f} steps, epochs have {steps}"
    if window > t.bn_window_share * max(steps, 1):
        evidence += ": validation and the saved model use statistics of older weights; set bn_recalibration=on"
        return Finding("stale_batchnorm_statistics", "model health", ISSUE, evidence, limit)
    return Finding("stale_batchnorm_statistics", "model health", OK, evidence, limit)


# ------------------------------------------------------------------------------------------------ convergence


def loss_not_decreasing(r: RunRecords, t: Thresholds) -> Finding:
    w = t.loss_window_steps
    limit = f"mean loss of the last {w} steps not {t.loss_min_decrease:.1%} below the first {w}"
    losses = [x for x in r.steps.get("loss", []) if math.isfinite(x)]
    if len(losses) < 2 * w:
        return Finding(
            "loss_not_decreasing", "convergence", NOT_EVALUATED, f"{len(losses)} step losses (needs {2 * w})", limit
        )
    first, last = statistics.fmean(losses[:w]), statistics.fmean(losses[-w:])
    fall = (first - last) / abs(first) if first else 0.0
    evidence = f"first {w} steps {first:.4f}, last {w} {last:.4f} ({fall:+.1%} fall)"
    return Finding("loss_not_decreasing", "convergence", ISSUE if fall < t.loss_min_decrease else OK, evidence, limit)


def overfitting(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"(val_loss - train_loss) / train_loss > {t.overfit_ratio:g} with val_loss above its best"
    rows = [e for e in r.history if e.get("val_loss") is not None and e.get("train_loss")]
    if len(rows) < 2:
        return Finding("overfitting", "convergence", NOT_EVALUATED, "needs two epochs with validation", limit)
    last, best = rows[-1], min(rows, key=lambda e: e["val_loss"])
    ratio = (last["val_loss"] - last["train_loss"]) / last["train_loss"]
    rising = last["val_loss"] > best["val_loss"]
    evidence = (
        f"epoch {last['epoch']}: train_loss {last['train_loss']:.4f}, val_loss {last['val_loss']:.4f} "
        f"(ratio {ratio:+.2f}); best val_loss {best['val_loss']:.4f} at epoch {best['epoch']}"
    )
    return Finding("overfitting", "convergence", ISSUE if ratio > t.overfit_ratio and rising else OK, evidence, limit)


def overtraining(r: RunRecords, t: Thresholds) -> Finding:
    metric = r.run.get("config", {}).get("select_metric", "val_acc")
    limit = f"{metric} not improved in the last {t.overtraining_patience} epochs"
    rows = [e for e in r.history if e.get(metric) is not None]
    if len(rows) <= t.overtraining_patience:
        return Finding("overtraining", "convergence", NOT_EVALUATED, f"{len(rows)} epochs with validation", limit)
    pick = max if metric == "val_acc" else min
    best = pick(rows, key=lambda e: e[metric])
    after = rows[-1]["epoch"] - best["epoch"]
    evidence = f"best {metric} {best[metric]:.4f} at epoch {best['epoch']} of {rows[-1]['epoch']}"
    return Finding("overtraining", "convergence", ISSUE if after >= t.overtraining_patience else OK, evidence, limit)


def loss_spikes(r: RunRecords, t: Thresholds) -> Finding:
    w = t.loss_window_steps
    limit = f"a step's loss > {t.loss_spike_factor:g} x the median of the {w} steps before"
    losses = r.steps.get("loss", [])
    if len(losses) <= w:
        return Finding("loss_spikes", "convergence", NOT_EVALUATED, f"{len(losses)} step losses (needs {w + 1})", limit)
    spikes = []
    for i in range(w, len(losses)):
        before = _finite(losses[i - w : i])
        x = losses[i]
        if before and (not math.isfinite(x) or x > t.loss_spike_factor * statistics.median(before)):
            spikes.append((i, x))
    evidence = f"{len(spikes)} of {len(losses) - w} steps"
    if spikes:
        evidence += "; first at step " + ", ".join(f"{i + 1} ({x:.3g})" for i, x in spikes[:3])
    return Finding("loss_spikes", "convergence", ISSUE if spikes else OK, evidence, limit)


def no_learning_signal(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"best val_acc within {t.chance_margin:g} of the share of the largest validation class"
    counts = r.run.get("val_class_counts") or []
    rows = [e["val_acc"] for e in r.history if e.get("val_acc") is not None]
    if not rows or not sum(counts):
        return Finding("no_learning_signal", "convergence", NOT_EVALUATED, "no validation accuracy", limit)
    majority = max(counts) / sum(counts)
    best = max(rows)
    evidence = f"best val_acc {best:.3f}; always answering the largest class scores {majority:.3f}"
    if best <= majority + t.chance_margin:
        evidence += ": the model has not learned more than the class shares (labels without signal? too few steps?)"
        return Finding("no_learning_signal", "convergence", ISSUE, evidence, limit)
    return Finding("no_learning_signal", "convergence", OK, evidence, limit)


# ------------------------------------------------------------------------------------------------ data


def class_imbalance(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"largest / smallest training class > {t.class_imbalance:g}"
    counts, labels = r.run.get("train_class_counts") or [], r.run.get("labels") or []
    present = [c for c in counts if c > 0]
    if not present:
        return Finding("class_imbalance", "data", NOT_EVALUATED, "no class counts", limit)
    ratio = max(present) / min(present)
    per_class = (r.metrics.get("test") or {}).get("per_class_accuracy") or {}
    evidence = "train counts " + ", ".join(f"{lab}: {c}" for lab, c in zip(labels, counts)) + f" (ratio {ratio:.1f})"
    if len(present) < len(counts):
        evidence += f"; {len(counts) - len(present)} classes have no training bin"
    if per_class:
        evidence += "; test accuracy per class " + ", ".join(
            f"{k}: {v:.2f}" if v is not None else f"{k}: -" for k, v in per_class.items()
        )
    status = ISSUE if ratio > t.class_imbalance or len(present) < len(counts) else OK
    return Finding("class_imbalance", "data", status, evidence, limit)


def input_normalisation(r: RunRecords, t: Thresholds) -> Finding:
    limit = f"a channel's |mean| > {t.input_mean_abs:g} or std outside [{t.input_std_min:g}, {t.input_std_max:g}]"
    checks = [h for h in r.health if isinstance(h.get("input_mean"), list)]
    if not checks:
        return Finding("input_normalisation", "data", NOT_EVALUATED, "no batch was checked", limit)
    channels = len(checks[0]["input_mean"])
    means = [statistics.fmean(_finite([h["input_mean"][c] for h in checks]) or [math.nan]) for c in range(channels)]
    stds = [statistics.fmean(_finite([h["input_std"][c] for h in checks]) or [math.nan]) for c in range(channels)]
    wrong = any(abs(m) > t.input_mean_abs for m in means) or any(
        not (t.input_std_min <= s <= t.input_std_max) for s in stds
    )
    evidence = (
        "per channel mean " + ", ".join(f"{m:.2f}" for m in means) + "; std " + ", ".join(f"{s:.2f}" for s in stds)
    )
    if wrong:
        evidence += ": the inputs are not normalised as the architecture expects"
    return Finding("input_normalisation", "data", ISSUE if wrong else OK, evidence, limit)


RULES: tuple[Callable[[RunRecords, Thresholds], Finding], ...] = (
    low_gpu_utilization,
    cpu_bottleneck,
    io_bottleneck,
    data_wait,
    step_outliers,
    dataloader_workers,
    gpu_memory_growth,
    batch_too_small,
    slow_initialisation,
    nan_or_inf,
    vanishing_gradients,
    exploding_gradients,
    update_ratio,
    poor_initialisation,
    stale_batchnorm_statistics,
    loss_not_decreasing,
    overfitting,
    overtraining,
    loss_spikes,
    no_learning_signal,
    class_imbalance,
    input_normalisation,
)


def evaluate(records: RunRecords, thresholds: Thresholds) -> list[Finding]:
    findings = []
    for rule in RULES:
        try:
            findings.append(rule(records, thresholds))
        except Exception as exc:  # a rule's bug must not lose the report
            findings.append(Finding(rule.__name__, "?", NOT_EVALUATED, f"rule failed: {type(exc).__name__}: {exc}"))
    return findings
