"""Planned requests are valid for botocore's SageMaker service model and carry the spec field by
field, under the training workload's hyperparameter contract."""

import re

import botocore.session
import pytest
from botocore.validate import ParamValidator

import specdata
from llama_operator.plan.images import lmi_image_uri, training_image_uri
from llama_operator.plan import endpoint as plan_ep
from llama_operator.plan import finetune as plan_ft
from llama_operator.plan import names
from llama_operator.spec import LlamaEndpointSpec, LlamaFinetuneSpec

UID = "3f2b8a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6b"
SOURCE = "s3://bkt/llama-operator/source/abc.tar.gz"
_service = botocore.session.get_session().get_service_model("sagemaker")


def _check_constraints(value, shape, path, problems):
    """What ParamValidator leaves out: enums, maximum lengths and values, and patterns."""
    meta = shape.metadata
    if shape.type_name == "structure":
        for key, sub in value.items():
            _check_constraints(sub, shape.members[key], f"{path}.{key}", problems)
    elif shape.type_name == "list":
        for i, item in enumerate(value):
            _check_constraints(item, shape.member, f"{path}[{i}]", problems)
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: more than {meta['max']} items")
    elif shape.type_name == "map":
        for key, sub in value.items():
            _check_constraints(key, shape.key, f"{path} key", problems)
            _check_constraints(sub, shape.value, f"{path}[{key}]", problems)
    elif shape.type_name == "string":
        if shape.enum and value not in shape.enum:
            problems.append(f"{path}: {value!r} not in {shape.enum}")
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: longer than {meta['max']}")
        if "pattern" in meta:
            try:
                pattern = re.compile(meta["pattern"])
            except re.error:
                return
            if not pattern.match(value):
                problems.append(f"{path}: {value!r} does not match {meta['pattern']}")
    elif shape.type_name in ("integer", "long", "float", "double"):
        if "max" in meta and value > meta["max"]:
            problems.append(f"{path}: above {meta['max']}")


def assert_valid(operation, request):
    shape = _service.operation_model(operation).input_shape
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()
    problems = []
    _check_constraints(request, shape, operation, problems)
    assert problems == []


def owner(kind, ns, name, uid):
    return {"llamaops.dev/kind": kind, "llamaops.dev/namespace": ns, "llamaops.dev/name": name,
            "llamaops.dev/uid": uid}


def plan_training(spec_body, region="us-west-2", ns="team-a", name="llama-dailydialog"):
    spec = LlamaFinetuneSpec.model_validate(spec_body)
    return spec, plan_ft.create_training_job_request(spec, namespace=ns, name=name, uid=UID,
                                                     source_s3_uri=SOURCE, region=region)


@pytest.mark.parametrize("body", [specdata.FINETUNE_MIN, specdata.FINETUNE_DEEPSPEED, specdata.FINETUNE_SMP,
                                  specdata.FINETUNE_LORA], ids=["minimal", "deepspeed-spot", "smp", "lora"])
def test_training_job_request_is_botocore_valid(body):
    _, request = plan_training(body)
    assert_valid("CreateTrainingJob", request)
    assert all(isinstance(v, str) for v in request["HyperParameters"].values())


