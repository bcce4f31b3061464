"""An ensemble of training seeds distilled into one servable top.

Tops trained from different seeds (head initialisation, batch order, augmentation draws) err on
different bins; averaging their probabilities is usually more accurate than any one of them, but
serving N models costs N forward passes. The recipe instead trains one student on the cached
features whose loss is partly the labels' and partly the teachers' averaged probabilities
(:func:`training.recipes.top_training.distillation_loss`), computed on the very view of the photo
the student sees, so it learns the ensemble's answer at one model's serving cost.

The teachers run on ONNX Runtime when it is installed (about 3x torch eager: 4 views of 10k bins
per teacher), checked against torch on the first chunk, and their probabilities are cached next to
the training runs (one file per set of teachers and bins), so an interrupted recipe does not
recompute them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from service.files import atomic_write
from training.recipes.feature_cache import ModuleRunner, Runtime

#: Largest difference between ONNX Runtime's and torch's teacher probabilities accepted.
PARITY_TOLERANCE = 1e-4


def ensemble_key(run_names: Sequence[str], views: Sequence[str], index: Sequence[int]) -> str:
    """What the cached soft targets depend on: the teachers' runs, the views and the bins they cover."""
    text = "|".join([*run_names, "views", *views, "bins", ",".join(map(str, index))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def soft_targets(
    teachers: Sequence[Callable[[], nn.Module]],
    features: dict[str, torch.Tensor],
    index: Sequence[int],
    views: Sequence[str],
    num_classes: int,
    cache: Path | None = None,
    log: Callable[..., None] = lambda **fields: None,
    runtime: Runtime = "auto",
    threads: int = 1,
    chunk: int = 256,
) -> dict[str, torch.Tensor]:
    """Per view, the teachers' averaged probabilities of the bins in ``index`` (other rows stay NaN).

    ``teachers`` are callables that return a module from features to class probabilities
    (:class:`training.recipes.lite_parts.TopProbabilities`), so a teacher is only built (or
    trained) when its probabilities are not cached yet.
    """
    if not teachers:
        raise ValueError("distillation needs at least one teacher")
    if cache is not None and cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if set(views) <= saved.keys():
            return {v: saved[v] for v in views}
    order = list(index)
    total = {v: torch.zeros(len(order), num_classes) for v in views}
    for n, teacher in enumerate(teachers, 1):
        example = features[views[0]][order[:2]].float()
        run = ModuleRunner(teacher(), example, runtime, threads, log, "teacher_runtime", PARITY_TOLERANCE)
        for view in views:
            total[view] += torch.cat(
                [run(features[view][order[s : s + chunk]].float()) for s in range(0, len(order), chunk)]
            )
        log(teacher=n, of=len(teachers), soft_targets="computed", runtime=run.runtime)
        del run
    out = {}
    for view in views:
        full = torch.full((len(features[view]), num_classes), float("nan"))
        full[order] = total[view] / len(teachers)
        out[view] = full
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda f: torch.save(out, f))
    return out
