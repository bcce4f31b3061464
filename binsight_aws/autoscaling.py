"""``autoscale`` and deploy's autoscaling: target tracking of an endpoint variant with Application Auto Scaling.

The variant ``endpoint/<name>/variant/AllTraffic`` is registered as a scalable target (its
``DesiredInstanceCount`` between the min and max instances) with one target-tracking policy on
``SageMakerVariantInvocationsPerInstance``: CloudWatch's average invocations per instance per
minute. Application Auto Scaling uses its service-linked role, so no role is passed.

SageMaker refuses an UpdateEndpoint that changes the instance type of an autoscaled variant, so
deploy lifts the autoscaling first (and puts it back if the update rolls back); an update that
keeps the type keeps it. ``delete-endpoint`` removes it before deleting the endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from binsight_aws.configs import AutoscaleConfig, DeployConfig
from binsight_aws.endpoint import VARIANT, describe_endpoint
from binsight_aws.scaling_options import ScalingPlan
from binsight_aws.session import AwsClients
from binsight_aws.validate import InputError
from training.log import Log, print_line

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
POLICY_NAME = "binsight-invocations-per-instance"
EXIT_OK = 0


def resource_id(endpoint: str, variant: str = VARIANT) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def register_request(endpoint: str, plan: ScalingPlan) -> dict[str, Any]:
    return {
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint),
        "ScalableDimension": DIMENSION,
        "MinCapacity": plan.min_instances,
        "MaxCapacity": plan.max_instances,
    }


def policy_request(endpoint: str, plan: ScalingPlan) -> dict[str, Any]:
    return {
        "PolicyName": POLICY_NAME,
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint),
        "ScalableDimension": DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": plan.target_invocations,
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleInCooldown": plan.scale_in_cooldown_s,
            "ScaleOutCooldown": plan.scale_out_cooldown_s,
        },
    }


@dataclass(frozen=True)
class ScalingState:
    """An endpoint's registered autoscaling: the scalable target and its policies."""

    min_instances: int
    max_instances: int
    policies: list[dict[str, Any]] = field(default_factory=list)

    def lines(self, endpoint: str) -> list[str]:
        out = [f"autoscaling: {endpoint} min_instances: {self.min_instances} max_instances: {self.max_instances}"]
        for policy in self.policies:
            tracking = policy.get("TargetTrackingScalingPolicyConfiguration") or {}
            metric = (tracking.get("PredefinedMetricSpecification") or {}).get("PredefinedMetricType", "custom")
            out.append(
                f"scaling_policy: {policy['PolicyName']} type: {policy['PolicyType']} metric: {metric} "
                f"target: {tracking.get('TargetValue')} scale_in_cooldown_s: {tracking.get('ScaleInCooldown')} "
                f"scale_out_cooldown_s: {tracking.get('ScaleOutCooldown')}"
            )
        return out


def describe_scaling(client: Any, endpoint: str) -> ScalingState | None:
    """The endpoint variant's autoscaling, or ``None`` when it has none."""
    rid = resource_id(endpoint)
    targets = client.describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[rid], ScalableDimension=DIMENSION
    )["ScalableTargets"]
    if not targets:
        return None
    policies = client.describe_scaling_policies(
        ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION
    )["ScalingPolicies"]
    policies = [p for p in policies if p.get("ResourceId") == rid]
    return ScalingState(targets[0]["MinCapacity"], targets[0]["MaxCapacity"], policies)


def apply_scaling(client: Any, endpoint: str, plan: ScalingPlan, log: Log = print_line) -> None:
    """Register (or update) the scalable target, then put the policy; both calls are upserts."""
    if plan.derived_from is not None:
        log(plan.derived_from.log_line())
    client.register_scalable_target(**register_request(endpoint, plan))
    client.put_scaling_policy(**policy_request(endpoint, plan))
    log(plan.log_line())


def remove_scaling(client: Any, endpoint: str, log: Log = print_line) -> ScalingState | None:
    """Delete the policies and deregister the target; returns what was removed (``None``: nothing was)."""
    state = describe_scaling(client, endpoint)
    if state is None:
        return None
    for policy in state.policies:
        client.delete_scaling_policy(
            PolicyName=policy["PolicyName"],
            ServiceNamespace=NAMESPACE,
            ResourceId=resource_id(endpoint),
            ScalableDimension=DIMENSION,
        )
        log(f"deleted_scaling_policy: {policy['PolicyName']}")
    client.deregister_scalable_target(
        ServiceNamespace=NAMESPACE, ResourceId=resource_id(endpoint), ScalableDimension=DIMENSION
    )
    log(f"deregistered_scalable_target: {resource_id(endpoint)}")
    return state


def restore_scaling(client: Any, endpoint: str, state: ScalingState, log: Log = print_line) -> None:
    """Put back what :func:`remove_scaling` removed (same range, same policies)."""
    client.register_scalable_target(
        ServiceNamespace=NAMESPACE,
        ResourceId=resource_id(endpoint),
        ScalableDimension=DIMENSION,
        MinCapacity=state.min_instances,
        MaxCapacity=state.max_instances,
    )
    for policy in state.policies:
        kind = policy["PolicyType"]
        body_key = f"{'TargetTracking' if kind == 'TargetTrackingScaling' else 'StepScaling'}ScalingPolicyConfiguration"
        client.put_scaling_policy(
            PolicyName=policy["PolicyName"],
            ServiceNamespace=NAMESPACE,
            ResourceId=resource_id(endpoint),
            ScalableDimension=DIMENSION,
            PolicyType=kind,
            **{body_key: policy[body_key]},
        )
    log(f"autoscaling_restored: {endpoint} min_instances: {state.min_instances} max_instances: {state.max_instances}")