def test_a_lora_fine_tune_passes_its_adapter_settings_and_where_the_adapter_goes():
    spec, r = plan_training(specdata.FINETUNE_LORA)
    job = r["TrainingJobName"]
    hp = r["HyperParameters"]
    assert {k: hp[k] for k in ("peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                               "merge_adapter")} == {
        "peft": "lora", "lora_r": "8", "lora_alpha": "16", "lora_dropout": "0.1",
        "lora_target_modules": "q_proj,v_proj", "merge_adapter": "true"}
    assert hp["adapter_s3_uri"] == f"s3://bkt/out/{job}/adapter/"
    assert hp["output_s3_uri"] == f"s3://bkt/out/{job}/model/"  # the merged model
    defaults = LlamaFinetuneSpec.model_validate({**specdata.FINETUNE_MIN, "method": {"peft": {"type": "lora"}}})
    hp = plan_ft.hyperparameters(defaults, job_name="j", source_s3_uri=SOURCE, region="us-west-2")
    assert (hp["lora_r"], hp["lora_alpha"], hp["lora_dropout"], hp["merge_adapter"]) == ("16", "32", "0.0", "false")
    assert hp["lora_target_modules"] == "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    # a full fine-tune's request has none of them
    _, full = plan_training(specdata.FINETUNE_MIN)
    assert not {k for k in full["HyperParameters"] if k.startswith(("peft", "lora_", "merge_", "adapter_"))}


def test_training_job_request_carries_the_spec():
    spec, r = plan_training(specdata.FINETUNE_DEEPSPEED)
    job = names.training_job_name("team-a", "llama-dailydialog", UID)
    hp = r["HyperParameters"]
    assert r["TrainingJobName"] == job
    assert r["AlgorithmSpecification"]["TrainingImage"] == specdata.FINETUNE_DEEPSPEED["image"]
    assert r["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert r["RoleArn"] == specdata.ROLE
    assert hp["method"] == "deepspeed" and hp["zero_stage"] == "2"
    assert "smp_shard_degree" not in hp and "smp_tp_degree" not in hp
    assert hp["base_model"] == "s3://bkt/models/llama/"
    assert hp["output_s3_uri"] == f"s3://bkt/out/{job}/model/" == plan_ft.model_s3_uri(spec, job)
    assert {k: hp[k] for k in ("epochs", "max_steps", "learning_rate", "warmup_ratio", "lr_scheduler",
                               "weight_decay", "per_device_batch_size", "gradient_accumulation_steps",
                               "max_seq_length", "packing", "gradient_checkpointing", "precision",
                               "attn_implementation", "add_special_tokens", "new_token_init",
                               "data_format", "logging_steps", "save_steps", "seed")} == {
        "epochs": "2.5", "max_steps": "500", "learning_rate": "0.0001", "warmup_ratio": "0.1",
        "lr_scheduler": "linear", "weight_decay": "0.01", "per_device_batch_size": "8",
        "gradient_accumulation_steps": "2", "max_seq_length": "4096", "packing": "false",
        "gradient_checkpointing": "true", "precision": "fp16", "attn_implementation": "sdpa",
        "add_special_tokens": "[STOP],[SEP]", "new_token_init": "mean", "data_format": "chat_jsonl",
        "logging_steps": "5", "save_steps": "100", "seed": "7"}
    assert hp["sagemaker_program"] == "train_entry.py"
    assert hp["sagemaker_submit_directory"] == SOURCE
    assert hp["sagemaker_torch_distributed_enabled"] == "true"
    assert hp["sagemaker_region"] == "us-west-2"
    assert [c["ChannelName"] for c in r["InputDataConfig"]] == ["train", "validation"]
    assert [c["DataSource"]["S3DataSource"]["S3Uri"] for c in r["InputDataConfig"]] == [
        "s3://bkt/data/train/", "s3://bkt/data/val/"]
    assert r["OutputDataConfig"] == {"S3OutputPath": "s3://bkt/out"}
    assert r["ResourceConfig"] == {"InstanceType": "ml.p3.16xlarge", "InstanceCount": 4, "VolumeSizeInGB": 500}
    assert r["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert r["EnableManagedSpotTraining"] is True
    assert r["CheckpointConfig"] == {"S3Uri": "s3://bkt/ckpt/run1/", "LocalPath": "/opt/ml/checkpoints"}
    assert r["Environment"] == {"NCCL_DEBUG": "INFO"}
    assert {t["Key"]: t["Value"] for t in r["Tags"]} == {
        "team": "dialog", "cost-center": "42", **owner("LlamaFinetune", "team-a", "llama-dailydialog", UID)}


def test_training_defaults_follow_the_workload_contract():
    _, r = plan_training(specdata.FINETUNE_MIN, region="eu-west-1")
    hp = r["HyperParameters"]
    assert r["AlgorithmSpecification"]["TrainingImage"] == training_image_uri("eu-west-1", "deepspeed")
    assert ".eu-west-1." in r["AlgorithmSpecification"]["TrainingImage"]
    assert (hp["zero_stage"], hp["packing"], hp["precision"], hp["max_steps"], hp["add_special_tokens"],
            hp["new_token_init"], hp["seed"], hp["logging_steps"]) == ("3", "true", "bf16", "-1", "", "normal",
                                                                       "42", "10")
    assert [c["ChannelName"] for c in r["InputDataConfig"]] == ["train"]
    assert "EnableManagedSpotTraining" not in r and "CheckpointConfig" not in r and "Environment" not in r
    assert r["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}


def test_smp_request_names_the_smp_image_and_degrees():
    _, r = plan_training(specdata.FINETUNE_SMP)
    hp = r["HyperParameters"]
    assert (hp["method"], hp["smp_shard_degree"], hp["smp_tp_degree"]) == ("smp", "8", "2")
    assert "zero_stage" not in hp
    assert r["AlgorithmSpecification"]["TrainingImage"] == training_image_uri("us-west-2", "smp")
    assert "smdistributed-modelparallel" in r["AlgorithmSpecification"]["TrainingImage"]


def test_metric_definitions_parse_the_workload_log_line():
    _, r = plan_training(specdata.FINETUNE_MIN)
    line = "[train] step=12/100 epoch=0.50 loss=2.3456 lr=1.000e-05 tokens_per_s=1234.5 mfu=0.0123"
    found = {m["Name"]: float(re.search(m["Regex"], line).group(1))
             for m in r["AlgorithmSpecification"]["MetricDefinitions"]}
    assert found == {"train:loss": 2.3456, "train:learning_rate": 1e-05, "train:tokens_per_s": 1234.5,
                     "train:mfu": 0.0123}


def plan_endpoint(body, region="us-west-2", model_s3_uri=None):
    spec = LlamaEndpointSpec.model_validate(body)
    digest = plan_ep.spec_hash(spec, model_s3_uri=model_s3_uri)
    kw = dict(namespace="team-a", name="llama-chat", uid=UID, spec_hash=digest)
    return spec, digest, {
        "CreateModel": plan_ep.create_model_request(spec, code_s3_uri="s3://bkt/code/abc", region=region, **kw),
        "CreateEndpointConfig": plan_ep.create_endpoint_config_request(spec, **kw),
        "CreateEndpoint": plan_ep.create_endpoint_request(spec, **kw),
        "UpdateEndpoint": plan_ep.update_endpoint_request(spec, **kw),
    }


@pytest.mark.parametrize("body", [specdata.ENDPOINT_MIN, specdata.ENDPOINT_VLLM, specdata.ENDPOINT_BATCHING],
                         ids=["minimal", "vllm-canary", "batching"])
def test_endpoint_requests_are_botocore_valid(body):
    _, _, requests = plan_endpoint(body, model_s3_uri="s3://bkt/out/job/model/")
    for operation, request in requests.items():
        assert_valid(operation, request)


def test_endpoint_requests_carry_the_spec():
    spec, digest, r = plan_endpoint(specdata.ENDPOINT_VLLM, model_s3_uri="s3://bkt/out/job/model/")
    model = names.model_name("team-a", "llama-chat", UID, digest)
    config = names.endpoint_config_name("team-a", "llama-chat", UID, digest)
    endpoint = names.endpoint_name("team-a", "llama-chat", UID)
    m = r["CreateModel"]
    assert m["ModelName"] == model and m["ExecutionRoleArn"] == specdata.ROLE
    assert m["PrimaryContainer"]["Image"] == specdata.ENDPOINT_VLLM["image"]
    assert m["PrimaryContainer"]["ModelDataSource"] == {"S3DataSource": {
        "S3Uri": "s3://bkt/code/abc/", "S3DataType": "S3Prefix", "CompressionType": "None"}}
    assert m["PrimaryContainer"]["Environment"] == {"OPTION_TRUST_REMOTE_CODE": "false"}
    (variant,) = r["CreateEndpointConfig"]["ProductionVariants"]
    assert r["CreateEndpointConfig"]["EndpointConfigName"] == config
    assert variant == {"VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.g5.12xlarge",
                       "InitialInstanceCount": 2, "InitialVariantWeight": 1.0,
                       "ContainerStartupHealthCheckTimeoutInSeconds": 1200,
                       "ModelDataDownloadTimeoutInSeconds": 900}
    assert r["CreateEndpoint"]["EndpointName"] == endpoint
    assert r["CreateEndpoint"]["EndpointConfigName"] == config
    update = r["UpdateEndpoint"]
    assert (update["EndpointName"], update["EndpointConfigName"]) == (endpoint, config)
    assert update["DeploymentConfig"] == {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": 600,
                                            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20}},
            "TerminationWaitInSeconds": 120},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "llama-5xx"}]}}
    for request in (m, r["CreateEndpointConfig"], r["CreateEndpoint"]):
        assert {t["Key"]: t["Value"] for t in request["Tags"]} == {
            "team": "dialog", **owner("LlamaEndpoint", "team-a", "llama-chat", UID)}
    assert plan_ep.serving_settings(spec) == {"dtype": "fp16", "max_new_tokens": 512, "tensor_parallel_degree": 4,
                                              "max_rolling_batch_size": 64, "max_model_len": 4096}


