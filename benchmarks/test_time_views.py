"""Which test-time views? Validation figures of a trained recipe model under each set of views.

    python benchmarks/test_time_views.py --data-dir ../shared/abid --input-size 288 --aux-weight 0.5

Takes the recipe's options (``python -m training.recipes.default_model --help``), reads the selection
run's checkpoint and the cached trunk features (run the recipe or the sweep with the same options
first; nothing is trained here) and prints, for every set of cached views that holds ``orig``, the
validation accuracy of the served answer before and after its own answer rule, and the challenge
protocol's accuracy and RMSE. With ``--soup-seeds`` the members' runs are read and averaged (a model
soup). Each view is one more forward pass when served. The test split is not read.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from service.architectures import build_model  # noqa: E402
from training.metrics import compute_metrics, counts_task_metrics  # noqa: E402
from training.recipes.decision import tune_offsets  # noqa: E402
from training.recipes.default_model import (  # noqa: E402
    log,
    parse_args,
    recipe_metadata,
    run_key,
    select_bins,
    soup_model,
    tuning_features,
    view_probabilities,
)


def selected_model(cfg, bins, features, checkpoints: list[Path]) -> torch.nn.Module:
    """The selection run's top at its best epoch; with ``soup_seeds`` the soup of the members' tops."""
    members = []
    for checkpoint in checkpoints:
        model = build_model(cfg.architecture, bins.policy.num_classes, pretrained=True, head=cfg.head)
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["best_state"] or saved["top"], strict=False)
        members.append(model)
    if not cfg.soup_seeds:
        return members[0]
    return soup_model(cfg, bins, features, members, bins.split.train)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv, prog="python benchmarks/test_time_views.py", description=__doc__.split("\n\n")[0])
    torch.set_num_threads(cfg.threads)
    runs = [cfg.member(seed) for seed in cfg.soup_seeds] if cfg.soup_seeds else [cfg]
    checkpoints = [run.cache_dir / "runs" / f"{run_key(run, 'select')}.pt" for run in runs]
    for checkpoint in checkpoints:
        if not checkpoint.is_file():
            print(f"error: no selection run for these options ({checkpoint}); run the recipe first", file=sys.stderr)
            return 2
    bins = select_bins(cfg)
    features = tuning_features(cfg, build_model(cfg.architecture, bins.policy.num_classes, pretrained=True), bins)
    model = selected_model(cfg, bins, features, checkpoints)
    val_idx = bins.indices(bins.split.val)
    labels = bins.labels[val_idx]
    class_values, names = recipe_metadata(cfg, bins).class_values, bins.policy.labels
    per_view = {  # each view's probabilities once; a set of views averages them, as serving does
        v: view_probabilities(model, features, val_idx, cfg.model_copy(update={"test_time_views": (v,)}))
        for v in features
    }
    others = [v for v in per_view if v != "orig"]
    for k in range(len(others) + 1):
        for extra in itertools.combinations(others, k):
            views = ("orig", *extra)
            probs = sum(per_view[v] for v in views) / len(views)
            log_probs = probs.clamp_min(1e-8).log()
            adjusted = (log_probs + tune_offsets(log_probs, labels)).softmax(1)
            task = counts_task_metrics(adjusted, labels, class_values, names) or {}
            log(
                views="+".join(views),
                forward_passes=len(views),
                val_acc=round(compute_metrics(probs.argmax(1), labels, class_values)["accuracy"], 4),
                val_acc_rule=round(compute_metrics(adjusted.argmax(1), labels, class_values)["accuracy"], 4),
                val_counts_task_acc=round(task.get("accuracy", float("nan")), 4),
                val_counts_task_rmse=round(task.get("rmse", float("nan")), 4),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
