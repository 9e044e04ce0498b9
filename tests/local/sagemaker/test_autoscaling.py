"""Application Auto Scaling for endpoint variants and UpdateEndpointWeightsAndCapacities, reached
only through boto3's sagemaker, sagemaker-runtime and application-autoscaling clients. The service
runs with compressed autoscaling time (--autoscaling-period 0.5: the high alarm's 3 periods are
1.5 s, the low alarm's 15 periods 7.5 s, a 300 s cooldown 2.5 s)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from llama_operator.local.stack import LocalStack
from sagemaker_helpers import ECHO_IMAGE, ROLE, compressed_stack, unique, validated, wait_endpoint

PERIOD = 0.5
DIMENSION = "sagemaker:variant:DesiredInstanceCount"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):  # this module's own service: compressed autoscaling time
    with compressed_stack(tmp_path_factory.mktemp("sm-as-state"), PERIOD) as s:
        yield s


def _endpoint(sm, base: str, count: int = 1, instance_type: str = "ml.g5.2xlarge", wait: bool = True) -> str:
    sm.create_model(ModelName=f"{base}-m", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": ECHO_IMAGE})
    _config(sm, f"{base}-c", f"{base}-m", count, instance_type)
    arn = sm.create_endpoint(EndpointName=base, EndpointConfigName=f"{base}-c")["EndpointArn"]
    if wait:
        assert wait_endpoint(sm, base)["EndpointStatus"] == "InService"
    return arn


def _config(sm, name: str, model: str, count: int = 1, instance_type: str = "ml.g5.2xlarge") -> None:
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": model, "InstanceType": instance_type,
        "InitialInstanceCount": count}])


def _rid(endpoint: str, variant: str = "AllTraffic") -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def _target(rid: str, **extra) -> dict:
    return {"ServiceNamespace": "sagemaker", "ResourceId": rid, "ScalableDimension": DIMENSION, **extra}


def _policy(rid: str, name: str = "invocations", target: float = 30.0, **config) -> dict:
    return _target(rid, PolicyName=name, PolicyType="TargetTrackingScaling",
                   TargetTrackingScalingPolicyConfiguration={
                       "TargetValue": target,
                       "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                       **config})


def _code(call, *args, **kwargs) -> tuple[str, str]:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as err:
        call(*args, **kwargs)
    return err.value.response["Error"]["Code"], err.value.response["Error"]["Message"]


def _variant(sm, name: str) -> dict:
    return sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]


def _pids(rt, name: str, n: int = 30) -> set[int]:
    return {json.loads(rt.invoke_endpoint(EndpointName=name, Body=b"{}", ContentType="application/json")
                       ["Body"].read())["pid"] for _ in range(n)}


def _wait_count(sm, name: str, count: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        d = sm.describe_endpoint(EndpointName=name)
        v = d["ProductionVariants"][0]
        if d["EndpointStatus"] == "InService" and v["CurrentInstanceCount"] == count:
            return d
        assert time.monotonic() < deadline, f"{name}: {d['EndpointStatus']} {v}"
        time.sleep(0.1)


def test_update_weights_and_capacities_starts_and_stops_servers(sm, rt, events):
    name = unique("uwc")
    arn = _endpoint(sm, name)
    assert len(_pids(rt, name, 5)) == 1

    resp = sm.update_endpoint_weights_and_capacities(EndpointName=name, DesiredWeightsAndCapacities=[
        {"VariantName": "AllTraffic", "DesiredInstanceCount": 3}])
    assert resp["EndpointArn"] == arn
    d = sm.describe_endpoint(EndpointName=name)
    if d["EndpointStatus"] == "Updating":  # the new servers are starting
        assert d["ProductionVariants"][0]["DesiredInstanceCount"] == 3
        assert d["ProductionVariants"][0]["CurrentInstanceCount"] < 3
    v = _wait_count(sm, name, 3, 30)["ProductionVariants"][0]
    assert v["DesiredInstanceCount"] == 3
    assert len(_pids(rt, name)) == 3  # invocations spread over three processes

    sm.update_endpoint_weights_and_capacities(EndpointName=name, DesiredWeightsAndCapacities=[
        {"VariantName": "AllTraffic", "DesiredInstanceCount": 1, "DesiredWeight": 2.0}])
    v = _wait_count(sm, name, 1, 30)["ProductionVariants"][0]
    assert v["DesiredInstanceCount"] == 1 and v["CurrentWeight"] == 2.0
    assert len(_pids(rt, name, 10)) == 1

    deadline = time.monotonic() + 15
    while True:
        got = events.for_arn(arn)
        statuses = [e["detail"]["EndpointStatus"] for e in got]
        if statuses.count("IN_SERVICE") >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert statuses == ["CREATING", "IN_SERVICE", "UPDATING", "IN_SERVICE", "UPDATING", "IN_SERVICE"]
    assert got[2]["detail"]["ProductionVariants"][0]["DesiredInstanceCount"] == 3
    assert got[3]["detail"]["ProductionVariants"][0]["CurrentInstanceCount"] == 3
    sm.delete_endpoint(EndpointName=name)


def test_update_weights_and_capacities_refusals(sm):
    name = unique("uwcno")
    assert _code(sm.update_endpoint_weights_and_capacities, EndpointName=name, DesiredWeightsAndCapacities=[
        {"VariantName": "AllTraffic", "DesiredInstanceCount": 2}]) == (
        "ValidationException", f'Could not find endpoint "arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name}".')
    _endpoint(sm, name, wait=False)
    code, message = _code(sm.update_endpoint_weights_and_capacities, EndpointName=name,
                          DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 2}])
    assert code == "ValidationException" and "in-progress" in message  # Creating: not InService yet
    assert wait_endpoint(sm, name)["EndpointStatus"] == "InService"
    code, message = _code(sm.update_endpoint_weights_and_capacities, EndpointName=name,
                          DesiredWeightsAndCapacities=[{"VariantName": "Nope", "DesiredInstanceCount": 2}])
    assert code == "ValidationException" and "Nope" in message
    code, message = _code(sm.update_endpoint_weights_and_capacities, EndpointName=name,
                          DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 50}])
    assert code == "ResourceLimitExceeded" and "endpoint usage" in message
    assert _code(sm.update_endpoint_weights_and_capacities, EndpointName=name,
                 DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 0}])[0] == \
        "ValidationException"
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    sm.delete_endpoint(EndpointName=name)


def test_scalable_target_and_policy_round_trip(sm, aas):
    name = unique("asrt")
    _endpoint(sm, name)
    rid = _rid(name)
    arn = aas.register_scalable_target(**_target(rid, MinCapacity=1, MaxCapacity=3))["ScalableTargetARN"]
    assert arn.startswith("arn:aws:application-autoscaling:us-east-1:123456789012:scalable-target/")
    put = aas.put_scaling_policy(**_policy(rid, ScaleInCooldown=60))
    assert put["PolicyARN"].startswith("arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:")
    assert put["PolicyARN"].endswith(f":resource/sagemaker/{rid}:policyName/invocations")
    alarms = sorted(a["AlarmName"] for a in put["Alarms"])
    assert len(alarms) == 2
    assert alarms[0].startswith(f"TargetTracking-{rid}-AlarmHigh-")
    assert alarms[1].startswith(f"TargetTracking-{rid}-AlarmLow-")
    assert all(a["AlarmARN"] == f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{a['AlarmName']}"
               for a in put["Alarms"])
    # an upsert by name: same ARN; DisableScaleIn drops the low alarm
    again = aas.put_scaling_policy(**_policy(rid, target=50.0, DisableScaleIn=True))
    assert again["PolicyARN"] == put["PolicyARN"] and len(again["Alarms"]) == 1

    # re-registering updates min/max and keeps the policy
    assert aas.register_scalable_target(**_target(rid, MaxCapacity=4))["ScalableTargetARN"] == arn
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"], t["ScalableTargetARN"]) for t in targets] == [(1, 4, arn)]
    assert "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint" in targets[0]["RoleARN"]
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]
    assert [p["PolicyName"] for p in policies] == ["invocations"]
    config = policies[0]["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 50.0 and config["DisableScaleIn"] is True
    assert policies[0]["PolicyType"] == "TargetTrackingScaling"
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", PolicyNames=["other"])["ScalingPolicies"] == []

    aas.delete_scaling_policy(**_target(rid, PolicyName="invocations"))
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"] == []
    aas.put_scaling_policy(**_policy(rid))
    aas.deregister_scalable_target(**_target(rid))
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"] == []
    sm.delete_endpoint(EndpointName=name)


def test_autoscaling_refusals(sm, aas):
    name = unique("asno")
    missing = _rid(unique("nothere"))
    code, message = _code(aas.register_scalable_target, **_target(missing, MinCapacity=1, MaxCapacity=2))
    assert code == "ValidationException" and "Could not find endpoint" in message
    _endpoint(sm, name)
    rid = _rid(name)
    assert _code(aas.register_scalable_target, **_target(_rid(name, "Nope"), MinCapacity=1, MaxCapacity=2))[0] == \
        "ValidationException"
    code, message = _code(aas.register_scalable_target, **_target(rid, MinCapacity=1))
    assert code == "ValidationException" and "MaxCapacity" in message  # a first registration needs both
    assert _code(aas.register_scalable_target, **_target(rid, MinCapacity=3, MaxCapacity=2))[0] == \
        "ValidationException"
    code, message = _code(aas.register_scalable_target, **_target(rid, MinCapacity=0, MaxCapacity=2))
    assert code == "ValidationException" and "at least 1" in message
    code, message = _code(aas.register_scalable_target, ServiceNamespace="ecs", ResourceId="service/c/s",
                          ScalableDimension="ecs:service:DesiredCount", MinCapacity=1, MaxCapacity=2)
    assert code == "ValidationException" and "'ecs'" in message
    code, message = _code(aas.register_scalable_target, ServiceNamespace="sagemaker",
                          ResourceId="inference-component/ic", MinCapacity=1, MaxCapacity=2,
                          ScalableDimension="sagemaker:inference-component:DesiredCopyCount")
    assert code == "ValidationException" and "Could not find inference component" in message  # none named ic
    code, message = _code(aas.register_scalable_target, **_target(f"endpoint/{name}", MinCapacity=1, MaxCapacity=2))
    assert code == "ValidationException" and f"endpoint/{name}" in message

    code, message = _code(aas.put_scaling_policy, **_policy(rid))
    assert code == "ObjectNotFoundException" and rid in message
    aas.register_scalable_target(**_target(rid, MinCapacity=1, MaxCapacity=2))
    code, message = _code(aas.put_scaling_policy, **_target(
        rid, PolicyName="steps", PolicyType="StepScaling", StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity", "StepAdjustments": [{"ScalingAdjustment": 1,
                                                                       "MetricIntervalLowerBound": 0}]}))
    assert code == "ValidationException" and "target tracking only" in message
    bad_metric = _policy(rid)
    bad_metric["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"] = {
        "PredefinedMetricType": "SageMakerVariantConcurrentRequestsPerModelHighResolution"}
    code, message = _code(aas.put_scaling_policy, **bad_metric)
    assert code == "ValidationException" and "SageMakerVariantInvocationsPerInstance" in message
    assert _code(aas.delete_scaling_policy, **_target(rid, PolicyName="nope"))[0] == "ObjectNotFoundException"
    aas.deregister_scalable_target(**_target(rid))
    assert _code(aas.deregister_scalable_target, **_target(rid))[0] == "ObjectNotFoundException"
    assert _code(aas.describe_scalable_targets, ServiceNamespace="sagemaker", NextToken="garbage")[0] == \
        "InvalidNextTokenException"
    sm.delete_endpoint(EndpointName=name)


def test_update_endpoint_guards_scaled_variants_and_retains_counts(sm, aas):
    name = unique("asup")
    _endpoint(sm, name)
    rid = _rid(name)
    aas.register_scalable_target(**_target(rid, MinCapacity=1, MaxCapacity=3))
    _config(sm, f"{name}-big", f"{name}-m", instance_type="ml.g5.12xlarge")
    code, message = _code(sm.update_endpoint, EndpointName=name, EndpointConfigName=f"{name}-big")
    assert code == "ValidationException" and "instance type" in message
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"

    sm.update_endpoint_weights_and_capacities(EndpointName=name, DesiredWeightsAndCapacities=[
        {"VariantName": "AllTraffic", "DesiredInstanceCount": 2}])
    _wait_count(sm, name, 2, 30)
    # a new model on the same instance type is allowed; RetainAllVariantProperties keeps 2 instances
    sm.create_model(ModelName=f"{name}-m2", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": ECHO_IMAGE})
    _config(sm, f"{name}-c2", f"{name}-m2", count=1)
    sm.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-c2", RetainAllVariantProperties=True)
    deadline = time.monotonic() + 30
    while (d := sm.describe_endpoint(EndpointName=name))["EndpointConfigName"] != f"{name}-c2":
        assert time.monotonic() < deadline and d["EndpointStatus"] != "Failed", d
        time.sleep(0.1)
    assert d["EndpointStatus"] == "InService"
    assert d["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    assert d["ProductionVariants"][0]["DesiredInstanceCount"] == 2

    sm.delete_endpoint(EndpointName=name)  # deregisters the target and its policies
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"] == []


def test_load_scales_out_and_idle_scales_in(sm, rt, aas, stack):
    name = unique("asload")
    _endpoint(sm, name)
    rid = _rid(name)
    aas.register_scalable_target(**_target(rid, MinCapacity=1, MaxCapacity=3))
    # 30 invocations a minute per instance: a few a second is far above it
    aas.put_scaling_policy(**_policy(rid, target=30.0, ScaleInCooldown=60, ScaleOutCooldown=60))

    stop, failures = threading.Event(), []

    def load():
        while not stop.is_set():
            try:
                rt.invoke_endpoint(EndpointName=name, Body=b"{}", ContentType="application/json")["Body"].read()
            except Exception as exc:  # noqa: BLE001 - asserted below
                failures.append(repr(exc))
            stop.wait(0.05)

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        d = _wait_count(sm, name, 3, 30)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == []  # scaling out never dropped an invocation
    assert d["ProductionVariants"][0]["DesiredInstanceCount"] == 3
    out = aas.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingActivities"]
    assert out[0]["Description"] == "Setting desired instance count to 3."
    assert "AlarmHigh" in out[0]["Cause"] and out[0]["Cause"].endswith("triggered policy invocations")
    deadline = time.monotonic() + 10
    while out[0]["StatusCode"] == "InProgress" and time.monotonic() < deadline:
        time.sleep(0.1)
        out = aas.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingActivities"]
    assert out[0]["StatusCode"] == "Successful" and out[0]["EndTime"] >= out[0]["StartTime"]

    # idle: 15 periods below 90% of the target, then back to MinCapacity
    d = _wait_count(sm, name, 1, 30)
    acts = aas.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingActivities"]
    assert acts[0]["Description"] == "Setting desired instance count to 1." and "AlarmLow" in acts[0]["Cause"]

    # a new minimum above the count scales to it at once
    aas.register_scalable_target(**_target(rid, MinCapacity=2))
    _wait_count(sm, name, 2, 30)
    acts = aas.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingActivities"]
    assert acts[0]["Cause"] == "minimum capacity was set to 2"

    # state survives a restart of the service
    stack.restart()
    sm2, aas2 = validated(stack.client("sagemaker")), validated(stack.client("application-autoscaling"))
    assert wait_endpoint(sm2, name)["EndpointStatus"] == "InService"
    assert _variant(sm2, name)["CurrentInstanceCount"] == 2  # it came back at its scaled count
    targets = aas2.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(2, 3)]
    assert len(aas2.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]) == 1

    sm2.delete_endpoint(EndpointName=name)
    assert aas2.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"] == []
    assert aas2.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"] == []


def test_scheduled_mode_scales_on_its_timetable(tmp_path):
    with LocalStack(tmp_path / "scheduled", extra_args=["--scheduled", "0.2"], autoscaling_period=PERIOD) as s:
        sm, aas = validated(s.client("sagemaker")), validated(s.client("application-autoscaling"))
        name = unique("assched")
        _endpoint(sm, name)
        sm.update_endpoint_weights_and_capacities(EndpointName=name, DesiredWeightsAndCapacities=[
            {"VariantName": "AllTraffic", "DesiredInstanceCount": 3}])
        d = sm.describe_endpoint(EndpointName=name)
        assert d["EndpointStatus"] == "Updating" and d["ProductionVariants"][0]["DesiredInstanceCount"] == 3
        _wait_count(sm, name, 3, 10)
        # a clamp goes through the same path
        aas.register_scalable_target(**_target(_rid(name), MinCapacity=1, MaxCapacity=2))
        _wait_count(sm, name, 2, 10)
        acts = aas.describe_scaling_activities(ServiceNamespace="sagemaker")["ScalingActivities"]
        assert acts[0]["Cause"] == "maximum capacity was set to 2"
