"""Every CEL rule of both CRDs, one passing and one failing object each, with the message a user
sees; the pydantic models (which the operator applies where no API server runs CEL) say the same."""

import copy

import pytest
from pydantic import ValidationError

import crdtools
import specdata
from llama_operator.spec import LlamaEndpointSpec, LlamaFinetuneSpec

MODELS = {"llamafinetunes": LlamaFinetuneSpec, "llamaendpoints": LlamaEndpointSpec}


def merged(base, **changes):
    spec = copy.deepcopy(base)
    for dotted, value in changes.items():
        node, *_ = spec, None
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return spec


FT, EP = specdata.FINETUNE_MIN, specdata.ENDPOINT_MIN
CASES = [
    ("llamafinetunes", "set exactly one of baseModel.s3Uri or baseModel.fromFinetune",
     merged(FT, baseModel={"fromFinetune": "full-ft"}),
     merged(FT, baseModel={"s3Uri": "s3://bkt/models/llama/", "fromFinetune": "full-ft"})),
    ("llamafinetunes", "method.zeroStage applies only to method.type deepspeed",
     merged(FT, method__zeroStage=1), merged(specdata.FINETUNE_SMP, method__zeroStage=1)),
    ("llamafinetunes", "method.shardDegree and method.tensorParallelDegree apply only to method.type smp",
     specdata.FINETUNE_SMP, merged(FT, method__tensorParallelDegree=2)),
    ("llamafinetunes", "resources.spot needs resources.maxWaitSeconds >= resources.maxRuntimeSeconds",
     specdata.FINETUNE_DEEPSPEED, merged(specdata.FINETUNE_DEEPSPEED, resources__maxWaitSeconds=3600)),
    ("llamafinetunes", "resources.maxWaitSeconds applies only to spot training",
     FT, merged(FT, resources__maxWaitSeconds=90000)),
    ("llamafinetunes", "resources.spot needs resources.checkpointS3Uri",
     specdata.FINETUNE_DEEPSPEED, merged(specdata.FINETUNE_DEEPSPEED, resources__checkpointS3Uri=None)),
    ("llamafinetunes", "hyperparameters.precision bf16 needs an Ampere or newer GPU",
     merged(FT, resources__instanceType="ml.g4dn.12xlarge", hyperparameters__precision="fp16"),
     merged(FT, resources__instanceType="ml.g4dn.12xlarge")),
    ("llamafinetunes", "method.type smp (SageMaker model parallelism v2) runs only on ml.p4d",
     specdata.FINETUNE_SMP, merged(specdata.FINETUNE_SMP, resources__instanceType="ml.g5.48xlarge")),
    ("llamafinetunes", "method.type smp trains in bf16 or fp32 only",
     merged(specdata.FINETUNE_SMP, hyperparameters__precision="fp32"),
     merged(specdata.FINETUNE_SMP, hyperparameters__precision="fp16")),
    ("llamafinetunes", "method.peft.type qlora loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU",
     merged(FT, method={"zeroStage": 2, "peft": {"type": "qlora"}}),
     merged(FT, method={"zeroStage": 2, "peft": {"type": "qlora"}}, resources__instanceType="ml.m5.2xlarge")),
    ("llamafinetunes", "method.peft.type qlora trains with method.type deepspeed and zeroStage 1 or 2",
     merged(FT, method={"zeroStage": 2, "peft": {"type": "qlora"}}), merged(FT, method={"peft": {"type": "qlora"}})),
    ("llamafinetunes", "method.peft with method.type smp needs tensorParallelDegree 1",
     merged(specdata.FINETUNE_SMP, method__tensorParallelDegree=1, method__peft={"type": "lora"}),
     merged(specdata.FINETUNE_SMP, method__peft={"type": "lora"})),
    ("llamafinetunes", "output.mergeAdapter applies only to a parameter-efficient fine-tune",
     merged(FT, method__peft={"type": "lora"}, output={"mergeAdapter": True}), merged(FT, output={"mergeAdapter": True})),
    ("llamafinetunes", "environment names must match",
     merged(FT, environment={"NCCL_DEBUG": "INFO"}), merged(FT, environment={"NCCL-DEBUG": "INFO"})),
    ("llamafinetunes", "tags: keys must be at most 128 characters and must not start with llamaops.dev/",
     merged(FT, tags={"team": "a"}), merged(FT, tags={"llamaops.dev/uid": "forged"})),
    ("llamaendpoints", "set exactly one of model.s3Uri or model.fromFinetune",
     merged(EP, model={"fromFinetune": "ft"}), merged(EP, model={"s3Uri": "s3://bkt/m/", "fromFinetune": "ft"})),
    ("llamaendpoints", "serving.maxRollingBatchSize and serving.maxModelLength apply only to serving.engine vllm",
     merged(EP, serving={"maxRollingBatchSize": 8}), merged(EP, serving={"engine": "batching", "maxModelLength": 512})),
    ("llamaendpoints", "serving.tensorParallelDegree above 1 needs serving.engine vllm",
     merged(EP, serving={"engine": "batching", "tensorParallelDegree": 1}),
     merged(EP, serving={"engine": "batching", "tensorParallelDegree": 2})),
    ("llamaendpoints", "serving.maxBatchSize and serving.maxWaitMs apply only to serving.engine batching",
     specdata.ENDPOINT_BATCHING, merged(EP, serving={"maxWaitMs": 10})),
    ("llamaendpoints", "deployment.canaryPercent applies only to deployment.strategy Canary",
     merged(EP, deployment={"strategy": "Canary", "canaryPercent": 5}), merged(EP, deployment={"canaryPercent": 5})),
    ("llamaendpoints", "deployment.rollbackAlarms are watched only when deployment.autoRollback is true",
     merged(EP, deployment={"rollbackAlarms": ["a"]}),
     merged(EP, deployment={"autoRollback": False, "rollbackAlarms": ["a"]})),
    ("llamaendpoints", "serving.dtype bf16 needs an Ampere or newer GPU",
     merged(EP, resources__instanceType="ml.g4dn.xlarge", serving={"dtype": "fp16"}),
     merged(EP, resources__instanceType="ml.g4dn.xlarge")),
    ("llamaendpoints", "set exactly one of s3Uri or fromFinetune for each of model.adapters",
     merged(EP, model={"s3Uri": "s3://bkt/m/", "adapters": [{"name": "a", "fromFinetune": "ft"}]},
            serving={"engine": "batching"}),
     merged(EP, model={"s3Uri": "s3://bkt/m/", "adapters": [{"name": "a"}]}, serving={"engine": "batching"})),
    ("llamaendpoints", "model.adapters: each adapter needs its own name",
     merged(EP, model={"s3Uri": "s3://bkt/m/", "adapters": [{"name": "a", "fromFinetune": "ft"},
                                                           {"name": "b", "s3Uri": "s3://bkt/b/"}]},
            serving={"engine": "batching"}),
     merged(EP, model={"s3Uri": "s3://bkt/m/", "adapters": [{"name": "a", "fromFinetune": "ft"},
                                                           {"name": "a", "s3Uri": "s3://bkt/b/"}]},
            serving={"engine": "batching"})),
    ("llamaendpoints", "scaling.minInstances must not exceed scaling.maxInstances",
     merged(EP, scaling={"minInstances": 2, "maxInstances": 2, "target": {"invocationsPerInstance": 100}},
            resources={"instanceType": "ml.g5.2xlarge", "instanceCount": 2}),
     merged(EP, scaling={"minInstances": 3, "maxInstances": 2, "target": {"invocationsPerInstance": 100}})),
    ("llamaendpoints", "resources.instanceCount is the count the endpoint starts with",
     merged(EP, scaling={"minInstances": 1, "maxInstances": 4, "target": {"invocationsPerInstance": 100}},
            resources={"instanceType": "ml.g5.2xlarge", "instanceCount": 4}),
     merged(EP, scaling={"minInstances": 2, "maxInstances": 4, "target": {"invocationsPerInstance": 100}},
            resources={"instanceType": "ml.g5.2xlarge", "instanceCount": 1})),
    ("llamaendpoints", "deployment.strategy Canary is a blue/green traffic shift of deployment.mode variant",
     merged(EP, deployment={"mode": "inferenceComponents"}),
     merged(EP, deployment={"mode": "inferenceComponents", "strategy": "Canary"})),
    ("llamaendpoints", "scaling.target.concurrentRequestsPerCopy counts model copies",
     merged(EP, deployment={"mode": "inferenceComponents"},
            scaling={"maxInstances": 2, "target": {"concurrentRequestsPerCopy": 4}}),
     merged(EP, scaling={"maxInstances": 2, "target": {"concurrentRequestsPerCopy": 4}})),
    ("llamaendpoints", "scaling.target.invocationsPerInstance applies to deployment.mode variant",
     merged(EP, scaling={"maxInstances": 2, "target": {"invocationsPerInstance": 4}}),
     merged(EP, deployment={"mode": "inferenceComponents"},
            scaling={"maxInstances": 2, "target": {"invocationsPerInstance": 4}})),
    ("llamaendpoints", "scaling.minInstances 0 (scale to zero) needs deployment.mode inferenceComponents",
     merged(EP, deployment={"mode": "inferenceComponents"},
            scaling={"minInstances": 0, "maxInstances": 2, "target": {"concurrentRequestsPerCopy": 4}}),
     merged(EP, scaling={"minInstances": 0, "maxInstances": 2, "target": {"invocationsPerInstance": 4}})),
    ("llamaendpoints", "set exactly one of scaling.target.invocationsPerInstance",
     merged(EP, scaling={"maxInstances": 2, "target": {"invocationsPerInstance": 4}}),
     merged(EP, scaling={"maxInstances": 2, "target": {"invocationsPerInstance": 4,
                                                       "concurrentRequestsPerCopy": 4}})),
    ("llamaendpoints", "environment names must match",
     merged(EP, environment={"OPTION_X": "1"}), merged(EP, environment={"1X": "1"})),
    ("llamaendpoints", "tags: keys must be at most 128 characters and must not start with llamaops.dev/",
     merged(EP, tags={"team": "a"}), merged(EP, tags={"aws:cloudformation": "x"})),
]


