"""The rules' thresholds, each documented, with defaults from SageMaker Debugger's published rule defaults
where one exists (named in the description), and changed per run with the ``report_thresholds``
hyperparameter: ``report_thresholds=gpu_util_p95=60,step_outlier_sigma=4``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # performance
    gpu_util_p95: float = Field(
        70.0, description="low GPU utilisation: issue when GPU p95 is below (LowGPUUtilization)"
    )
    cpu_bottleneck_cpu: float = Field(90.0, description="CPU bottleneck: a sample counts when CPU % is above this ...")
    cpu_bottleneck_gpu: float = Field(10.0, description="... while GPU % is below this (CPUBottleneck)")
    bottleneck_share: float = Field(0.5, description="CPU/I/O bottleneck: issue when that many samples count")
    iowait: float = Field(50.0, description="I/O bottleneck: a sample counts with iowait % above this (IOBottleneck)")
    data_wait_share: float = Field(
        0.25, description="data wait: issue when an epoch waits for data this share of its time"
    )
    step_outlier_sigma: float = Field(3.0, description="step outliers: steps beyond mean + this x std (StepOutlier)")
    step_outlier_time_share: float = Field(
        0.05, description="step outliers: issue when they cost this share of the time"
    )
    workers_min_share: float = Field(
        0.7, description="dataloader: fewer workers than this x cores, with data wait (Dataloader)"
    )
    workers_max_share: float = Field(2.0, description="dataloader: more workers than this x cores (Dataloader)")
    gpu_memory_growth: float = Field(
        0.05, description="GPU memory growth: issue when it grows by this share after epoch 1"
    )
    batch_small_p95: float = Field(
        70.0, description="batch too small: GPU util, GPU memory and CPU p95 all below (BatchSize)"
    )
    init_seconds: float = Field(
        1200.0, description="slow initialisation: issue when the first step starts later (MaxInitializationTime)"
    )
    # model health
    vanishing_grad_norm: float = Field(
        1e-7, description="vanishing gradients: total gradient norm below (VanishingGradient)"
    )
    exploding_grad_norm: float = Field(1e4, description="exploding gradients: total gradient norm above")
    exploding_grad_growth: float = Field(
        100.0, description="exploding gradients: norm above this x the first checks' median"
    )
    update_ratio_min: float = Field(
        1e-8, description="update/weight ratio: issue below (WeightUpdateRatio small_threshold)"
    )
    update_ratio_max: float = Field(
        10.0, description="update/weight ratio: issue above (WeightUpdateRatio large_threshold)"
    )
    init_loss_factor: float = Field(3.0, description="poor initialisation: first losses above this x ln(classes)")
    bn_window_share: float = Field(
        0.1, description="stale BatchNorm statistics: EMA window (1/momentum) above this x steps per epoch"
    )
    bn_shift_sigma: float = Field(
        0.5, description="stale BatchNorm statistics: recalibration moved a mean by this many sigma"
    )
    # convergence
    loss_window_steps: int = Field(
        10, ge=2, description="loss not decreasing: window of steps compared (LossNotDecreasing)"
    )
    loss_min_decrease: float = Field(
        0.001, description="loss not decreasing: last window must be this share below the first"
    )
    overfit_ratio: float = Field(
        0.1, description="overfit: (val_loss - train_loss) / train_loss above, val loss rising (Overfit)"
    )
    overtraining_patience: int = Field(3, ge=1, description="overtraining: epochs after the best validation epoch")
    loss_spike_factor: float = Field(
        3.0, description="loss spikes: a step's loss above this x the median of the steps before"
    )
    chance_margin: float = Field(
        0.05, description="no learning signal: best val_acc within this of the majority class share"
    )
    # data
    class_imbalance: float = Field(10.0, description="class imbalance: largest / smallest class above (ClassImbalance)")
    input_mean_abs: float = Field(1.5, description="input normalisation: a channel's |mean| above")
    input_std_min: float = Field(0.1, description="input normalisation: a channel's std below")
    input_std_max: float = Field(3.0, description="input normalisation: a channel's std above")


def parse_thresholds(text: str) -> Thresholds:
    """``name=value,name=value`` over the defaults; a ``ValueError`` names an unknown or bad entry."""
    values: dict[str, str] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"report_thresholds entry {part!r} is not name=value")
        if name not in Thresholds.model_fields:
            raise ValueError(f"unknown report threshold {name!r}; known: {', '.join(Thresholds.model_fields)}")
        values[name] = value.strip()
    try:
        return Thresholds(**values)
    except ValidationError as exc:
        raise ValueError(f"report_thresholds: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
