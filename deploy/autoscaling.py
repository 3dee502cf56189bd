"""Application Auto Scaling for an endpoint variant: a scalable target bounding its
instance count, and a target-tracking policy on invocations per instance."""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"  # per minute, averaged over the variant
POLICY_NAME = "maskrcnn-serve-invocations-per-instance"
SCALE_OUT_COOLDOWN_S = 60  # add instances soon after the load rises...
SCALE_IN_COOLDOWN_S = 300  # ...and remove them only once it has stayed low for a while


@dataclass(frozen=True)
class Scaling:
    """Instance-count bounds and the invocations per instance per minute to track."""

    min_instances: int
    max_instances: int
    target_invocations: float


def resource_id(endpoint_name: str, variant: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant}"


def enable(aas, endpoint_name: str, variant: str, scaling: Scaling) -> None:
    """Register the variant as a scalable target and attach the target-tracking policy.
    The endpoint must be InService."""
    target = {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint_name, variant),
              "ScalableDimension": DIMENSION}
    aas.register_scalable_target(**target, MinCapacity=scaling.min_instances, MaxCapacity=scaling.max_instances)
    aas.put_scaling_policy(
        **target,
        PolicyName=POLICY_NAME,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(scaling.target_invocations),
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleOutCooldown": SCALE_OUT_COOLDOWN_S,
            "ScaleInCooldown": SCALE_IN_COOLDOWN_S,
        },
    )


def disable(aas, endpoint_name: str, variant: str) -> list[str]:
    """Delete the variant's scaling policies and deregister its scalable target, whoever
    registered them; a variant with none is left as it is. Returns what was removed."""
    rid = resource_id(endpoint_name, variant)
    removed = []
    policies = aas.describe_scaling_policies(ServiceNamespace=NAMESPACE, ResourceId=rid,
                                             ScalableDimension=DIMENSION)["ScalingPolicies"]
    for policy in policies:
        aas.delete_scaling_policy(ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION,
                                  PolicyName=policy["PolicyName"])
        removed.append(f"scaling policy {policy['PolicyName']}")
    targets = aas.describe_scalable_targets(ServiceNamespace=NAMESPACE, ResourceIds=[rid],
                                            ScalableDimension=DIMENSION)["ScalableTargets"]
    if targets:
        aas.deregister_scalable_target(ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION)
        removed.append(f"scalable target {rid}")
    return removed
