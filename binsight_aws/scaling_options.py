"""The autoscaling options ``deploy`` and ``autoscale`` share, checked before any AWS call.

A pydantic mixin (no boto3, no :mod:`binsight_aws.configs` import, so that module can use it) and the
:class:`ScalingPlan` the options resolve to once the instance type is known.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

from binsight_aws.capacity import DEFAULT_SAFETY_FACTOR, Capacity, derived_capacity

#: Application Auto Scaling accepts longer cooldowns; one over a day is a typo.
COOLDOWN_MAX_S = 86_400
INSTANCES_MAX = 100
#: With 60 s per invocation (SageMaker's longest) one instance cannot take more than this per minute
#: and request; a larger target would never scale out.
TARGET_MAX = 100_000.0


@dataclass(frozen=True)
class ScalingPlan:
    """What gets registered: the capacity range and the target-tracking policy."""

    min_instances: int
    max_instances: int
    target_invocations: float
    scale_in_cooldown_s: int
    scale_out_cooldown_s: int
    derived_from: Capacity | None = None  # None: the target was given

    def log_line(self) -> str:
        return (
            f"autoscaling: min_instances: {self.min_instances} max_instances: {self.max_instances} "
            f"target_invocations_per_instance_per_min: {self.target_invocations:g} "
            f"scale_in_cooldown_s: {self.scale_in_cooldown_s} scale_out_cooldown_s: {self.scale_out_cooldown_s} "
            f"target_source: {'measured throughput' if self.derived_from else 'given'}"
        )


class ScalingOptions(BaseModel):
    """Target tracking on ``SageMakerVariantInvocationsPerInstance`` (average invocations per instance per minute)."""

    max_instances: int | None = Field(
        None, ge=1, le=INSTANCES_MAX, description="Autoscale the endpoint up to this many instances"
    )
    min_instances: int | None = Field(
        None,
        ge=1,
        le=INSTANCES_MAX,
        description="Autoscaling: fewest instances (default: deploy's --instance-count; autoscale: the current count)",
    )
    target_invocations: float | None = Field(
        None,
        gt=0,
        le=TARGET_MAX,
        description="Autoscaling target, invocations per instance per minute (default: the measured "
        "throughput for the instance type; see README)",
    )
    safety_factor: float = Field(
        DEFAULT_SAFETY_FACTOR,
        gt=0,
        le=1,
        description="Share of the measured throughput the derived target aims at",
    )
    images_per_request: int = Field(
        1, ge=1, le=1000, description="Photos per invocation your clients send (the derived target divides by it)"
    )
    scale_in_cooldown_s: int = Field(
        300, ge=0, le=COOLDOWN_MAX_S, description="Autoscaling: seconds after a scale-in before the next one"
    )
    scale_out_cooldown_s: int = Field(
        60, ge=0, le=COOLDOWN_MAX_S, description="Autoscaling: seconds after a scale-out before the next one"
    )

    @model_validator(mode="after")
    def _scaling_consistent(self) -> ScalingOptions:
        given = self.model_fields_set
        if self.target_invocations is not None and given & {"safety_factor", "images_per_request"}:
            raise ValueError(
                "--safety-factor and --images-per-request shape the derived target; with --target-invocations drop them"
            )
        if self.max_instances is None:
            tuned = sorted(
                given & {"min_instances", "target_invocations", "scale_in_cooldown_s", "scale_out_cooldown_s"}
            )
            if tuned:
                flags = ", ".join("--" + name.replace("_", "-") for name in tuned)
                raise ValueError(f"{flags} set autoscaling, which needs --max-instances")
        elif self.min_instances is not None and self.min_instances > self.max_instances:
            raise ValueError(f"--min-instances ({self.min_instances}) is above --max-instances ({self.max_instances})")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_instances is not None

    def scaling_plan(self, instance_type: str, default_min: int) -> ScalingPlan:
        """The plan for ``instance_type``; ``ValueError`` (:class:`~binsight_aws.capacity.NoMeasuredCapacity`)
        when the target must be derived and no measurement transfers to that type."""
        assert self.max_instances is not None, "scaling_plan() needs --max-instances"
        minimum = self.min_instances if self.min_instances is not None else min(default_min, self.max_instances)
        derived = None
        target = self.target_invocations
        if target is None:
            derived = derived_capacity(instance_type, self.safety_factor, self.images_per_request)
            target = derived.target_invocations
        return ScalingPlan(
            min_instances=minimum,
            max_instances=self.max_instances,
            target_invocations=float(target),
            scale_in_cooldown_s=self.scale_in_cooldown_s,
            scale_out_cooldown_s=self.scale_out_cooldown_s,
            derived_from=derived,
        )
