"""deployment.mode inferenceComponents end to end on the embedded default: the endpoint is an
instance pool with managed instance scaling and the model its inference component; idling scales
the copies, then the instances, to zero; the first request after that fails and wakes one copy
through the step-scaling alarm; a model change rolls the component; deleting the resource leaves no
component, scalable target, policy, alarm, endpoint, config or model. The local service runs with
one metric period a second (`--autoscaling-period 1`)."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError


from operator_harness import BUCKET, endpoint, owned, scaling_world, unique, wait_for

pytestmark = pytest.mark.slow

ROLE = "arn:aws:iam::123456789012:role/sagemaker-endpoint"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with scaling_world(tmp_path_factory, component_poll_seconds=0.5) as w:
        yield w


def status_of(kube, name: str) -> dict:
    return ((kube.get("llamaendpoints", "default", name) or {}).get("status")) or {}


def component_endpoint(name: str, **spec) -> dict:
    obj = endpoint(name, source={"s3Uri": f"s3://{BUCKET}/models/tiny/"}, role=ROLE)
    obj["spec"]["deployment"] = {"mode": "inferenceComponents", "waitIntervalSeconds": 0}
    obj["spec"].update(spec)
    return obj


def events_for(kube, name: str) -> list[tuple[str, str, str]]:
    return [(e.get("type"), e.get("reason"), e.get("message", ""))
            for e in kube.list("events", "default", api_version="v1")
            if e.get("involvedObject", {}).get("name") == name]


def serving(kube, name: str, copies: dict | None = None):
    def check():
        st = status_of(kube, name)
        ic = st.get("inferenceComponent") or {}
        ok = st.get("phase") == "InService" and ic.get("status") == "InService" and ic.get("modelName") == \
            st.get("modelName") and (copies is None or ic.get("copies") == copies)
        return st if ok else None
    return check


def invoke(rt, ep: str, component: str) -> bytes:
    return rt.invoke_endpoint(EndpointName=ep, InferenceComponentName=component, ContentType="application/json",
                              Body=b'{"inputs": "hi"}')["Body"].read()


def test_idle_scales_to_zero_a_request_wakes_it_and_deleting_leaves_nothing(world):
    kube, sm, aas, cw, rt = world["kube"], world["sm"], world["aas"], world["cw"], world["rt"]
    name = unique("zero")
    obj = kube.apply(component_endpoint(name, scaling={
        "minInstances": 0, "maxInstances": 2, "target": {"concurrentRequestsPerCopy": 1},
        "scaleInCooldownSeconds": 0, "scaleOutCooldownSeconds": 0}))
    st = wait_for(serving(kube, name, {"current": 1, "desired": 1}), 120, "component in service")
    ep, ic = st["endpointName"], st["inferenceComponent"]["name"]
    assert invoke(rt, ep, ic)
    config = sm.describe_endpoint_config(EndpointConfigName=st["endpointConfigName"])
    assert "ModelName" not in config["ProductionVariants"][0]
    assert sm.describe_inference_component(InferenceComponentName=ic)["Specification"]["ModelName"] == \
        st["modelName"]

    rid = f"inference-component/{ic}"
    st = wait_for(lambda: status_of(kube, name) if (status_of(kube, name).get("scaling") or {}).get("appliedHash")
                  else None, 30, "autoscaling applied")
    assert st["scaling"]["resourceId"] == rid
    (target,) = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 2)
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]
    assert sorted(p["PolicyType"] for p in policies) == ["StepScaling", "TargetTrackingScaling"]
    (alarm,) = cw.describe_alarms(AlarmNamePrefix=f"llama-operator-{ic}")["MetricAlarms"]
    step = next(p for p in policies if p["PolicyType"] == "StepScaling")
    assert alarm["MetricName"] == "NoCapacityInvocationFailures" and alarm["AlarmActions"] == [step["PolicyARN"]]

    # idle: the copies go to zero, then managed instance scaling empties the pool
    st = wait_for(lambda: status_of(kube, name) if (status_of(kube, name).get("inferenceComponent") or {}).get(
        "copies") == {"current": 0, "desired": 0} else None, 90, "zero copies")
    # (the Event follows the status write)
    wait_for(lambda: any(r == "ScaledIn" and "1 -> 0 copies" in m for _, r, m in events_for(kube, name)), 10,
             "a ScaledIn Event")
    wait_for(lambda: (status_of(kube, name).get("instances") or {}).get("current") == 0, 60, "zero instances")
    assert sm.describe_endpoint(EndpointName=ep)["ProductionVariants"][0].get("CurrentInstanceCount") == 0
    with pytest.raises(ClientError) as err:
        invoke(rt, ep, ic)
    assert "no capacity" in str(err.value).lower()

    # that failed request fires the alarm; the step policy adds a copy, and a retry answers
    started = time.monotonic()
    answer = wait_for(lambda: _try(rt, ep, ic), 90, "a request answered after waking")
    woke_in = time.monotonic() - started
    assert answer and woke_in < 90
    wait_for(serving(kube, name, {"current": 1, "desired": 1}), 30, "one copy in status")
    wait_for(lambda: any(r == "ScaledOut" and "0 -> 1 copies" in m for _, r, m in events_for(kube, name)), 10,
             "a ScaledOut Event")

    kube.delete("llamaendpoints", "default", name)
    wait_for(lambda: kube.get("llamaendpoints", "default", name) is None, 90, "resource gone")
    assert sm.list_inference_components(EndpointNameEquals=ep)["InferenceComponents"] == []
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"] == []
    assert cw.describe_alarms(AlarmNamePrefix=f"llama-operator-{ic}")["MetricAlarms"] == []
    assert owned(sm, obj["metadata"]["uid"]) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}


def _try(rt, ep: str, ic: str) -> bytes | None:
    try:
        return invoke(rt, ep, ic)
    except ClientError:
        return None


def test_a_model_change_rolls_the_component_and_the_pool_stays(world):
    kube, sm, rt = world["kube"], world["sm"], world["rt"]
    name = unique("roll")
    body = component_endpoint(name)
    uid = kube.apply(body)["metadata"]["uid"]
    first = wait_for(serving(kube, name, {"current": 1, "desired": 1}), 120, "component in service")
    ep, ic = first["endpointName"], first["inferenceComponent"]["name"]

    body["spec"]["environment"] = {"OPTION_NEW": "1"}  # a new model
    kube.apply(body)
    st = wait_for(lambda: (s := serving(kube, name)()) and s["modelName"] != first["modelName"] and s, 120,
                  "the component on the new model")
    assert st["endpointConfigName"] == first["endpointConfigName"]  # no blue/green of the pool
    assert invoke(rt, ep, ic)
    wait_for(lambda: first["modelName"] not in owned(sm, uid)["Models"], 30, "the old model collected")

    body["spec"]["environment"] = {"OPTION_NEW": "2"}  # another: its predecessor is newer than the pool
    kube.apply(body)
    third = wait_for(lambda: (s := serving(kube, name)()) and s["modelName"] not in (first["modelName"],
                                                                                    st["modelName"]) and s, 120,
                     "the component on the third model")
    wait_for(lambda: owned(sm, uid)["Models"] == [third["modelName"]], 30, "only the serving model left")

    # a new count is more copies of the same model (managed instance scaling adds the instance)
    body["spec"]["resources"]["instanceCount"] = 2
    kube.apply(body)
    st = wait_for(serving(kube, name, {"current": 2, "desired": 2}), 60, "two copies")
    assert st["modelName"] != first["modelName"] and st["endpointConfigName"] == first["endpointConfigName"]
    wait_for(lambda: status_of(kube, name).get("instances") == {"current": 2, "desired": 2}, 30,
             "a second instance for the second copy, in status")

    # the pool cannot change under its components: refused, and it keeps serving
    body["spec"]["resources"] = {**body["spec"]["resources"], "instanceType": "ml.g5.2xlarge"}
    kube.apply(body)
    wait_for(lambda: any(r == "ImmutableField" for _, r, _m in events_for(kube, name)), 30, "refused")
    assert invoke(rt, ep, ic)
    kube.delete("llamaendpoints", "default", name)
    wait_for(lambda: kube.get("llamaendpoints", "default", name) is None, 90, "resource gone")


def test_a_model_that_fails_is_rolled_back_and_a_fixed_spec_rolls_on(world):
    kube, rt = world["kube"], world["rt"]
    name = unique("rollback")
    body = component_endpoint(name)
    kube.apply(body)
    first = wait_for(serving(kube, name, {"current": 1, "desired": 1}), 120, "component in service")
    ep, ic = first["endpointName"], first["inferenceComponent"]["name"]

    body["spec"]["environment"] = {"STUB_FAIL": "1"}  # a model whose copies never pass /ping
    kube.apply(body)
    st = wait_for(lambda: (s := status_of(kube, name)).get("phase") == "Degraded" and s, 120, "Degraded")
    assert st["inferenceComponent"]["modelName"] == first["modelName"]  # the old model serves on
    assert st["inferenceComponent"]["failedModel"] != first["modelName"]
    assert "could not move to model" in st["failureReason"]
    assert invoke(rt, ep, ic)
    time.sleep(2)  # not tried again on its own
    assert status_of(kube, name)["inferenceComponent"]["modelName"] == first["modelName"]

    body["spec"]["environment"] = {"STUB_FAIL": None, "OPTION_FIXED": "1"}  # (apply merge-patches: null removes)
    kube.apply(body)
    fixed = wait_for(lambda: (s := serving(kube, name)()) and s["modelName"] not in (
        first["modelName"], st["inferenceComponent"]["failedModel"]) and s, 120, "the fixed model serving")
    assert "failedModel" not in fixed["inferenceComponent"] and "failureReason" not in fixed
    kube.delete("llamaendpoints", "default", name)
    wait_for(lambda: kube.get("llamaendpoints", "default", name) is None, 90, "resource gone")


def test_removing_scaling_deregisters_it_and_brings_the_copies_to_the_instance_count(world):
    kube, aas, cw = world["kube"], world["aas"], world["cw"]
    name = unique("unscale")
    body = component_endpoint(name, scaling={"minInstances": 1, "maxInstances": 2,
                                             "target": {"concurrentRequestsPerCopy": 4}})
    kube.apply(body)
    st = wait_for(lambda: (s := serving(kube, name, {"current": 1, "desired": 1})()) and
                  (s.get("scaling") or {}).get("appliedHash") and s, 120, "component in service, scaling applied")
    ic = st["inferenceComponent"]["name"]
    rid = f"inference-component/{ic}"

    body["spec"]["scaling"] = None  # (apply merge-patches: null removes)
    body["spec"]["resources"]["instanceCount"] = 2
    kube.apply(body)
    # the count is the spec's again: two instances' worth of copies (one each on ml.g5.xlarge)
    after = wait_for(serving(kube, name, {"current": 2, "desired": 2}), 90, "two copies once scaling is gone")
    assert "scaling" not in after
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"] == []
    assert cw.describe_alarms(AlarmNamePrefix=f"llama-operator-{ic}")["MetricAlarms"] == []
    wait_for(lambda: any(r == "AutoscalingRemoved" for _, r, _m in events_for(kube, name)), 10,
             "an AutoscalingRemoved Event")
    kube.delete("llamaendpoints", "default", name)
    wait_for(lambda: kube.get("llamaendpoints", "default", name) is None, 90, "resource gone")
