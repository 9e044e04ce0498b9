"""spec.scaling end to end on the embedded default: the operator registers the endpoint with the
local service's Application Auto Scaling, load through InvokeEndpoint raises the instance count,
idling brings it back to the minimum, status and Events follow, and deleting the resource leaves no
scalable target, policy, endpoint, config or model. The local service runs with one metric period
a second (`--autoscaling-period 1`): 3 periods above target scale out, 15 below scale in."""

from __future__ import annotations

import threading
import time

import pytest


from operator_harness import BUCKET, endpoint, owned, scaling_world, unique, wait_for

pytestmark = pytest.mark.slow

ROLE = "arn:aws:iam::123456789012:role/sagemaker-endpoint"
RESOURCE = "endpoint/{}/variant/AllTraffic"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with scaling_world(tmp_path_factory) as w:
        yield w


def status_of(kube, name: str) -> dict:
    return ((kube.get("llamaendpoints", "default", name) or {}).get("status")) or {}


def phase_is(kube, name: str, phase: str):
    return lambda: status_of(kube, name) if status_of(kube, name).get("phase") == phase else None


def scaled(name: str, **scaling) -> dict:
    obj = endpoint(name, source={"s3Uri": f"s3://{BUCKET}/models/tiny/"}, role=ROLE)
    obj["spec"]["scaling"] = {"minInstances": 1, "maxInstances": 3, "target": {"invocationsPerInstance": 30},
                              "scaleInCooldownSeconds": 0, "scaleOutCooldownSeconds": 0, **scaling}
    return obj


def events_for(kube, name: str) -> list[tuple[str, str, str]]:
    return [(e.get("type"), e.get("reason"), e.get("message", "")) for e in kube.list("events", "default", api_version="v1")
            if e.get("involvedObject", {}).get("name") == name]


def targets(aas, endpoint_name: str) -> list[dict]:
    return aas.describe_scalable_targets(ServiceNamespace="sagemaker",
                                         ResourceIds=[RESOURCE.format(endpoint_name)])["ScalableTargets"]


def load(rt, endpoint_name: str, stop: threading.Event, threads: int = 4) -> None:
    def run():
        while not stop.is_set():
            rt.invoke_endpoint(EndpointName=endpoint_name, ContentType="application/json", Body=b'{"inputs": "hi"}')
            time.sleep(0.05)
    for _ in range(threads):
        threading.Thread(target=run, daemon=True).start()


def test_load_scales_out_idling_scales_in_and_deleting_leaves_nothing(world):
    kube, aas, sm = world["kube"], world["aas"], world["sm"]
    name = unique("scaled")
    obj = kube.apply(scaled(name))
    st = wait_for(phase_is(kube, name, "InService"), 90, "InService")
    ep = st["endpointName"]
    st = wait_for(lambda: status_of(kube, name) if (status_of(kube, name).get("scaling") or {}).get("appliedHash")
                  else None, 30, "autoscaling applied")
    assert st["scaling"]["resourceId"] == RESOURCE.format(ep)
    assert st["instances"] == {"current": 1, "desired": 1}
    (target,) = targets(aas, ep)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    (policy,) = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=RESOURCE.format(ep))[
        "ScalingPolicies"]
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 30.0

    stop = threading.Event()
    load(world["rt"], ep, stop)
    try:
        st = wait_for(lambda: status_of(kube, name) if (status_of(kube, name).get("instances") or {}).get("current")
                      == 3 else None, 90, "three instances under load")
    finally:
        stop.set()
    assert st["phase"] == "InService"
    described = sm.describe_endpoint(EndpointName=ep)["ProductionVariants"][0]
    assert described["CurrentInstanceCount"] == 3
    wait_for(lambda: any(r == "ScaledOut" and "3" in m for _, r, m in events_for(kube, name)), 10,
             "a ScaledOut Event")  # (it follows the status write)
    activity = wait_for(lambda: status_of(kube, name)["scaling"].get("lastActivity"), 30, "last activity")
    assert "desired instance count" in activity["description"].lower()

    # idle: 15 periods below target, then back to minInstances
    st = wait_for(lambda: status_of(kube, name) if status_of(kube, name).get("instances") == {"current": 1, "desired": 1}
                  else None, 90, "back to one instance")
    assert st["phase"] == "InService"
    wait_for(lambda: any(r == "ScaledIn" for _, r, _m in events_for(kube, name)), 10, "a ScaledIn Event")

    kube.delete("llamaendpoints", "default", name)
    wait_for(lambda: kube.get("llamaendpoints", "default", name) is None, 90, "resource gone")
    assert targets(aas, ep) == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=RESOURCE.format(ep))[
        "ScalingPolicies"] == []
    assert owned(sm, obj["metadata"]["uid"]) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}


def test_removing_scaling_deregisters_and_returns_to_the_spec_count(world):
    kube, aas = world["kube"], world["aas"]
    name = unique("unscaled")
    body = scaled(name, maxInstances=2)
    kube.apply(body)
    ep = wait_for(phase_is(kube, name, "InService"), 90, "InService")["endpointName"]
    wait_for(lambda: targets(aas, ep), 30, "registered")
    stop = threading.Event()
    load(world["rt"], ep, stop)
    try:
        wait_for(lambda: (status_of(kube, name).get("instances") or {}).get("current") == 2, 90, "two instances")
    finally:
        stop.set()
    # before the idle endpoint would scale in by itself (15 periods); null removes it in a merge patch
    body["spec"]["scaling"] = None
    kube.apply(body)
    wait_for(lambda: not targets(aas, ep), 30, "deregistered")
    st = wait_for(lambda: status_of(kube, name) if status_of(kube, name).get("instances") == {"current": 1, "desired": 1}
                  and "scaling" not in status_of(kube, name) else None, 60, "one instance, no scaling in status")
    assert st["phase"] == "InService"
    assert any(r == "AutoscalingRemoved" for _, r, _m in events_for(kube, name))
    kube.delete("llamaendpoints", "default", name)
    wait_for(lambda: kube.get("llamaendpoints", "default", name) is None, 90, "resource gone")


def test_a_new_instance_count_is_applied_in_place_not_by_a_new_fleet(world):
    kube, sm = world["kube"], world["sm"]
    name = unique("count")
    body = endpoint(name, source={"s3Uri": f"s3://{BUCKET}/models/tiny/"}, role=ROLE)
    kube.apply(body)
    first = wait_for(phase_is(kube, name, "InService"), 90, "InService")
    body["spec"]["resources"]["instanceCount"] = 2
    kube.apply(body)
    st = wait_for(lambda: status_of(kube, name) if status_of(kube, name).get("instances") == {"current": 2, "desired": 2}
                  and status_of(kube, name).get("phase") == "InService" else None, 60, "two instances")
    assert st["endpointConfigName"] == first["endpointConfigName"] and st["specHash"] == first["specHash"]
    assert sm.describe_endpoint(EndpointName=st["endpointName"])["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    wait_for(lambda: any(r == "ScaledOut" and "resources.instanceCount" in m for _, r, m in events_for(kube, name)),
             10, "a ScaledOut Event")
    kube.delete("llamaendpoints", "default", name)
    wait_for(lambda: kube.get("llamaendpoints", "default", name) is None, 90, "resource gone")
