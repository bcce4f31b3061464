"""``deploy --serverless``: the serving image on SageMaker Serverless Inference, checked before any AWS call.

A pydantic mixin for :class:`binsight_aws.configs.DeployConfig` (no boto3, no ``configs`` import, so that
module can use it), the endpoint-config variant it turns into, and the one switch SageMaker refuses.

What SageMaker allows (Serverless Inference, "Update a serverless endpoint"):

* serverless -> serverless (memory, concurrency, provisioned concurrency added, changed or removed): UpdateEndpoint;
* serverless -> real-time: UpdateEndpoint with an instance-based endpoint config;
* real-time -> serverless: **not supported** by UpdateEndpoint; :func:`check_switch` says so before anything
  is created (delete the endpoint and deploy again, or deploy under a new name and move the clients).

The figures behind the defaults are measured by ``benchmarks/serverless_bench.py`` (README, "Serverless").
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from binsight_aws.validate import InputError
from training.log import Log

#: ProductionVariantServerlessConfig limits.
MEMORY_STEP_MB = 1024
MEMORY_MIN_MB, MEMORY_MAX_MB = 1024, 6144
CONCURRENCY_MIN, CONCURRENCY_MAX = 1, 200
#: Serverless endpoints take request bodies up to 4 MB (real-time: 6 MB); the container refuses larger ones
#: itself with a JSON 413 (SAGEMAKER_MAX_PAYLOAD_IN_MB, read by ``serve``).
PAYLOAD_LIMIT_MB = 4
PAYLOAD_ENV = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
#: One worker: every worker holds its own copy of the model, and serverless memory is what is billed.
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"
#: Peak memory of the serving container under load (cgroup peak, page cache included; resident memory was
#: 408 MB), measured with the image built here by benchmarks/serverless_bench.py (README "Serverless, Lambda
#: and batch": 4 concurrent requests, 12-megapixel photos), and the headroom over it. The default memory size
#: is the smallest allowed size at or above peak x headroom: a container over its memory is killed
#: mid-request, and more memory (which also brings more vCPU) is for the user to choose.
MEASURED_PEAK_MB = 450
MEMORY_HEADROOM = 1.5
DEFAULT_MAX_CONCURRENCY = 10


def memory_size_for(peak_rss_mb: float, headroom: float = MEMORY_HEADROOM) -> int:
    """The smallest serverless memory size (MB) at or above ``peak_rss_mb x headroom``, capped at 6144."""
    needed = peak_rss_mb * headroom
    steps = max(1, -(-int(needed) // MEMORY_STEP_MB))
    return min(MEMORY_MAX_MB, steps * MEMORY_STEP_MB)


DEFAULT_MEMORY_MB = memory_size_for(MEASURED_PEAK_MB)


class ServerlessOptions(BaseModel):
    """Serverless Inference: memory size, maximum and provisioned concurrency (ProductionVariantServerlessConfig)."""

    serverless: bool = Field(
        False, description="Deploy to SageMaker Serverless Inference (scales to zero, billed per request)"
    )
    memory_size_mb: int | None = Field(
        None,
        description=f"Serverless memory, {MEMORY_MIN_MB}-{MEMORY_MAX_MB} MB in {MEMORY_STEP_MB} MB steps "
        f"(default {DEFAULT_MEMORY_MB}: the measured peak memory with headroom; see README)",
    )
    max_concurrency: int | None = Field(
        None,
        description=f"Serverless: requests served at once, {CONCURRENCY_MIN}-{CONCURRENCY_MAX} "
        f"(default {DEFAULT_MAX_CONCURRENCY})",
    )
    provisioned_concurrency: int | None = Field(
        None, description="Serverless: concurrency kept warm (no cold starts, billed while idle); <= --max-concurrency"
    )

    @model_validator(mode="after")
    def _serverless_values(self) -> Any:
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("memory_size_mb", "max_concurrency", "provisioned_concurrency")
            if getattr(self, name) is not None
        ]
        if not self.serverless:
            if given:
                verb = "apply" if len(given) > 1 else "applies"
                raise ValueError(f"{', '.join(given)} {verb} to --serverless deployments only; add --serverless")
            return self
        memory = self.memory_size_mb if self.memory_size_mb is not None else DEFAULT_MEMORY_MB
        if not (MEMORY_MIN_MB <= memory <= MEMORY_MAX_MB and memory % MEMORY_STEP_MB == 0):
            allowed = ", ".join(str(m) for m in range(MEMORY_MIN_MB, MEMORY_MAX_MB + 1, MEMORY_STEP_MB))
            raise ValueError(f"--memory-size-mb {memory}: serverless memory is one of {allowed}")
        concurrency = self.max_concurrency if self.max_concurrency is not None else DEFAULT_MAX_CONCURRENCY
        if not CONCURRENCY_MIN <= concurrency <= CONCURRENCY_MAX:
            raise ValueError(
                f"--max-concurrency {concurrency}: serverless concurrency is {CONCURRENCY_MIN}-{CONCURRENCY_MAX}"
            )
        provisioned = self.provisioned_concurrency
        if provisioned is not None and not 1 <= provisioned <= concurrency:
            raise ValueError(f"--provisioned-concurrency {provisioned}: must be 1..--max-concurrency ({concurrency})")
        object.__setattr__(self, "memory_size_mb", memory)
        object.__setattr__(self, "max_concurrency", concurrency)
        self._no_instance_options()
        return self

    def _no_instance_options(self) -> None:
        """Instance options mean nothing on a serverless endpoint; one given explicitly is a mistake."""
        fields_set = self.model_fields_set
        instance = [
            f"--{name.replace('_', '-')}"
            for name in ("instance_type", "instance_count", "max_instances", "min_instances", "target_invocations")
            if name in fields_set and getattr(self, name, None) is not None
        ]
        if instance:
            verb = "apply" if len(instance) > 1 else "applies"
            raise ValueError(
                f"{', '.join(instance)} {verb} to instance-based endpoints; a serverless endpoint scales by "
                "itself up to --max-concurrency"
            )
        env = getattr(self, "env", None) or {}
        if PAYLOAD_ENV in env:
            try:
                payload = float(env[PAYLOAD_ENV])
            except ValueError:
                payload = None
            if payload is None or not 0 < payload <= PAYLOAD_LIMIT_MB:
                raise ValueError(
                    f"--env {PAYLOAD_ENV}={env[PAYLOAD_ENV]}: a serverless endpoint takes request bodies up to "
                    f"{PAYLOAD_LIMIT_MB} MB"
                )

    def serverless_config(self) -> dict[str, Any]:
        """ProductionVariantServerlessConfig of these options (only with ``--serverless``)."""
        config: dict[str, Any] = {"MemorySizeInMB": self.memory_size_mb, "MaxConcurrency": self.max_concurrency}
        if self.provisioned_concurrency is not None:
            config["ProvisionedConcurrency"] = self.provisioned_concurrency
        return config


def container_environment(config: Any) -> dict[str, str]:
    """The model's container environment: ``--env``, plus the serverless body limit and one worker."""
    env = dict(config.env or {})
    if getattr(config, "serverless", False):
        env.setdefault(PAYLOAD_ENV, str(PAYLOAD_LIMIT_MB))
        env.setdefault(WORKERS_ENV, "1")
    return env