def variant_instance_type(sagemaker: Any, description: dict[str, Any]) -> str:
    """The instance type the endpoint's current config gives its variant."""
    variants = sagemaker.describe_endpoint_config(EndpointConfigName=description["EndpointConfigName"])[
        "ProductionVariants"
    ]
    for variant in variants:
        if variant["VariantName"] == VARIANT:
            return variant["InstanceType"]
    raise InputError(
        f"endpoint {description['EndpointName']} has no variant {VARIANT} (not deployed by binsight-aws); "
        "its autoscaling is not managed here"
    )


def current_count(description: dict[str, Any]) -> int:
    """The variant's instance count now (DescribeEndpoint), 1 when it does not say."""
    for variant in description.get("ProductionVariants") or []:
        if variant.get("VariantName") == VARIANT and variant.get("CurrentInstanceCount"):
            return int(variant["CurrentInstanceCount"])
    return 1


class DeployScaling:
    """deploy's part: check before anything changes, lift before a type-changing update, set once InService."""

    def __init__(self, config: DeployConfig, clients: AwsClients, log: Log = print_line) -> None:
        self.config, self.log = config, log
        self.client = clients.client("application-autoscaling")
        self.sagemaker = clients.client("sagemaker")
        self.lifted: ScalingState | None = None
        self.must_lift = self.keeps = False

    def check(self, existing: dict[str, Any] | None) -> None:
        """Raises :class:`InputError` for an update SageMaker would refuse, before anything is created."""
        if existing is None or getattr(self.config, "serverless", False):
            return  # serverless: no instances to scale (serverless.check_switch refuses real-time -> serverless)
        state = describe_scaling(self.client, self.config.endpoint_name)
        if state is None:
            return
        old_type = variant_instance_type(self.sagemaker, existing)
        self.must_lift = old_type != self.config.instance_type
        self.keeps = not self.must_lift
        if self.must_lift and not self.config.autoscaling:
            raise InputError(
                f"endpoint {self.config.endpoint_name} autoscales {state.min_instances}-{state.max_instances} "
                f"instances of {old_type}; moving it to {self.config.instance_type} lifts that autoscaling "
                "(SageMaker refuses the update otherwise): restate it with --max-instances (and --min-instances, "
                "--target-invocations), or remove it first with autoscale --remove"
            )
        self.log(
            f"autoscaling_found: {self.config.endpoint_name} min_instances: {state.min_instances} "
            f"max_instances: {state.max_instances} action: {'lift for the update' if self.must_lift else 'keep'}"
        )

    def before_update(self) -> dict[str, Any]:
        """Lift the autoscaling a type change would break; returns UpdateEndpoint's extra arguments.

        An update that keeps the autoscaling keeps the instance count it scaled to, unless --instance-count
        is given: the new config's InitialInstanceCount would otherwise drop a scaled-out endpoint to it
        (at its peak, for minutes, until autoscaling scales out again).
        """
        if self.must_lift:
            self.lifted = remove_scaling(self.client, self.config.endpoint_name, self.log)
        elif self.keeps and "instance_count" not in self.config.model_fields_set:
            self.log("instance_count: kept (RetainAllVariantProperties; the autoscaled count stays through the update)")
            return {"RetainAllVariantProperties": True}
        return {}

    def after_ready(self) -> None:
        if self.config.autoscaling:
            plan = self.config.scaling_plan(self.config.instance_type, self.config.instance_count)
            apply_scaling(self.client, self.config.endpoint_name, plan, self.log)

    def after_failure(self) -> None:
        """The update rolled back to the old instance type: its autoscaling comes back too."""
        if self.lifted is not None:
            restore_scaling(self.client, self.config.endpoint_name, self.lifted, self.log)


def run(config: AutoscaleConfig, log: Log = print_line, clients: AwsClients | None = None) -> int:
    """The ``autoscale`` command: show, set or remove an existing endpoint's autoscaling."""
    clients = clients or AwsClients.for_command(config)
    sagemaker = clients.client("sagemaker")
    client = clients.client("application-autoscaling")
    name = config.endpoint_name
    existing = describe_endpoint(sagemaker, name)
    if existing is None:
        raise InputError(f"there is no endpoint {name}")
    if config.remove:
        if remove_scaling(client, name, log) is None:
            log(f"autoscaling: {name} none (nothing to remove)")
        return EXIT_OK
    if config.autoscaling:
        if existing["EndpointStatus"] != "InService":
            raise InputError(f"endpoint {name} is {existing['EndpointStatus']}; autoscaling needs it InService")
        try:
            plan = config.scaling_plan(variant_instance_type(sagemaker, existing), default_min=current_count(existing))
        except ValueError as exc:
            raise InputError(str(exc)) from None
        apply_scaling(client, name, plan, log)
    state = describe_scaling(client, name)
    for line in state.lines(name) if state else [f"autoscaling: {name} none (fixed instance count)"]:
        log(line)
    return EXIT_OK