@pytest.mark.parametrize("kind,message,good,bad", CASES, ids=[c[1][:50] for c in CASES])
def test_rule_accepts_the_good_object_and_names_the_fix_for_the_bad(kind, message, good, bad):
    assert crdtools.validate_spec(kind, good) == []
    errors = crdtools.validate_spec(kind, bad)
    assert any(e.startswith(message) for e in errors), errors
    MODELS[kind].model_validate(good)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        MODELS[kind].model_validate(bad)


def test_every_rule_has_a_case():
    covered = {(kind, message) for kind, message, _, _ in CASES}
    for kind in MODELS:
        for _, rule in crdtools.rules(crdtools.spec_schema(kind)):
            if "oldSelf" in rule["rule"]:
                continue
            assert any(k == kind and rule["message"].startswith(m) or (k == kind and m in rule["message"])
                       for k, m in covered), rule["message"]


IMMUTABLE = "spec is immutable once the training job exists; create a new LlamaFinetune"


def _finetune(spec: dict, status: dict | None = None) -> dict:
    obj = {"apiVersion": "llamaops.dev/v1alpha1", "kind": "LlamaFinetune",
           "metadata": {"name": "tune", "namespace": "team"}, "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


def test_finetune_spec_is_immutable_once_the_job_exists_except_deletion_policy():
    old = specdata.FINETUNE_DEEPSPEED
    running = _finetune(old, {"phase": "InProgress", "trainingJobName": "team-tune-0123abcd"})
    retained = merged(old, deletionPolicy="Delete")
    assert crdtools.validate_object("llamafinetunes", _finetune(retained, running["status"]), running) == []
    LlamaFinetuneSpec.model_validate(retained).check_update(LlamaFinetuneSpec.model_validate(old))
    for change in (dict(hyperparameters__learningRate=0.5), dict(image=None), dict(tags={"team": "b"}),
                   dict(resources__instanceCount=8), dict(dataset__validation=None)):
        new = merged(old, **change)
        errors = crdtools.validate_object("llamafinetunes", _finetune(new, running["status"]), running)
        assert any(e.startswith(f"spec: Invalid value: \"object\": {IMMUTABLE}") for e in errors), (change, errors)
        with pytest.raises(ValueError, match=IMMUTABLE):
            LlamaFinetuneSpec.model_validate(new).check_update(LlamaFinetuneSpec.model_validate(old))
        # before the job exists (refused, say), the same change is a fix applied in place
        refused = _finetune(old, {"phase": "Failed", "failureReason": "role not allowed"})
        assert crdtools.validate_object("llamafinetunes", _finetune(new), refused) == [], change
    # Re-applying the same spec with defaults spelled out (as GitOps tools do) is no change.
    spelled = crdtools.default(crdtools.spec_schema("llamafinetunes"), specdata.FINETUNE_MIN)
    running = _finetune(specdata.FINETUNE_MIN, {"trainingJobName": "team-tune-0123abcd"})
    assert crdtools.validate_object("llamafinetunes", _finetune(spelled, running["status"]), running) == []


@pytest.mark.parametrize("engine,message", [
    ("vllm", "serving.tensorParallelDegree max: leave tensorParallelDegree out to split each model copy over all "
             "GPUs of the instance"),
    ("batching", "serving.tensorParallelDegree max: the batching engine runs one model copy on one GPU; set "
                 "tensorParallelDegree to 1 or leave it out, or set serving.engine to vllm"),
])
def test_tensor_parallel_degree_max_is_refused_with_the_fix(engine, message):
    """`max` is what an absent tensorParallelDegree means with vllm (the CRD types the field integer,
    so CEL never sees a string there): the API server refuses the string at
    spec.serving.tensorParallelDegree, and the operator's validation names the field and the fix."""
    from llama_operator.spec import LlamaEndpointSpec, validate

    bad = merged(EP, serving={"engine": engine, "tensorParallelDegree": "max"})
    errors = crdtools.validate_spec("llamaendpoints", bad)
    assert errors and all(e.startswith("serving.tensorParallelDegree: ") for e in errors), errors
    with pytest.raises(ValueError) as err:
        validate(LlamaEndpointSpec, bad)
    assert f"spec.serving.tensorParallelDegree: Value error, {message}" in str(err.value)
    assert crdtools.validate_spec("llamaendpoints", merged(EP, serving={"engine": engine})) == []
    validate(LlamaEndpointSpec, merged(EP, serving={"engine": engine}))


def test_a_status_write_does_not_rerun_the_rules_of_an_unchanged_spec_but_a_spec_change_does():
    # Stored before a rule existed (or under a laxer CRD): validation ratcheting lets the status
    # move on, as kube-apiserver 1.30+ does, and still refuses touching the offending field.
    bad = merged(FT, method__zeroStage=1, method__type="smp", resources__instanceType="ml.p4d.24xlarge")
    stored = {"apiVersion": "llamaops.dev/v1alpha1", "kind": "LlamaFinetune",
              "metadata": {"name": "old", "namespace": "default"}, "spec": bad}
    assert any("method.zeroStage applies only" in e for e in crdtools.validate_object("llamafinetunes", stored))
    with_status = {**stored, "status": {"phase": "InProgress"}}
    assert crdtools.validate_object("llamafinetunes", with_status, stored) == []
    changed = {**with_status, "spec": merged(bad, method__zeroStage=2)}
    assert any("method.zeroStage applies only" in e for e in crdtools.validate_object("llamafinetunes", changed, stored))