def test_endpoint_defaults():
    spec, _, r = plan_endpoint(specdata.ENDPOINT_MIN, region="ap-northeast-1")
    assert r["CreateModel"]["PrimaryContainer"]["Image"] == lmi_image_uri("ap-northeast-1")
    assert "djl-inference" in r["CreateModel"]["PrimaryContainer"]["Image"]
    assert "Environment" not in r["CreateModel"]["PrimaryContainer"]
    variant = r["CreateEndpointConfig"]["ProductionVariants"][0]
    assert (variant["ContainerStartupHealthCheckTimeoutInSeconds"], variant["ModelDataDownloadTimeoutInSeconds"],
            variant["InitialInstanceCount"]) == (1800, 1800, 1)
    assert r["UpdateEndpoint"]["DeploymentConfig"] == {"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 300},
        "TerminationWaitInSeconds": 0}}
    assert plan_ep.serving_settings(spec) == {"dtype": "bf16", "max_new_tokens": 256,
                                              "tensor_parallel_degree": "max", "max_rolling_batch_size": 32}
    batching = LlamaEndpointSpec.model_validate(specdata.ENDPOINT_BATCHING)
    assert plan_ep.serving_settings(batching) == {"dtype": "bf16", "max_new_tokens": 256,
                                                  "tensor_parallel_degree": 1, "max_batch_size": 16,
                                                  "max_wait_ms": 0}


