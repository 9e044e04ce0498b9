"""deployment.mode inferenceComponents -> SageMaker, Application Auto Scaling and CloudWatch
requests: each checked against botocore's models (Stubber), carrying the spec; the copy shape per
instance type and engine; and the spec rules that refuse what SageMaker would."""

import botocore.session
import pytest
from botocore.stub import Stubber

import specdata
from llama_operator.aws.endpoints import EndpointGateway
from llama_operator.aws.scaling import ScalingGateway
from llama_operator.handlers import endpoint_components
from llama_operator.plan import components, rollout
from llama_operator.plan import scaling as plan_scaling
from llama_operator.plan.model_source import Resolved
from llama_operator.spec import LlamaEndpointSpec
from llama_operator.spec.validate import InvalidSpec, validate

COMPONENTS = {"mode": "inferenceComponents"}
SCALE_TO_ZERO = {"minInstances": 0, "maxInstances": 2, "target": {"concurrentRequestsPerCopy": 4},
                 "scaleOutCooldownSeconds": 30}
OWNER = dict(namespace="team-a", name="chat", uid="0f0e-uid")


def spec(**overrides):
    body = {**specdata.ENDPOINT_MIN, "deployment": COMPONENTS, **overrides}
    return LlamaEndpointSpec.model_validate(body)


def client(service):
    return botocore.session.get_session().create_client(
        service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")


def the_plan(s):
    resolved = Resolved(model_s3_uri="s3://bkt/out/job/model/", adapters={})
    return rollout.plan(s, resolved=resolved, region="us-east-1", source_s3_uri="s3://bkt/op", **OWNER)


def test_the_endpoint_config_is_an_instance_pool_and_the_model_a_component():
    s = spec(resources={"instanceType": "ml.g5.12xlarge", "instanceCount": 2},
             serving={"engine": "batching"})
    p = the_plan(s)
    create = components.create_request(s, component=p.component, endpoint=p.endpoint_name, model_name=p.model_name,
                                       **OWNER)
    update = components.update_request(s, component=p.component, model_name=p.model_name)
    c = client("sagemaker")
    stub = Stubber(c)
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:1:ec/x"},
                      p.config_request)
    stub.add_response("create_inference_component",
                      {"InferenceComponentArn": "arn:aws:sagemaker:us-east-1:1:inference-component/x"},
                      create)
    stub.add_response("update_inference_component",
                      {"InferenceComponentArn": "arn:aws:sagemaker:us-east-1:1:inference-component/x"},
                      update)
    with stub:
        c.create_endpoint_config(**p.config_request)
        c.create_inference_component(**create)
        c.update_inference_component(**update)
    stub.assert_no_pending_responses()
    (variant,) = p.config_request["ProductionVariants"]
    assert "ModelName" not in variant and p.config_request["ExecutionRoleArn"] == specdata.ROLE
    assert variant["ManagedInstanceScaling"] == {"Status": "ENABLED", "MinInstanceCount": 0,
                                                 "MaxInstanceCount": components.MAX_INSTANCES}
    assert create["Specification"]["ModelName"] == p.model_name
    # the batching engine runs a copy on one GPU: 4 copies on each of the two 4-GPU instances
    assert create["Specification"]["ComputeResourceRequirements"]["NumberOfAcceleratorDevicesRequired"] == 1
    assert create["RuntimeConfig"] == {"CopyCount": 8}
    assert update["DeploymentConfig"]["RollingUpdatePolicy"]["MaximumBatchSize"] == {
        "Type": "COPY_COUNT", "Value": 1}


@pytest.mark.parametrize("instance, serving, per_instance, gpus", [
    ("ml.g5.12xlarge", {"engine": "vllm"}, 1, 4),                           # tensor parallel over all GPUs
    ("ml.g5.12xlarge", {"engine": "vllm", "tensorParallelDegree": 2}, 2, 2),
    ("ml.p4d.24xlarge", {"engine": "batching"}, 8, 1),
    ("ml.m5.xlarge", {"engine": "batching", "dtype": "fp32"}, 1, 0),        # a CPU instance: one copy
])
def test_a_copy_takes_its_gpus_and_a_share_of_the_memory(instance, serving, per_instance, gpus):
    shape = spec(resources={"instanceType": instance}, serving=serving).copy_shape()
    assert (shape.per_instance, shape.gpus) == (per_instance, gpus)
    assert 0 < shape.memory_mb * per_instance < 0.95 * 1024 * {"ml.g5.12xlarge": 192, "ml.p4d.24xlarge": 1152,
                                                             "ml.m5.xlarge": 16}[instance]


