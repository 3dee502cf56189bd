"""Application Auto Scaling for an endpoint variant: a scalable target bounding its
instance count and a target-tracking policy, on invocations per instance for a real-time
endpoint, or on the queue per instance for an asynchronous one.

An asynchronous endpoint may scale to zero instances. Target tracking cannot bring it back:
with no instance there is no backlog per instance to track. So a variant allowed zero also
gets AWS's recipe for scaling from zero, a step-scaling policy that adds one instance,
set off by a CloudWatch alarm on HasBacklogWithoutCapacity (requests queued while the
endpoint has no instance).
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"  # per minute, averaged over the variant
POLICY_NAME = "maskrcnn-serve-invocations-per-instance"
SCALE_OUT_COOLDOWN_S = 60  # add instances soon after the load rises...
SCALE_IN_COOLDOWN_S = 300  # ...and remove them only once it has stayed low for a while

CLOUDWATCH_NAMESPACE = "AWS/SageMaker"
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"  # queued requests / instances
BACKLOG_POLICY_NAME = "maskrcnn-serve-backlog-per-instance"
# An async request waits in the queue anyway: a new instance needs minutes to start, and
# an emptied queue may fill again, so both directions wait longer than real-time ones.
BACKLOG_SCALE_OUT_COOLDOWN_S = 300
BACKLOG_SCALE_IN_COOLDOWN_S = 600
NO_CAPACITY_METRIC = "HasBacklogWithoutCapacity"  # 1 while requests wait and no instance runs
FROM_ZERO_POLICY_NAME = "maskrcnn-serve-has-backlog-without-capacity"
FROM_ZERO_COOLDOWN_S = 300
ALARM_PERIOD_S = 60
ALARM_PERIODS = 2  # two minutes in a row with a backlog and no instance


@dataclass(frozen=True)
class Scaling:
    """Instance-count bounds and the target to track: invocations per instance per minute,
    or (`on_backlog`, asynchronous endpoints) queued requests per instance."""

    min_instances: int
    max_instances: int
    target: float
    on_backlog: bool = False

    @property
    def from_zero(self) -> bool:
        return self.on_backlog and self.min_instances == 0

    def describe(self, endpoint_name: str) -> str:
        what = "queued requests per instance" if self.on_backlog else "invocations per instance per minute"
        line = f"autoscaling {self.min_instances}..{self.max_instances} instances, target {self.target:g} {what}"
        if self.from_zero:
            line += f"; from zero on the alarm {alarm_name(endpoint_name)}"
        return line


def resource_id(endpoint_name: str, variant: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant}"


def alarm_name(endpoint_name: str) -> str:
    """The scale-from-zero alarm's name: alarm names are unique per account and region,
    as endpoint names are."""
    return f"{endpoint_name}-{NO_CAPACITY_METRIC}"


def tracking_configuration(endpoint_name: str, scaling: Scaling) -> dict:
    """put_scaling_policy's TargetTrackingScalingPolicyConfiguration."""
    if not scaling.on_backlog:
        return {"TargetValue": float(scaling.target),
                "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
                "ScaleOutCooldown": SCALE_OUT_COOLDOWN_S, "ScaleInCooldown": SCALE_IN_COOLDOWN_S}
    return {"TargetValue": float(scaling.target),
            "CustomizedMetricSpecification": {
                "MetricName": BACKLOG_METRIC, "Namespace": CLOUDWATCH_NAMESPACE,
                "Dimensions": [{"Name": "EndpointName", "Value": endpoint_name}], "Statistic": "Average"},
            "ScaleOutCooldown": BACKLOG_SCALE_OUT_COOLDOWN_S, "ScaleInCooldown": BACKLOG_SCALE_IN_COOLDOWN_S}


def enable(aas, cloudwatch, endpoint_name: str, variant: str, scaling: Scaling) -> None:
    """Register the variant as a scalable target and attach the target-tracking policy (and,
    for an async variant allowed zero instances, the scale-from-zero policy and its alarm).
    The endpoint must be InService."""
    target = {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint_name, variant),
              "ScalableDimension": DIMENSION}
    aas.register_scalable_target(**target, MinCapacity=scaling.min_instances, MaxCapacity=scaling.max_instances)
    aas.put_scaling_policy(**target, PolicyName=BACKLOG_POLICY_NAME if scaling.on_backlog else POLICY_NAME,
                           PolicyType="TargetTrackingScaling",
                           TargetTrackingScalingPolicyConfiguration=tracking_configuration(endpoint_name, scaling))
    if scaling.from_zero:
        _enable_from_zero(aas, cloudwatch, endpoint_name, target)


def _enable_from_zero(aas, cloudwatch, endpoint_name: str, target: dict) -> None:
    policy_arn = aas.put_scaling_policy(
        **target, PolicyName=FROM_ZERO_POLICY_NAME, PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
            "Cooldown": FROM_ZERO_COOLDOWN_S,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        })["PolicyARN"]
    cloudwatch.put_metric_alarm(
        AlarmName=alarm_name(endpoint_name),
        AlarmDescription=f"Start an instance of {endpoint_name} when requests wait and none runs",
        MetricName=NO_CAPACITY_METRIC, Namespace=CLOUDWATCH_NAMESPACE, Statistic="Average",
        Dimensions=[{"Name": "EndpointName", "Value": endpoint_name}],
        Period=ALARM_PERIOD_S, EvaluationPeriods=ALARM_PERIODS, DatapointsToAlarm=ALARM_PERIODS,
        Threshold=1.0, ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="missing",
        AlarmActions=[policy_arn])


def disable(aas, cloudwatch, endpoint_name: str, variant: str) -> list[str]:
    """Delete the variant's scaling policies and deregister its scalable target, whoever
    registered them, and this tool's scale-from-zero alarm; a variant with none is left as
    it is. Returns what was removed."""
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
    # Application Auto Scaling deletes only the alarms it made itself (target tracking's).
    # The scale-from-zero alarm comes with its policy: without one, CloudWatch is not asked
    # (real-time endpoints need no CloudWatch permissions).
    alarm = alarm_name(endpoint_name)
    if any(p["PolicyName"] == FROM_ZERO_POLICY_NAME for p in policies) and \
            cloudwatch.describe_alarms(AlarmNames=[alarm])["MetricAlarms"]:
        cloudwatch.delete_alarms(AlarmNames=[alarm])
        removed.append(f"alarm {alarm}")
    return removed