def test_endpoint_tensor_parallel_degree_reaches_lmi():
    """Absent with vllm: LMI's max (all GPUs of the instance) in serving.properties; absent with
    batching: 1 (one GPU); a number: that number."""
    from llama_operator.artifacts import endpoint_code

    def rendered(body):
        spec = LlamaEndpointSpec.model_validate(body)
        files = endpoint_code.render(spec.serving.engine, "s3://bkt/m/", plan_ep.serving_settings(spec))
        return re.findall(r"^option\.tensor_parallel_degree=(.*)$", files["serving.properties"], re.M)

    assert rendered(specdata.ENDPOINT_MIN) == ["max"]
    assert rendered(specdata.ENDPOINT_VLLM) == ["4"]
    assert rendered(specdata.ENDPOINT_BATCHING) == ["1"]


def _hash(body, **kw):
    return plan_ep.spec_hash(LlamaEndpointSpec.model_validate(body), **kw)


def test_spec_hash_changes_with_what_is_served_only():
    base = specdata.ENDPOINT_VLLM
    assert _hash(base) == _hash(dict(base))
    # Re-applying with defaults spelled out is the same spec.
    assert _hash(specdata.ENDPOINT_MIN) == _hash({**specdata.ENDPOINT_MIN, "serving": {"engine": "vllm"}})
    served = [{**base, "resources": {**base["resources"], "instanceType": "ml.g6e.12xlarge"}},
              {**base, "serving": {**base["serving"], "maxNewTokens": 128}},
              {**base, "environment": {}}, {**base, "roleArn": specdata.ROLE + "-2"}]
    assert len({_hash(b) for b in [base, *served]}) == len(served) + 1
    managed = [{**base, "deployment": {"strategy": "AllAtOnce"}}, {**base, "tags": {}},
               {**base, "deletionPolicy": "Delete"}]
    assert {_hash(b) for b in managed} == {_hash(base)}
    assert _hash(base, model_s3_uri="s3://b/job-1/model/") != _hash(base, model_s3_uri="s3://b/job-2/model/")


def test_the_request_check_catches_what_sagemaker_would_reject():
    _, request = plan_training(specdata.FINETUNE_MIN)
    for breakage in ({"ResourceConfig": {**request["ResourceConfig"], "VolumeSizeInGB": "200"}},
                     {"AlgorithmSpecification": {**request["AlgorithmSpecification"], "TrainingInputMode": "Files"}},
                     {"TrainingJobName": "x" * 64}, {"RoleArn": None}):
        with pytest.raises(AssertionError):
            assert_valid("CreateTrainingJob", {**request, **breakage})