def test_scale_to_zero_tracks_concurrency_and_wakes_on_the_no_capacity_alarm():
    s = spec(resources={"instanceType": "ml.g5.2xlarge"}, scaling=SCALE_TO_ZERO)
    req = plan_scaling.component_requests(s.scaling, "chat-ic", components.copy_bounds(s))
    assert req.register["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    assert (req.register["MinCapacity"], req.register["MaxCapacity"]) == (0, 2)
    tracking, wake = req.policies
    assert tracking["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"}
    assert wake["PolicyType"] == "StepScaling"
    # requests failing while the woken copy starts add no second copy: at least a minute between wake-ups
    assert wake["StepScalingPolicyConfiguration"]["Cooldown"] == 60
    assert req.alarm["TreatMissingData"] == "notBreaching"
    assert req.alarm["MetricName"] == "NoCapacityInvocationFailures"
    assert req.alarm["Dimensions"] == [{"Name": "InferenceComponentName", "Value": "chat-ic"}]
    aas, cw = client("application-autoscaling"), client("cloudwatch")
    a, w = Stubber(aas), Stubber(cw)
    arn = "arn:aws:autoscaling:us-east-1:1:scalingPolicy:wake"
    a.add_response("register_scalable_target", {}, req.register)
    a.add_response("put_scaling_policy", {"PolicyARN": arn + "0", "Alarms": []}, tracking)
    a.add_response("put_scaling_policy", {"PolicyARN": arn}, wake)
    w.add_response("put_metric_alarm", {}, {**req.alarm, "AlarmActions": [arn]})
    target = {k: req.register[k] for k in ("ServiceNamespace", "ResourceId", "ScalableDimension")}
    for name in (plan_scaling.COMPONENT_POLICY_NAME, plan_scaling.WAKE_POLICY_NAME):
        a.add_response("delete_scaling_policy", {}, {**target, "PolicyName": name})
    a.add_response("deregister_scalable_target", {}, target)
    w.add_response("delete_alarms", {}, {"AlarmNames": [req.alarm["AlarmName"]]})
    with a, w:
        gw = ScalingGateway(aas, cloudwatch=cw)
        gw.apply(req)
        assert gw.remove(req.resource_id) is True
    a.assert_no_pending_responses()
    w.assert_no_pending_responses()


def test_without_scale_to_zero_there_is_no_wake_up_and_an_old_one_goes():
    s = spec(scaling={**SCALE_TO_ZERO, "minInstances": 1})
    req = plan_scaling.component_requests(s.scaling, "chat-ic", components.copy_bounds(s))
    assert [p["PolicyName"] for p in req.policies] == [plan_scaling.COMPONENT_POLICY_NAME]
    assert req.alarm is None and req.stale_policies == [plan_scaling.WAKE_POLICY_NAME]
    assert req.register["MinCapacity"] == 1


@pytest.mark.parametrize("overrides, field", [
    ({"deployment": {}, "scaling": SCALE_TO_ZERO}, "scaling.target.concurrentRequestsPerCopy"),
    ({"deployment": {}, "scaling": {**SCALE_TO_ZERO, "target": {"invocationsPerInstance": 5}}},
     "scaling.minInstances 0"),
    ({"scaling": {**SCALE_TO_ZERO, "target": {"invocationsPerInstance": 5}}},
     "scaling.target.invocationsPerInstance applies to deployment.mode variant"),
    ({"scaling": {**SCALE_TO_ZERO, "target": {}}}, "set exactly one of scaling.target"),
    ({"deployment": {**COMPONENTS, "strategy": "Canary"}}, "deployment.strategy Canary"),
    ({"resources": {"instanceType": "ml.r5.xlarge"}}, "resources.instanceType ml.r5.xlarge"),
    ({"resources": {"instanceType": "ml.g5.12xlarge"}, "serving": {"tensorParallelDegree": 3}},
     "serving.tensorParallelDegree 3"),
])
def test_impossible_component_specs_are_refused_naming_the_field(overrides, field):
    body = {**specdata.ENDPOINT_MIN, "deployment": COMPONENTS, **overrides}
    with pytest.raises(InvalidSpec) as err:
        validate(LlamaEndpointSpec, body)
    assert field in str(err.value)


def _component(state, model, current=1, desired=1, failure=None):
    d = {"InferenceComponentName": "chat-ic", "InferenceComponentStatus": state,
         "Specification": {"ModelName": model},
         "RuntimeConfig": {"CurrentCopyCount": current, "DesiredCopyCount": desired}}
    if failure:
        d["FailureReason"] = failure
    return d


def test_status_follows_the_component_not_just_the_endpoint():
    from llama_operator.plan import names

    status = {"phase": "InService", "specHash": "a" * 16, "endpointName": "ep"}
    want = names.model_name(OWNER["namespace"], OWNER["name"], OWNER["uid"], "a" * 16)

    def update(seen, st=status):
        return endpoint_components.status_update(seen, st, generation=1, **OWNER)

    creating = update(_component("Creating", want, 0, 1))
    assert creating["phase"] == "Creating" and creating["inferenceComponent"]["copies"] == {"current": 0, "desired": 1}
    serving = update(_component("InService", want))
    assert serving["phase"] == "InService" and serving["modelName"] == want
    # the old model in service: not asked for the new one yet (about to roll), or asked and rolled back
    assert update(_component("InService", "older-model"))["phase"] == "Updating"
    asked = {**status, "inferenceComponent": {"name": "chat-ic", "requestedModel": want}}
    rolled_back = update(_component("InService", "older-model", failure="new copies failed /ping"), asked)
    assert rolled_back["phase"] == "Degraded" and rolled_back["inferenceComponent"]["failedModel"] == want
    assert "new copies failed /ping" in rolled_back["failureReason"]
    assert "failureReason" in serving and serving["failureReason"] is None


def test_a_component_is_created_adopted_or_rolled_through_the_gateway():
    c = client("sagemaker")
    stub = Stubber(c)
    stub.add_client_error("create_inference_component", "ValidationException",
                          "Cannot create already existing inference component \"chat-ic\"")
    arn = "arn:aws:sagemaker:us-east-1:1:inference-component/chat-ic"
    described = {**_component("InService", "m"), "InferenceComponentArn": arn, "EndpointName": "ep",
                 "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/ep", "CreationTime": 0, "LastModifiedTime": 0}
    stub.add_response("describe_inference_component", described, {"InferenceComponentName": "chat-ic"})
    stub.add_response("list_tags", {"Tags": [{"Key": "llamaops.dev/uid", "Value": "someone-else"}]},
                      {"ResourceArn": arn})
    p = the_plan(spec())
    request = components.create_request(spec(), component=p.component, endpoint=p.endpoint_name,
                                         model_name=p.model_name, **OWNER)
    with stub, pytest.raises(Exception) as err:
        EndpointGateway(c).ensure_component({**request, "InferenceComponentName": "chat-ic"}, "0f0e-uid")
    assert "NameCollision" in repr(err.value) or "belongs to another resource" in str(err.value)


ADAPTERS = [{"name": "support", "s3Uri": "s3://bkt/adapters/support/"},
            {"name": "sql", "s3Uri": "s3://bkt/adapters/sql/"}]


def adapter_plan(s, adapters=None, default=None):
    found = {a["name"]: a["s3Uri"] for a in (adapters if adapters is not None else ADAPTERS)}
    if default:
        found = {default: "s3://bkt/out/lora/adapter/", **found}
    resolved = Resolved(model_s3_uri="s3://bkt/out/job/model/", adapters=found, default_adapter=default,
                        max_adapter_rank=16)
    return rollout.plan(s, resolved=resolved, region="us-east-1", source_s3_uri="s3://bkt/op", **OWNER)


def test_adapters_become_components_and_the_model_keeps_free_slots_for_them():
    s = spec(model={"s3Uri": "s3://bkt/out/job/model/", "adapters": ADAPTERS}, serving={"engine": "batching"})
    p = adapter_plan(s)
    assert p.adapter_sources == {"support": "s3://bkt/adapters/support/", "sql": "s3://bkt/adapters/sql/"}
    props = p.code_files["serving.properties"]
    # the model names no adapter: they are loaded into its free slots at run time
    assert "option.adapters" not in props and "option.enable_lora=true" in props
    assert f"option.max_loras={components.adapter_slots({})}" in props
    # adding, changing or dropping an adapter is not a new model
    fewer = spec(model={"s3Uri": "s3://bkt/out/job/model/", "adapters": ADAPTERS[:1]}, serving={"engine": "batching"})
    assert adapter_plan(fewer, ADAPTERS[:1]).model_name == p.model_name
    # a LoRA fine-tune's own adapter is the model: it stays in it, as the default
    with_default = adapter_plan(s, default="chat-lora")
    assert "option.default_adapter=chat-lora" in with_default.code_files["serving.properties"]
    assert "chat-lora" not in with_default.adapter_sources
    # the same spec in variant mode serves them from the model itself
    variant = LlamaEndpointSpec.model_validate({**specdata.ENDPOINT_MIN, "serving": {"engine": "batching"},
                                                "model": {"s3Uri": "s3://bkt/out/job/model/", "adapters": ADAPTERS}})
    vp = adapter_plan(variant)
    assert "option.adapters=" in vp.code_files["serving.properties"] and not vp.adapter_sources


def test_adapter_component_requests_pass_botocore():
    from llama_operator.plan import names
    from llama_operator.plan.tags import owner_tags

    s = spec(model={"s3Uri": "s3://bkt/out/job/model/", "adapters": ADAPTERS})
    p = adapter_plan(s)
    name = names.adapter_component_name(OWNER["namespace"], OWNER["name"], OWNER["uid"], "support")
    assert names.NAME_PATTERN.match(name) and "support" in name
    create = components.adapter_create_request(component=name, endpoint=p.endpoint_name, base=p.component,
                                               artifact_url="s3://bkt/op/adapter-packs/x/adapter.tar.gz",
                                               tags=owner_tags("LlamaEndpoint", OWNER["namespace"], OWNER["name"],
                                                               OWNER["uid"], {}))
    update = components.adapter_update_request(component=name, base=p.component,
                                               artifact_url="s3://bkt/op/adapter-packs/y/adapter.tar.gz")
    assert "RuntimeConfig" not in create and "ComputeResourceRequirements" not in create["Specification"]
    c = client("sagemaker")
    stub = Stubber(c)
    arn = {"InferenceComponentArn": "arn:aws:sagemaker:us-east-1:1:inference-component/x"}
    stub.add_response("create_inference_component", arn, create)
    stub.add_response("update_inference_component", arn, update)
    with stub:
        c.create_inference_component(**create)
        c.update_inference_component(**update)


def test_adapters_in_status_and_a_failed_one_degrades_without_blaming_the_model():
    from llama_operator.plan import names

    status = {"phase": "InService", "specHash": "a" * 16, "endpointName": "ep"}
    want = names.model_name(OWNER["namespace"], OWNER["name"], OWNER["uid"], "a" * 16)

    def update(adapters):
        return endpoint_components.status_update(_component("InService", want), status, generation=1,
                                                 adapters=adapters, **OWNER)

    row = {"name": "support", "component": "chat-support-a1", "artifactUrl": "s3://p"}
    on_the_way = update([{**row, "status": "Creating"}])
    assert on_the_way["phase"] == "Updating"
    assert any("support" in (c.get("message") or "") for c in on_the_way["conditions"])
    ready = update([{**row, "status": "InService"}])
    assert ready["phase"] == "InService" and ready["inferenceComponent"]["adapters"][0]["component"] == row["component"]
    failed = update([{**row, "status": "Failed", "failureReason": "adapter_config.json: r is 512"}])
    assert failed["phase"] == "Degraded" and "r is 512" in failed["failureReason"]
    assert "failedModel" not in failed["inferenceComponent"]


def test_an_adapter_pack_is_a_tar_gz_of_the_adapter_files_named_by_their_content():
    import io
    import tarfile

    from llama_operator.artifacts import adapter_pack

    data = adapter_pack.tar_gz({"adapter_config.json": b"{}", "adapter_model.safetensors": b"w" * 10})
    assert data == adapter_pack.tar_gz({"adapter_model.safetensors": b"w" * 10, "adapter_config.json": b"{}"})
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["adapter_config.json", "adapter_model.safetensors"]
    a = adapter_pack.pack_uri("s3://b/op", "s3://b/ad/x/", {"adapter_config.json": '"1"'})
    assert a.endswith("/adapter.tar.gz") and a.startswith("s3://b/op/adapter-packs/")
    assert a != adapter_pack.pack_uri("s3://b/op", "s3://b/ad/x/", {"adapter_config.json": '"2"'})
