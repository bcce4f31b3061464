"""How many invocations a hosting instance of the serving image takes: the default autoscaling target.

The figure is the measured one, not a guess: ``benchmarks/serve_bench.py`` served 35.7 img/s end to
end with the default model (v3, 288 px; ONNX Runtime fp32, 8 concurrent clients, one full-size ABID
photo per ``POST /invocations``) on a 2-vCPU machine (README, "Serving speed"). Per vCPU that is
17.85 img/s; an instance type gets

    target = 17.85 img/s x vCPUs x 60 s x safety factor / images per request

invocations per instance per minute, the unit of ``SageMakerVariantInvocationsPerInstance``. The
safety factor (default 0.5) leaves room for what the scaling rule assumes: that throughput grows
with vCPUs (measured only up to 2), that a new instance takes minutes to come up while the others
carry its share, and that the measured machine is not the instance. Only x86 CPU families get a
derived target: the figure says nothing about GPUs, accelerators, Graviton or burstable instances
(their sustained CPU is a fraction of a vCPU), so those need ``--target-invocations``.

No boto3 here: configs validate with it before anything is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: benchmarks/serve_bench.py, default model v3 (288 px), ONNX Runtime fp32, end-to-end at concurrency 8
#: (README "Serving speed"; v2 at 224 px served 61.7 in the same conditions, 66.2 when first measured).
MEASURED_IMAGES_PER_S = 35.7
MEASURED_VCPUS = 2
DEFAULT_SAFETY_FACTOR = 0.5
#: Families the measurement transfers to: x86 CPUs, sustained (not burstable) capacity.
X86_CPU_FAMILIES = frozenset(
    "m4 m5 m5d m6i m6id m7i c4 c5 c5d c5n c6i c6id c6in c7i r5 r5d r6i r6id r7i x1 z1d".split()
)
#: Sizes whose vCPUs differ from the rule (4 per "xlarge").
_VCPU_EXCEPTIONS = {"ml.c4.8xlarge": 36, "ml.t2.medium": 2, "ml.t3.medium": 2}
_TYPE_RE = re.compile(r"^ml\.(?P<family>[a-z]+[0-9]+[a-z]*)\.(?P<size>medium|large|xlarge|(?P<n>[0-9]{1,2})xlarge)$")


class NoMeasuredCapacity(ValueError):
    """The instance type is not one the measured figure transfers to."""


@dataclass(frozen=True)
class Capacity:
    """The default target of one instance type, and how it was reached (for the log)."""

    instance_type: str
    vcpus: int
    images_per_s: float
    target_invocations: float
    safety_factor: float
    images_per_request: int

    def log_line(self) -> str:
        return (
            f"autoscaling_target_derived: {self.target_invocations:.0f} invocations/instance/min "
            f"instance_type: {self.instance_type} vcpus: {self.vcpus} "
            f"measured_img_s_per_vcpu: {MEASURED_IMAGES_PER_S / MEASURED_VCPUS:.1f} "
            f"safety_factor: {self.safety_factor} images_per_request: {self.images_per_request}"
        )


def vcpus(instance_type: str) -> int:
    """vCPUs of an ``ml.<family>.<size>`` type: 2 per ``large``, 4 per ``xlarge``, 4N per ``Nxlarge``."""
    if instance_type in _VCPU_EXCEPTIONS:
        return _VCPU_EXCEPTIONS[instance_type]
    match = _TYPE_RE.match(instance_type)
    if not match:
        raise ValueError(f"{instance_type!r} is not a SageMaker instance type (ml.<family>.<size>)")
    size = match["size"]
    if size == "medium":
        return 1
    if size == "large":
        return 2
    return 4 * int(match["n"] or 1)


def derived_capacity(
    instance_type: str, safety_factor: float = DEFAULT_SAFETY_FACTOR, images_per_request: int = 1
) -> Capacity:
    """The measured throughput scaled to ``instance_type``; :class:`NoMeasuredCapacity` where it does not transfer."""
    match = _TYPE_RE.match(instance_type)
    family = match["family"] if match else ""
    if family not in X86_CPU_FAMILIES:
        raise NoMeasuredCapacity(
            f"no measured serving throughput transfers to {instance_type} (measured on x86 CPUs; GPU, "
            "accelerator, Graviton and burstable instances differ): give --target-invocations "
            "(invocations per instance per minute; measure with benchmarks/serve_bench.py on that type)"
        )
    count = vcpus(instance_type)
    images_per_s = MEASURED_IMAGES_PER_S / MEASURED_VCPUS * count
    target = images_per_s * 60 * safety_factor / images_per_request
    return Capacity(instance_type, count, images_per_s, round(target, 1), safety_factor, images_per_request)
