"""Inference components on the local SageMaker service, reached only through boto3's sagemaker,
sagemaker-runtime, application-autoscaling and cloudwatch clients: endpoints for components, copies
that really serve (tiny echo servers), managed instance scaling, rolling updates, scale to zero by
target tracking and back by a step scaling policy and a CloudWatch alarm, and a restart. The service
runs with compressed autoscaling time (--autoscaling-period 0.2: 15 periods of quiet are 3 s, a 300 s
cooldown 1 s, an alarm's 30 s Period 0.1 s)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from sagemaker_helpers import (
    ECHO_IMAGE,
    ROLE,
    compressed_stack,
    copies,
    unique,
    validated,
    wait_endpoint,
    wait_ic,
    wait_ic_gone,
)

PERIOD = 0.2
DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
HEADER_REQUIRED = ("Inference Component Name header is required for endpoints to which you plan to deploy inference "
                   "components. Please include Inference Component Name header or consider using SageMaker models.")
NO_CAPACITY = ("Inference Component has no capacity to process this request. ApplicationAutoScaling may be "
               "in-progress (if configured) or try to increase the capacity by invoking "
               "UpdateInferenceComponentRuntimeConfig API.")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):  # this module's own service: compressed autoscaling time
    with compressed_stack(tmp_path_factory.mktemp("sm-ic-state"), PERIOD) as s:
        yield s


def _model(sm, name: str, **env) -> str:
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": ECHO_IMAGE, "Environment": env})
    return name


def _ic_endpoint(sm, name: str, *, initial: int = 1, lo: int = 0, hi: int = 2) -> str:
    sm.create_endpoint_config(EndpointConfigName=name, ExecutionRoleArn=ROLE, ProductionVariants=[{
        "VariantName": "AllTraffic", "InstanceType": "ml.g5.2xlarge", "InitialInstanceCount": initial,
        "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": lo, "MaxInstanceCount": hi},
        "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    assert wait_endpoint(sm, name)["EndpointStatus"] == "InService"
    return name


def _request(name: str, endpoint: str, model: str, copies: int = 1, **spec) -> dict:
    # one accelerator each: one copy per ml.g5.2xlarge instance
    return {"InferenceComponentName": name, "EndpointName": endpoint, "VariantName": "AllTraffic",
            "Specification": {"ModelName": model,
                              "StartupParameters": {"ContainerStartupHealthCheckTimeoutInSeconds": 60},
                              "ComputeResourceRequirements": {"NumberOfAcceleratorDevicesRequired": 1,
                                                              "MinMemoryRequiredInMb": 1024}, **spec},
            "RuntimeConfig": {"CopyCount": copies}}


def _instances(sm, endpoint: str) -> tuple[int, int]:
    v = sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"][0]
    return v["CurrentInstanceCount"], v["DesiredInstanceCount"]


def _invoke(rt, endpoint: str, component: str | None = None, body: dict | None = None) -> dict:
    kwargs = {"InferenceComponentName": component} if component else {}
    resp = rt.invoke_endpoint(EndpointName=endpoint, Body=json.dumps(body or {}).encode(),
                              ContentType="application/json", **kwargs)
    assert resp["InvokedProductionVariant"] == "AllTraffic"
    return json.loads(resp["Body"].read())


def _error(call, *args, **kwargs) -> tuple[str, str, int]:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as err:
        call(*args, **kwargs)
    r = err.value.response
    return r["Error"]["Code"], r["Error"]["Message"], r["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture(scope="module")
def base(sm):
    """An endpoint for components with one serving component, and an endpoint with a model."""
    model = _model(sm, unique("icm"))
    endpoint = _ic_endpoint(sm, unique("icep"))
    serving = unique("icon")
    sm.create_inference_component(**_request(serving, endpoint, model))
    sm.create_endpoint_config(EndpointConfigName=f"{endpoint}-classic", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.g5.2xlarge",
        "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=f"{endpoint}-classic", EndpointConfigName=f"{endpoint}-classic")
    assert wait_endpoint(sm, f"{endpoint}-classic")["EndpointStatus"] == "InService"
    assert wait_ic(sm, serving)["InferenceComponentStatus"] == "InService"
    return {"model": model, "endpoint": endpoint, "classic": f"{endpoint}-classic", "serving": serving}


_CREATE_REFUSALS = {
    "endpoint missing": (lambda r, b: r.update(EndpointName="nothere"), 'Could not find endpoint "arn:aws:sagemaker'),
    "variant missing": (lambda r, b: r.update(VariantName="Nope"), "Variant Nope does not exist"),
    "endpoint with a model": (lambda r, b: r.update(EndpointName=b["classic"]), "hosts model"),
    "model missing": (lambda r, b: r["Specification"].update(ModelName="nomodel"), 'Could not find model "arn:'),
    "no requirements": (lambda r, b: r["Specification"].pop("ComputeResourceRequirements"), "MinMemoryRequiredInMb"),
    "copy count 0": (lambda r, b: r.update(RuntimeConfig={"CopyCount": 0}), "at least 1 copy"),
    "no copy count": (lambda r, b: r.pop("RuntimeConfig"), "RuntimeConfig.CopyCount is required"),
    "two accelerators": (lambda r, b: r["Specification"]["ComputeResourceRequirements"].update(
        NumberOfAcceleratorDevicesRequired=2), "2 accelerator devices (one ml.g5.2xlarge instance has 1)"),
    "too much memory": (lambda r, b: r["Specification"]["ComputeResourceRequirements"].update(
        MinMemoryRequiredInMb=64000), "64000 MiB of memory"),
    "duplicate": (lambda r, b: r.update(InferenceComponentName=b["serving"]),
                  "Cannot create already existing inference component"),
}


@pytest.mark.parametrize("case", list(_CREATE_REFUSALS))
def test_create_inference_component_refusals(sm, base, case):
    mutate, expected = _CREATE_REFUSALS[case]
    request = _request(unique("icno"), base["endpoint"], base["model"])
    mutate(request, base)
    code, message, status = _error(sm.create_inference_component, **request)
    assert (code, status) == ("ValidationException", 400) and expected in message, message


def test_endpoint_and_runtime_refusals(sm, rt, base):
    pv = {"VariantName": "AllTraffic", "InstanceType": "ml.g5.2xlarge", "InitialInstanceCount": 1}
    name = unique("iccfg")
    code, message, _ = _error(sm.create_endpoint_config, EndpointConfigName=name, ExecutionRoleArn=ROLE,
                              ProductionVariants=[pv, {**pv, "VariantName": "Other", "ModelName": base["model"]}])
    assert code == "ValidationException" and "all production variants" in message
    code, message, _ = _error(sm.create_endpoint_config, EndpointConfigName=name, ProductionVariants=[pv])
    assert code == "ValidationException" and "ExecutionRoleArn" in message
    code, message, _ = _error(sm.create_endpoint_config, EndpointConfigName=name, ExecutionRoleArn=ROLE,
                              ProductionVariants=[{**pv, "ManagedInstanceScaling": {
                                  "Status": "ENABLED", "MinInstanceCount": 2, "MaxInstanceCount": 3}}])
    assert code == "ValidationException" and "MinInstanceCount (2) <= InitialInstanceCount (1)" in message
    code, message, _ = _error(sm.create_endpoint_config, EndpointConfigName=name, ProductionVariants=[{
        **pv, "ModelName": base["model"], "ManagedInstanceScaling": {
            "Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 1}}])
    assert code == "ValidationException" and "inference components" in message
    described = sm.describe_endpoint(EndpointName=base["endpoint"])["ProductionVariants"][0]
    assert described["ManagedInstanceScaling"] == {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 2}
    assert described["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    config = sm.describe_endpoint_config(EndpointConfigName=base["endpoint"])
    assert config["ProductionVariants"][0]["ManagedInstanceScaling"]["MaxInstanceCount"] == 2
    assert "ModelName" not in config["ProductionVariants"][0] and config["ExecutionRoleArn"] == ROLE

    assert _error(_invoke, rt, base["endpoint"]) == ("ValidationError", HEADER_REQUIRED, 400)
    code, message, status = _error(_invoke, rt, base["classic"], base["serving"])
    assert (code, status) == ("ValidationError", 400) and "header is not allowed" in message
    code, message, _ = _error(_invoke, rt, base["endpoint"], "nothere")
    assert code == "ValidationError" and "nothere" in message
    assert _invoke(rt, base["classic"])["echo"] == {}  # an endpoint with a model is as it was

    code, message, _ = _error(sm.delete_endpoint, EndpointName=base["endpoint"])
    assert code == "ValidationException" and base["serving"] in message  # its components go first
    code, message, _ = _error(sm.describe_inference_component, InferenceComponentName="nothere")
    assert code == "ValidationException"
    assert message == 'Could not find inference component "arn:aws:sagemaker:us-east-1:123456789012:' \
                      'inference-component/nothere".'
    code, message, _ = _error(sm.update_endpoint_weights_and_capacities, EndpointName=base["endpoint"],
                              DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 2}])
    assert code == "ValidationException" and "UpdateInferenceComponentRuntimeConfig" in message


def test_copies_follow_runtime_config_and_instances_followcopies(sm, rt, base, events):
    endpoint = _ic_endpoint(sm, unique("icrt"))
    got = events.for_arn(sm.describe_endpoint(EndpointName=endpoint)["EndpointArn"],
                         until=lambda e: e["detail"]["EndpointStatus"] == "IN_SERVICE")
    assert [e["detail"]["EndpointStatus"] for e in got] == ["CREATING", "IN_SERVICE"]
    assert got[1]["detail"]["ProductionVariants"][0]["CurrentInstanceCount"] == 1  # empty until components come
    name = unique("icrt")
    arn = sm.create_inference_component(**_request(name, endpoint, base["model"]),
                                        Tags=[{"Key": "owner", "Value": "tests"}])["InferenceComponentArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:123456789012:inference-component/{name}"
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "owner", "Value": "tests"}]
    d = sm.describe_inference_component(InferenceComponentName=name)
    assert d["InferenceComponentStatus"] == "Creating" or d["RuntimeConfig"]["CurrentCopyCount"] == 1
    d = wait_ic(sm, name, copies(1))
    assert d["RuntimeConfig"] == {"DesiredCopyCount": 1, "CurrentCopyCount": 1}
    assert d["Specification"]["ModelName"] == base["model"] and d["EndpointName"] == endpoint
    assert d["Specification"]["ComputeResourceRequirements"]["MinMemoryRequiredInMb"] == 1024
    assert _invoke(rt, endpoint, name, {"q": 1})["echo"] == {"q": 1}
    assert _instances(sm, endpoint) == (1, 1)

    listed = sm.list_inference_components(EndpointNameEquals=endpoint)["InferenceComponents"]
    assert [(i["InferenceComponentName"], i["InferenceComponentStatus"]) for i in listed] == [(name, "InService")]
    assert sm.list_inference_components(NameContains=name, StatusEquals="Failed")["InferenceComponents"] == []
    page = sm.list_inference_components(MaxResults=1, SortBy="Name", SortOrder="Ascending")
    assert len(page["InferenceComponents"]) == 1 and "NextToken" in page

    # two copies need two instances: managed instance scaling adds one
    sm.update_inference_component_runtime_config(InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": 2})
    assert sm.describe_inference_component(InferenceComponentName=name)["InferenceComponentStatus"] in (
        "Updating", "InService")
    wait_ic(sm, name, copies(2))
    assert _instances(sm, endpoint) == (2, 2)
    pids = {_invoke(rt, endpoint, name)["pid"] for _ in range(12)}
    assert len(pids) == 2  # both copies take traffic
    # a third copy fits nowhere below MaxInstanceCount 2: it stays unplaced
    sm.update_inference_component_runtime_config(InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": 3})
    d = wait_ic(sm, name)
    assert d["RuntimeConfig"] == {"DesiredCopyCount": 3, "CurrentCopyCount": 2} and "FailureReason" not in d
    assert _instances(sm, endpoint) == (2, 2)

    # zero copies: the instances go (MinInstanceCount 0) and invocations find no capacity
    sm.update_inference_component_runtime_config(InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": 0})
    wait_ic(sm, name, copies(0))
    assert _instances(sm, endpoint) == (0, 0)
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService"
    assert _error(_invoke, rt, endpoint, name) == ("ValidationError", NO_CAPACITY, 400)
    sm.update_inference_component_runtime_config(InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": 1})
    wait_ic(sm, name, copies(1))
    assert _instances(sm, endpoint) == (1, 1)
    assert _invoke(rt, endpoint, name)["echo"] == {}
    sm.delete_inference_component(InferenceComponentName=name)
    wait_ic_gone(sm, name)
    sm.delete_endpoint(EndpointName=endpoint)


def test_without_managed_instance_scaling_the_instance_count_stays(sm, rt, base):
    endpoint = unique("icfixed")
    sm.create_endpoint_config(EndpointConfigName=endpoint, ExecutionRoleArn=ROLE, ProductionVariants=[{
        "VariantName": "AllTraffic", "InstanceType": "ml.g5.2xlarge", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=endpoint)
    assert wait_endpoint(sm, endpoint)["EndpointStatus"] == "InService"
    name = unique("icfixed")
    sm.create_inference_component(**_request(name, endpoint, base["model"]))
    wait_ic(sm, name, copies(1))
    sm.update_inference_component_runtime_config(InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": 2})
    d = wait_ic(sm, name)
    assert d["RuntimeConfig"] == {"DesiredCopyCount": 2, "CurrentCopyCount": 1}  # no room for a second copy
    sm.update_inference_component_runtime_config(InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": 0})
    wait_ic(sm, name, copies(0))
    assert _instances(sm, endpoint) == (1, 1)
    sm.delete_inference_component(InferenceComponentName=name)
    wait_ic_gone(sm, name)
    sm.delete_endpoint(EndpointName=endpoint)


def test_update_replaces_copies_and_rolls_back_a_failing_model(stack, sm, rt, base):
    endpoint = _ic_endpoint(sm, unique("icup"), hi=3)
    name = unique("icup")
    sm.create_inference_component(**_request(name, endpoint, base["model"]))
    wait_ic(sm, name, copies(1))
    assert _invoke(rt, endpoint, name)["version"] == "v1"

    # all at once (no DeploymentConfig): two new copies beside the old one, on three instances
    v2 = _model(sm, unique("icm2"), ECHO_VERSION="v2")
    sm.update_inference_component(InferenceComponentName=name, Specification={"ModelName": v2},
                                  RuntimeConfig={"CopyCount": 2})
    d = wait_ic(sm, name, lambda d: d["InferenceComponentStatus"] == "InService" and
                 d["Specification"]["ModelName"] == v2)
    assert d["RuntimeConfig"]["CurrentCopyCount"] == 2 and "FailureReason" not in d
    assert {_invoke(rt, endpoint, name)["version"] for _ in range(6)} == {"v2"}
    assert _instances(sm, endpoint) == (2, 2)  # the old copy's instance went once it drained

    # one copy at a time needs one spare instance only; a container over the model's (its environment)
    rolling = {"RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "COPY_COUNT", "Value": 1},
                                       "WaitIntervalInSeconds": 0}}
    sm.update_inference_component(InferenceComponentName=name, DeploymentConfig=rolling, Specification={
        "Container": {"Image": ECHO_IMAGE, "Environment": {"ECHO_VERSION": "v3"}}})
    d = wait_ic(sm, name, lambda d: d["InferenceComponentStatus"] == "InService" and "Container" in d["Specification"])
    assert d["Specification"]["Container"]["DeployedImage"]["SpecifiedImage"] == ECHO_IMAGE
    assert d["Specification"]["ModelName"] == v2 and "FailureReason" not in d
    assert d["LastDeploymentConfig"] == rolling
    assert {_invoke(rt, endpoint, name)["version"] for _ in range(6)} == {"v3"}
    assert _instances(sm, endpoint) == (2, 2)

    # a model that fails its ping: rolled back, the old copies serve on
    bad = _model(sm, unique("icbad"), ECHO_FAIL_PING="1")
    sm.update_inference_component(InferenceComponentName=name, Specification={"ModelName": bad},
                                  DeploymentConfig=rolling)
    d = wait_ic(sm, name, lambda d: d["InferenceComponentStatus"] == "InService" and "FailureReason" in d)
    assert "ping health check" in d["FailureReason"] and "ping refused on purpose" in d["FailureReason"]
    assert d["Specification"]["ModelName"] == v2 and d["RuntimeConfig"]["CurrentCopyCount"] == 2  # rolled back
    assert _invoke(rt, endpoint, name)["version"] == "v3"
    logs = subprocess.run([sys.executable, "-m", "llama_operator", "logs", name, "--inference-component",
                           "--state-dir", str(stack.state_dir)], capture_output=True, text=True, check=True).stdout
    assert "ping refused on purpose" in logs  # the failed copy's log, beside the serving ones
    # all at once, two more copies do not fit below MaxInstanceCount 3: rolled back too
    sm.update_inference_component(InferenceComponentName=name, Specification={"ModelName": base["model"]})
    d = wait_ic(sm, name, lambda d: d["InferenceComponentStatus"] == "InService" and "FailureReason" in d)
    assert "insufficient capacity" in d["FailureReason"] and d["Specification"]["ModelName"] == v2
    assert _instances(sm, endpoint) == (2, 2)
    assert _invoke(rt, endpoint, name)["version"] == "v3"
    sm.delete_inference_component(InferenceComponentName=name)
    wait_ic_gone(sm, name)
    sm.delete_endpoint(EndpointName=endpoint)


def test_scale_to_zero_when_idle_and_wake_up_on_a_failed_invocation(stack, sm, rt, aas, base):
    endpoint = _ic_endpoint(sm, unique("iczero"))
    name = unique("iczero")
    sm.create_inference_component(**_request(name, endpoint, base["model"]))
    wait_ic(sm, name, copies(1))
    rid = f"inference-component/{name}"
    target = {"ServiceNamespace": "sagemaker", "ResourceId": rid, "ScalableDimension": DIMENSION}
    aas.register_scalable_target(**target, MinCapacity=0, MaxCapacity=2)
    tracking = aas.put_scaling_policy(**target, PolicyName="concurrency", PolicyType="TargetTrackingScaling",
                                      TargetTrackingScalingPolicyConfiguration={
                                          "PredefinedMetricSpecification": {"PredefinedMetricType":
                                              "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"},
                                          "TargetValue": 5, "ScaleInCooldown": 300, "ScaleOutCooldown": 300})
    assert len(tracking["Alarms"]) == 2
    aas.put_scaling_policy(**target, PolicyName="invocations", PolicyType="TargetTrackingScaling",
                           TargetTrackingScalingPolicyConfiguration={
                               "PredefinedMetricSpecification": {"PredefinedMetricType":
                                                                 "SageMakerInferenceComponentInvocationsPerCopy"},
                               "TargetValue": 100, "ScaleInCooldown": 300})
    step = aas.put_scaling_policy(**target, PolicyName="wake-up", PolicyType="StepScaling",
                                  StepScalingPolicyConfiguration={
                                      "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Maximum",
                                      "Cooldown": 60, "StepAdjustments": [{"MetricIntervalLowerBound": 0,
                                                                          "ScalingAdjustment": 1}]})
    cw = stack.client("cloudwatch")
    alarm = f"{name}-no-capacity"
    cw.put_metric_alarm(AlarmName=alarm, AlarmActions=[step["PolicyARN"]], MetricName="NoCapacityInvocationFailures",
                        Namespace="AWS/SageMaker", Statistic="Maximum",
                        Dimensions=[{"Name": "InferenceComponentName", "Value": name}], Period=30,
                        EvaluationPeriods=1, DatapointsToAlarm=1, Threshold=1,
                        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="missing")
    bad_step = dict(target, PolicyName="bad", PolicyType="StepScaling", StepScalingPolicyConfiguration={
        "AdjustmentType": "ChangeInCapacity", "StepAdjustments": [
            {"MetricIntervalLowerBound": 0, "MetricIntervalUpperBound": 1, "ScalingAdjustment": 1},
            {"MetricIntervalLowerBound": 2, "ScalingAdjustment": 2}]})
    code, message, _ = _error(aas.put_scaling_policy, **bad_step)
    assert code == "ValidationException" and "gap" in message

    # idle: 90 ten-second datapoints below target (15 periods), then MinCapacity 0; the instances follow
    wait_ic(sm, name, copies(0), timeout=20)
    deadline = time.monotonic() + 5
    while _instances(sm, endpoint) != (0, 0):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    acts = aas.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingActivities"]
    assert acts[0]["Description"] == "Setting desired copy count to 0." and "AlarmLow" in acts[0]["Cause"]

    # the first invocation fails and counts NoCapacityInvocationFailures: the alarm triggers the step policy
    assert _error(_invoke, rt, endpoint, name) == ("ValidationError", NO_CAPACITY, 400)
    deadline = time.monotonic() + 15
    while True:
        try:
            answer = _invoke(rt, endpoint, name, {"retry": True})
            break
        except Exception as exc:  # noqa: BLE001 - only no-capacity refusals while it wakes up
            assert NO_CAPACITY in str(exc) and time.monotonic() < deadline
            time.sleep(0.2)
    assert answer["echo"] == {"retry": True}
    assert _instances(sm, endpoint) == (1, 1)
    acts = aas.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingActivities"]
    woke = next(a for a in acts if a["Description"] == "Setting desired copy count to 1.")
    assert woke["Cause"] == f"monitor alarm {alarm} in state ALARM triggered policy wake-up"
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid,
                                             PolicyNames=["wake-up"])["ScalingPolicies"]
    assert [a["AlarmName"] for a in policies[0]["Alarms"]] == [alarm]

    # deleting the component deregisters its target; then the endpoint goes, and nothing is left
    sm.delete_inference_component(InferenceComponentName=name)
    wait_ic_gone(sm, name)
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"] == []
    assert sm.list_inference_components(EndpointNameEquals=endpoint)["InferenceComponents"] == []
    sm.delete_endpoint(EndpointName=endpoint)
    assert endpoint not in {e["EndpointName"] for e in _endpoints_after_delete(sm, endpoint)}


def _endpoints_after_delete(sm, endpoint: str, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        listed = sm.list_endpoints(NameContains=endpoint)["Endpoints"]
        if not listed or time.monotonic() > deadline:
            return listed
        time.sleep(0.1)


def test_concurrent_requests_scale_a_component_out(sm, rt, aas, base):
    endpoint = _ic_endpoint(sm, unique("icload"))
    name = unique("icload")
    sm.create_inference_component(**_request(name, endpoint, base["model"]))
    wait_ic(sm, name, copies(1))
    target = {"ServiceNamespace": "sagemaker", "ResourceId": f"inference-component/{name}",
              "ScalableDimension": DIMENSION}
    aas.register_scalable_target(**target, MinCapacity=1, MaxCapacity=2)
    aas.put_scaling_policy(**target, PolicyName="concurrency", PolicyType="TargetTrackingScaling",
                           TargetTrackingScalingPolicyConfiguration={
                               "PredefinedMetricSpecification": {"PredefinedMetricType":
                                   "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"},
                               "TargetValue": 0.05})  # any steady stream of requests is above it
    stop, failures = threading.Event(), []

    def load():
        while not stop.is_set():
            try:
                _invoke(rt, endpoint, name)
            except Exception as exc:  # noqa: BLE001 - asserted below
                failures.append(repr(exc))

    workers = [threading.Thread(target=load) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        wait_ic(sm, name, copies(2), timeout=20)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == []
    assert _instances(sm, endpoint) == (2, 2)
    acts = aas.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=target["ResourceId"])
    assert "AlarmHigh" in acts["ScalingActivities"][0]["Cause"]
    sm.delete_inference_component(InferenceComponentName=name)
    wait_ic_gone(sm, name)
    sm.delete_endpoint(EndpointName=endpoint)


def test_restart_keeps_a_component_serving(stack, base):
    endpoint = base["endpoint"]
    stack.restart()
    sm, rt = validated(stack.client("sagemaker")), validated(stack.client("sagemaker-runtime"))
    d = wait_ic(sm, base["serving"], copies(1))
    assert d["RuntimeConfig"] == {"DesiredCopyCount": 1, "CurrentCopyCount": 1}
    assert wait_endpoint(sm, endpoint)["EndpointStatus"] == "InService"
    assert _instances(sm, endpoint) == (1, 1)
    assert _invoke(rt, endpoint, base["serving"], {"after": "restart"})["echo"] == {"after": "restart"}
    sm.delete_inference_component(InferenceComponentName=base["serving"])
    wait_ic_gone(sm, base["serving"])
    sm.delete_endpoint(EndpointName=endpoint)


def test_unreachable_cloudwatch_does_not_stop_scaling(monkeypatch, caplog):
    from llama_operator.local.sagemaker import step_alarms

    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local-secret")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    alarms = step_alarms.StepAlarms("us-east-1", 1.0, lambda *_: 0)
    for _ in range(2):
        alarms._last_refresh = float("-inf")
        alarms.refresh({"arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:x"}, every=0)
    assert alarms.alarms == [] and alarms.due() == []
    assert sum("reading CloudWatch alarms failed" in r.message for r in caplog.records) == 1  # logged once
