"""spec.scaling -> Application Auto Scaling requests: valid for botocore's model of the service (a
Stubber checks every parameter), carrying the spec field by field; and what status makes of an
endpoint whose instance count is moving."""

import botocore.session
import pytest
from botocore.stub import Stubber

import specdata
from llama_operator.aws.scaling import ScalingGateway
from llama_operator.plan import endpoint as plan_ep
from llama_operator.plan import scaling as plan
from llama_operator.spec import LlamaEndpointSpec
from llama_operator.spec.validate import InvalidSpec, validate
from llama_operator.status import endpoint as es

EP = "llama-team-a-chat-1a2b3c4d"
SCALING = {"minInstances": 1, "maxInstances": 4, "target": {"invocationsPerInstance": 120},
           "scaleInCooldownSeconds": 600}


def spec(scaling=SCALING, **resources):
    body = {**specdata.ENDPOINT_MIN, "scaling": scaling} if scaling else dict(specdata.ENDPOINT_MIN)
    body["resources"] = {**body["resources"], **resources}
    return LlamaEndpointSpec.model_validate(body)


def client():
    return botocore.session.get_session().create_client(
        "application-autoscaling", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")


def test_the_requests_are_what_botocore_accepts_and_carry_the_spec():
    s = spec().scaling
    c = client()
    stub = Stubber(c)
    req = plan.variant_requests(s, EP)
    register, (policy,) = req.register, req.policies
    stub.add_response("register_scalable_target", {}, register)
    stub.add_response("put_scaling_policy", {"PolicyARN": "arn:aws:autoscaling:us-east-1:1:scalingPolicy:x",
                                             "Alarms": []}, policy)
    target = {k: register[k] for k in ("ServiceNamespace", "ResourceId", "ScalableDimension")}
    stub.add_response("delete_scaling_policy", {}, {**target, "PolicyName": policy["PolicyName"]})
    stub.add_response("deregister_scalable_target", {}, target)
    with stub:
        gw = ScalingGateway(c)
        gw.apply(req)
        assert gw.remove(req.resource_id) is True
    stub.assert_no_pending_responses()
    assert register == {"ServiceNamespace": "sagemaker", "ResourceId": f"endpoint/{EP}/variant/AllTraffic",
                        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                        "MinCapacity": 1, "MaxCapacity": 4}
    tt = policy["TargetTrackingScalingPolicyConfiguration"]
    assert (policy["PolicyType"], tt["TargetValue"], tt["ScaleInCooldown"], tt["ScaleOutCooldown"]) == (
        "TargetTrackingScaling", 120.0, 600, 60)
    assert tt["PredefinedMetricSpecification"] == {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}


def test_removing_what_is_not_registered_is_done_not_an_error():
    c = client()
    stub = Stubber(c)
    stub.add_client_error("delete_scaling_policy", "ObjectNotFoundException", "No scaling policy found")
    stub.add_client_error("deregister_scalable_target", "ObjectNotFoundException", "No scalable target found")
    with stub:
        assert ScalingGateway(c).remove(plan.resource_id(EP)) is False


def test_the_applied_hash_follows_what_is_sent():
    def digest(scaling):
        return plan.variant_requests(spec(scaling).scaling, EP).digest()

    base = digest(SCALING)
    assert digest(SCALING) == base
    assert digest({**SCALING, "maxInstances": 5}) != base
    assert digest({**SCALING, "target": {"invocationsPerInstance": 60}}) != base


def test_an_autoscaled_update_keeps_the_count_the_policy_reached():
    kw = dict(namespace="team-a", name="chat", uid="u", spec_hash="0" * 16)
    assert plan_ep.update_endpoint_request(spec(), **kw)["RetainAllVariantProperties"] is True
    assert plan_ep.update_endpoint_request(spec(None), **kw)["RetainAllVariantProperties"] is False


@pytest.mark.parametrize("scaling, count, field", [
    ({**SCALING, "minInstances": 5}, 1, "scaling.minInstances must not exceed scaling.maxInstances"),
    ({**SCALING, "minInstances": 2}, 1, "resources.instanceCount is the count the endpoint starts with"),
    ({**SCALING, "minInstances": 0}, 1, "scaling.minInstances"),
    ({"maxInstances": 2}, 1, "scaling.target"),
])
def test_impossible_scaling_is_refused_naming_the_field(scaling, count, field):
    body = {**specdata.ENDPOINT_MIN, "scaling": scaling}
    body["resources"] = {**body["resources"], "instanceCount": count}
    with pytest.raises(InvalidSpec) as err:
        validate(LlamaEndpointSpec, body)
    assert field in str(err.value)


def _describe(status, current, desired, config="cfg-a"):
    return {"EndpointName": EP, "EndpointStatus": status, "EndpointConfigName": config,
            "EndpointArn": f"arn:aws:sagemaker:us-east-1:111122223333:endpoint/{EP}",
            "ProductionVariants": [{"VariantName": "AllTraffic", "CurrentInstanceCount": current,
                                    "DesiredInstanceCount": desired}]}


def test_a_capacity_change_on_the_desired_config_stays_in_service_and_shows_the_counts():
    patch = es.observe(_describe("Updating", 1, 3), {"phase": "InService"}, desired_config="cfg-a")
    assert patch["phase"] == "InService"
    assert patch["instances"] == {"current": 1, "desired": 3}
    ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Scaling")
    # a blue/green update (another configuration serves) is still Updating
    assert es.observe(_describe("InService", 2, 2, config="cfg-old"), {}, desired_config="cfg-a")["phase"] == "Updating"


def test_the_instance_count_rolls_nothing_out():
    def h(scaling, count):
        return plan_ep.spec_hash(spec(scaling, instanceCount=count))

    assert h(SCALING, 1) == h(SCALING, 2) == h(None, 1) == h(None, 2)
    assert h(None, 1) != plan_ep.spec_hash(spec(None, instanceType="ml.g5.4xlarge"))