def existing_kind(sagemaker: Any, existing: dict[str, Any]) -> str:
    """``serverless`` or ``real-time``: from DescribeEndpoint's variants (Current/DesiredServerlessConfig),
    else from the endpoint config."""
    variants = existing.get("ProductionVariants")
    if not variants:
        config = sagemaker.describe_endpoint_config(EndpointConfigName=existing["EndpointConfigName"])
        return "serverless" if any("ServerlessConfig" in v for v in config["ProductionVariants"]) else "real-time"
    serverless = any("CurrentServerlessConfig" in v or "DesiredServerlessConfig" in v for v in variants)
    return "serverless" if serverless else "real-time"


def check_switch(sagemaker: Any, config: Any, existing: dict[str, Any] | None, log: Log) -> None:
    """Before an update: refuse (:class:`InputError`) the switch UpdateEndpoint does not do, real-time ->
    serverless, before anything is uploaded or created; log a serverless -> real-time switch.

    A real-time deploy reads the previous kind only where DescribeEndpoint already says it: that switch is
    allowed either way.
    """
    if existing is None:
        return
    serverless = bool(getattr(config, "serverless", False))
    if not serverless and not existing.get("ProductionVariants"):
        return
    was = existing_kind(sagemaker, existing)
    now = "serverless" if serverless else "real-time"
    if was == "real-time" and now == "serverless":
        raise InputError(
            f"endpoint {config.endpoint_name} is a real-time (instance-based) endpoint, and SageMaker cannot update "
            "a real-time endpoint to a serverless one; delete-endpoint and deploy --serverless again, or deploy "
            "--serverless under a new --endpoint-name and move the clients to it"
        )
    log(f"endpoint_update: {config.endpoint_name} from: {was} to: {now}")


def variant_summary(config: Any) -> str:
    """The ``key: value`` words of the deployed variant, for the log."""
    if getattr(config, "serverless", False):
        line = f"serverless: memory_size_mb: {config.memory_size_mb} max_concurrency: {config.max_concurrency}"
        if config.provisioned_concurrency is not None:
            line += f" provisioned_concurrency: {config.provisioned_concurrency}"
        return line
    return f"instance_type: {config.instance_type} instance_count: {config.instance_count}"
