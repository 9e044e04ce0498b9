"""Adapter inference components on the local SageMaker service, reached only through boto3: a tiny
Llama served by workloads/serve/sm_server.py as the base component's copies, random PEFT LoRA
adapters as tar.gz artifacts in S3, registered on every copy (those that start later too), invoked,
updated, deleted; every refusal AWS's rules call for, and artifacts that fail."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import functools

import pytest
import sagemaker_helpers
from botocore.exceptions import ClientError
from llama_operator.paths import workloads_dir
from sagemaker_helpers import BUCKET, CONTAINERS, ROLE, copies, unique, validated, wait_endpoint, wait_ic_gone

LLAMA_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/local-llama:1"
PROMPT = "Hello, how are you today?"
NO_CAPACITY = ("Inference Component has no capacity to process this request. ApplicationAutoScaling may be "
               "in-progress (if configured) or try to increase the capacity by invoking "
               "UpdateInferenceComponentRuntimeConfig API.")
DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
PERIOD = 0.2  # seconds per Application Auto Scaling minute: a CloudWatch alarm's 30 s Period lasts 0.1 s

# copies load a real model: give them longer than the stub tests do
wait_ic = functools.partial(sagemaker_helpers.wait_ic, timeout=180)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):  # this module's own service: copies of the local-llama image run sm_server.py
    from llama_operator.local.stack import LocalStack

    containers = {**CONTAINERS, "local-llama": "{python} {workloads}/serve/sm_server.py"}
    with LocalStack(tmp_path_factory.mktemp("sm-adapter-state"), containers=containers,
                    autoscaling_period=PERIOD) as s:
        s.client("s3").create_bucket(Bucket=BUCKET)
        yield s


# ---- artifacts -------------------------------------------------------------------------------

def _targz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _folder(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


def _adapter_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def _put(s3, key: str, data: bytes) -> str:
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


@pytest.fixture(scope="module")
def artifacts(s3, tmp_path_factory):
    """The tiny Llama (with room for 4 adapters of rank <= 8) as a model.tar.gz, and adapter
    artifacts: good ones (files at the top level, or in one folder) and bad ones."""
    import torch
    from llama_operator.local.demo.tinymodel import build_tiny_llama
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(workloads_dir() / "serve"))  # the workload's modules import each other by name
    from lora_adapters import write_random_adapter

    root = tmp_path_factory.mktemp("adapter-artifacts")
    model_dir = build_tiny_llama(root / "tiny")
    (model_dir / "serving.properties").write_text(
        "option.enable_lora=true\noption.max_loras=4\noption.max_lora_rank=8\noption.max_new_tokens=16\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    alpha = _adapter_files(write_random_adapter(model, root / "alpha", rank=4, seed=1, b_std=0.5))
    beta = _adapter_files(write_random_adapter(model, root / "beta", rank=8, seed=2, b_std=0.5))
    wide = _adapter_files(write_random_adapter(model, root / "wide", rank=16, seed=3, b_std=0.5))
    prefix = unique("adapters")
    return {
        "model": _put(s3, f"{prefix}/model.tar.gz", buf.getvalue()),
        "alpha": _put(s3, f"{prefix}/alpha.tar.gz", _targz([_file(n, d) for n, d in alpha.items()])),
        "beta": _put(s3, f"{prefix}/beta.tar.gz", _targz([_folder("beta-adapter")] + [
            _file(f"beta-adapter/{n}", d) for n, d in beta.items()])),
        "wide": _put(s3, f"{prefix}/wide.tar.gz", _targz([_file(n, d) for n, d in wide.items()])),
        "missing": f"s3://{BUCKET}/{prefix}/nothing-here.tar.gz",
        "not-gzip": _put(s3, f"{prefix}/plain.tar.gz", b"these bytes are no archive"),
        "no-adapter": _put(s3, f"{prefix}/readme.tar.gz", _targz([_file("README.md", b"no adapter here")])),
        "two-folders": _put(s3, f"{prefix}/split.tar.gz", _targz([
            _file("a/adapter_config.json", alpha["adapter_config.json"]),
            _file("b/adapter_model.safetensors", alpha["adapter_model.safetensors"])])),
        "link": _put(s3, f"{prefix}/link.tar.gz", _targz([_file(n, d) for n, d in alpha.items()] + [
            _link("extra.json", "/etc/passwd")])),
        "climbing": _put(s3, f"{prefix}/climb.tar.gz", _targz([_file(n, d) for n, d in alpha.items()] + [
            _file("../outside.json", b"{}")])),
    }


def _link(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


# ---- service helpers -------------------------------------------------------------------------

def _error(call, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(ClientError) as err:
        call(*args, **kwargs)
    return err.value.response["Error"]["Code"], err.value.response["Error"]["Message"]


def _ask(rt, endpoint: str, component: str) -> str:
    """The greedy answer of a component (its adapter's, for an adapter component) to PROMPT."""
    resp = rt.invoke_endpoint(EndpointName=endpoint, InferenceComponentName=component, ContentType="application/json",
                              Body=json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": 12,
                                                                                 "do_sample": False}}).encode())
    assert resp["InvokedProductionVariant"] == "AllTraffic"
    return json.loads(resp["Body"].read())["generated_text"]


def _adapter(name: str, endpoint: str, base: str, url: str, **extra) -> dict:
    return {"InferenceComponentName": name, "EndpointName": endpoint,
            "Specification": {"BaseInferenceComponentName": base, "Container": {"ArtifactUrl": url}}, **extra}


def _ic_endpoint(sm, name: str) -> str:
    sm.create_endpoint_config(EndpointConfigName=name, ExecutionRoleArn=ROLE, ProductionVariants=[{
        "VariantName": "AllTraffic", "InstanceType": "ml.g5.2xlarge", "InitialInstanceCount": 1,
        "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 2}}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    assert wait_endpoint(sm, name)["EndpointStatus"] == "InService"
    return name


def _logs(stack, component: str) -> str:
    return subprocess.run([sys.executable, "-m", "llama_operator", "logs", component, "--inference-component",
                           "--state-dir", str(stack.state_dir)], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def base(sm, rt, artifacts):
    """An endpoint for components with one copy of the tiny Llama (its base component), another
    endpoint for components, and adapter component `alpha` on the base, InService."""
    model = unique("llama")
    sm.create_model(ModelName=model, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": LLAMA_IMAGE, "ModelDataUrl": artifacts["model"]})
    endpoint = _ic_endpoint(sm, unique("adep"))
    other = _ic_endpoint(sm, unique("adother"))
    name = unique("adbase")
    sm.create_inference_component(
        InferenceComponentName=name, EndpointName=endpoint, VariantName="AllTraffic", RuntimeConfig={"CopyCount": 1},
        Specification={"ModelName": model, "StartupParameters": {"ContainerStartupHealthCheckTimeoutInSeconds": 300},
                       "ComputeResourceRequirements": {"NumberOfAcceleratorDevicesRequired": 1,
                                                       "MinMemoryRequiredInMb": 1024}})
    d = wait_ic(sm, name)
    assert d["InferenceComponentStatus"] == "InService", d.get("FailureReason")
    alpha = unique("alpha")
    sm.create_inference_component(**_adapter(alpha, endpoint, name, artifacts["alpha"]))
    d = wait_ic(sm, alpha)
    assert d["InferenceComponentStatus"] == "InService", d.get("FailureReason")
    return {"model": model, "endpoint": endpoint, "other": other, "name": name, "alpha": alpha,
            "answer": _ask(rt, endpoint, name), "alpha_answer": _ask(rt, endpoint, alpha)}


# ---- tests -----------------------------------------------------------------------------------

def test_an_adapter_serves_its_own_answer_and_is_described_as_aws_does(sm, rt, base, artifacts):
    assert base["alpha_answer"] != base["answer"]  # the same greedy prompt, with and without the adapter
    d = sm.describe_inference_component(InferenceComponentName=base["alpha"])
    assert d["Specification"] == {"BaseInferenceComponentName": base["name"],
                                  "Container": {"ArtifactUrl": artifacts["alpha"]}}
    assert d["VariantName"] == "AllTraffic" and "RuntimeConfig" not in d and "FailureReason" not in d
    listed = sm.list_inference_components(EndpointNameEquals=base["endpoint"])["InferenceComponents"]
    assert {i["InferenceComponentName"] for i in listed} == {base["name"], base["alpha"]}
    assert all(i["InferenceComponentStatus"] == "InService" for i in listed)
    assert _ask(rt, base["endpoint"], base["name"]) == base["answer"]  # the base is unchanged


_CREATE_REFUSALS = {
    "base missing": (lambda r, b, a: r["Specification"].update(BaseInferenceComponentName="nobase"),
                     ('Could not find base inference component "arn:aws:sagemaker:us-east-1:123456789012:'
                      'inference-component/nobase"')),
    "base is an adapter": (lambda r, b, a: r["Specification"].update(BaseInferenceComponentName=b["alpha"]),
                           ("is an adapter inference component: BaseInferenceComponentName must name an inference "
                            "component that hosts a model")),
    "base on another endpoint": (lambda r, b, a: r.update(EndpointName=b["other"]),
                                 "an adapter inference component must be created on the endpoint of its base"),
    "no ArtifactUrl": (lambda r, b, a: r["Specification"].update(Container={}),
                       "Specification.Container.ArtifactUrl is required"),
    "no Container": (lambda r, b, a: r["Specification"].pop("Container"),
                     "Specification.Container.ArtifactUrl is required"),
    "ComputeResourceRequirements": (
        lambda r, b, a: r["Specification"].update(ComputeResourceRequirements={"MinMemoryRequiredInMb": 1024}),
        "Specification.ComputeResourceRequirements must not be specified for an adapter inference component"),
    "ModelName": (lambda r, b, a: r["Specification"].update(ModelName=b["model"]),
                  "Specification.ModelName must not be specified for an adapter inference component"),
    "RuntimeConfig": (lambda r, b, a: r.update(RuntimeConfig={"CopyCount": 1}),
                      "RuntimeConfig must not be specified for an adapter inference component"),
    "StartupParameters": (
        lambda r, b, a: r["Specification"].update(StartupParameters={"ContainerStartupHealthCheckTimeoutInSeconds": 60}),
        "Specification.StartupParameters must not be specified for an adapter inference component"),
    "Container.Image": (lambda r, b, a: r["Specification"]["Container"].update(Image=LLAMA_IMAGE),
                        "Specification.Container.Image must not be specified for an adapter inference component"),
    "another variant": (lambda r, b, a: r.update(VariantName="Other"),
                        "Variant Other is not the variant of base inference component"),
    "duplicate": (lambda r, b, a: r.update(InferenceComponentName=b["alpha"]),
                  "Cannot create already existing inference component"),
    "not s3": (lambda r, b, a: r["Specification"]["Container"].update(ArtifactUrl="https://example.com/a.tar.gz"),
               "is not supported by the local SageMaker service: give an s3:// URI"),
}


@pytest.mark.parametrize("case", list(_CREATE_REFUSALS))
def test_create_refusals(sm, base, artifacts, case):
    mutate, expected = _CREATE_REFUSALS[case]
    request = _adapter(unique("adno"), base["endpoint"], base["name"], artifacts["beta"])
    mutate(request, base, artifacts)
    code, message = _error(sm.create_inference_component, **request)
    assert code == "ValidationException" and expected in message, message


def test_what_has_copies_is_refused_on_an_adapter(sm, aas, base, artifacts):
    alpha = base["alpha"]
    for kwargs, expected in (
            ({"DeploymentConfig": {"RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "COPY_COUNT", "Value": 1},
                                                         "WaitIntervalInSeconds": 0}},
              "Specification": {"Container": {"ArtifactUrl": artifacts["beta"]}}},
             "DeploymentConfig must not be specified for adapter inference component"),
            ({"RuntimeConfig": {"CopyCount": 2}}, "RuntimeConfig must not be specified for adapter inference component"),
            ({"Specification": {"BaseInferenceComponentName": base["alpha"],
                                "Container": {"ArtifactUrl": artifacts["beta"]}}},
             "cannot change"),
            ({"Specification": {"Container": {"ArtifactUrl": artifacts["beta"]},
                                "ComputeResourceRequirements": {"MinMemoryRequiredInMb": 1024}}},
             "Specification.ComputeResourceRequirements must not be specified")):
        code, message = _error(sm.update_inference_component, InferenceComponentName=alpha, **kwargs)
        assert code == "ValidationException" and expected in message, message
    code, message = _error(sm.update_inference_component_runtime_config, InferenceComponentName=alpha,
                           DesiredRuntimeConfig={"CopyCount": 2})
    assert code == "ValidationException" and f"runs on the copies of its base inference component {base['name']}" \
        in message, message
    code, message = _error(aas.register_scalable_target, ServiceNamespace="sagemaker",
                           ResourceId=f"inference-component/{alpha}", ScalableDimension=DIMENSION,
                           MinCapacity=0, MaxCapacity=2)
    assert code == "ValidationException" and "is an adapter inference component" in message, message
    code, message = _error(sm.update_inference_component, InferenceComponentName=base["name"],
                           Specification={"BaseInferenceComponentName": alpha})
    assert code == "ValidationException" and "cannot become an adapter" in message, message
    code, message = _error(sm.delete_inference_component, InferenceComponentName=base["name"])
    assert code == "ValidationException" and "Delete the adapter inference components" in message and \
        alpha in message, message
    assert sm.describe_inference_component(InferenceComponentName=alpha)["InferenceComponentStatus"] == "InService"
    assert sm.describe_inference_component(InferenceComponentName=base["name"])["InferenceComponentStatus"] == \
        "InService"


def test_a_second_adapter_updated_to_another_artifact_then_deleted(sm, rt, base, artifacts):
    endpoint, beta = base["endpoint"], unique("beta")
    sm.create_inference_component(**_adapter(beta, endpoint, base["name"], artifacts["beta"], VariantName="AllTraffic"))
    d = wait_ic(sm, beta)
    assert d["InferenceComponentStatus"] == "InService", d.get("FailureReason")
    answer = _ask(rt, endpoint, beta)  # its files were in one folder of the archive
    assert answer not in (base["answer"], base["alpha_answer"])
    assert _ask(rt, endpoint, base["alpha"]) == base["alpha_answer"]

    # updated to alpha's artifact: unregistered and registered again on the copy, then alpha's answer
    sm.update_inference_component(InferenceComponentName=beta, Specification={
        "Container": {"ArtifactUrl": artifacts["alpha"]}})
    d = wait_ic(sm, beta, lambda d: d["Specification"]["Container"]["ArtifactUrl"] == artifacts["alpha"] and
                 d["InferenceComponentStatus"] in ("InService", "Failed"))
    assert d["InferenceComponentStatus"] == "InService", d.get("FailureReason")
    assert d["Specification"]["Container"] == {"ArtifactUrl": artifacts["alpha"]}
    assert _ask(rt, endpoint, beta) == base["alpha_answer"]

    # an update to an artifact the container refuses: Failed (an adapter has no rollback), serving nowhere
    sm.update_inference_component(InferenceComponentName=beta, Specification={
        "Container": {"ArtifactUrl": artifacts["wide"]}})
    d = wait_ic(sm, beta)
    assert d["InferenceComponentStatus"] == "Failed" and artifacts["wide"] in d["FailureReason"], d
    assert _error(_ask, rt, endpoint, beta) == ("ValidationError", NO_CAPACITY)

    sm.delete_inference_component(InferenceComponentName=beta)
    wait_ic_gone(sm, beta)
    assert _error(_ask, rt, endpoint, beta) == (
        "ValidationError", f"Inference Component {beta} not found for endpoint {endpoint} of account 123456789012.")
    assert _ask(rt, endpoint, base["alpha"]) == base["alpha_answer"]


_FAILURES = {
    "missing": "Failed to download the adapter artifact",
    "not-gzip": "is not a gzip-compressed tar archive",
    "no-adapter": "holds no LoRA adapter: adapter_config.json and adapter_model.safetensors",
    "two-folders": "holds no LoRA adapter",
    "link": "'extra.json' is a symbolic link",
    "climbing": "'../outside.json' points outside the archive's folder",
    "wide": "the container answered HTTP",  # rank 16 above the copies' max_lora_rank 8
}


@pytest.mark.parametrize("case", list(_FAILURES))
def test_a_bad_artifact_fails_the_adapter_with_a_reason(sm, rt, base, artifacts, case):
    name = unique("adbad")
    sm.create_inference_component(**_adapter(name, base["endpoint"], base["name"], artifacts[case]))
    d = wait_ic(sm, name)
    assert d["InferenceComponentStatus"] == "Failed", d
    assert artifacts[case] in d["FailureReason"] and _FAILURES[case] in d["FailureReason"], d["FailureReason"]
    assert _error(_ask, rt, base["endpoint"], name) == ("ValidationError", NO_CAPACITY)
    code, message = _error(sm.update_inference_component, InferenceComponentName=name,
                           Specification={"Container": {"ArtifactUrl": artifacts["alpha"]}})
    assert code == "ValidationException" and "in status Failed" in message
    sm.delete_inference_component(InferenceComponentName=name)
    wait_ic_gone(sm, name)
    assert _ask(rt, base["endpoint"], base["alpha"]) == base["alpha_answer"]  # the others serve on


def test_copies_that_start_later_get_every_adapter_first(stack, sm, rt, aas, base, artifacts):
    endpoint, name, alpha = base["endpoint"], base["name"], base["alpha"]
    # scale out: the second copy (a second instance) registers alpha before it takes traffic
    sm.update_inference_component_runtime_config(InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": 2})
    wait_ic(sm, name, copies(2))
    assert _logs(stack, name).count(f"adapter {alpha} registered") >= 2
    assert {_ask(rt, endpoint, alpha) for _ in range(4)} == {base["alpha_answer"]}

    # scaled to zero: the adapter's invocations find no capacity; an adapter created now is InService at once
    sm.update_inference_component_runtime_config(InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": 0})
    wait_ic(sm, name, copies(0))
    assert _error(_ask, rt, endpoint, alpha) == ("ValidationError", NO_CAPACITY)
    gamma = unique("gamma")
    sm.create_inference_component(**_adapter(gamma, endpoint, name, artifacts["beta"]))
    assert wait_ic(sm, gamma, timeout=30)["InferenceComponentStatus"] == "InService"

    # one that the copies refuse (rank 16 above their max_lora_rank 8) can only be found out when a copy
    # starts: that copy fails as one that fails /ping, and the base says why
    wide = unique("wide")
    sm.create_inference_component(**_adapter(wide, endpoint, name, artifacts["wide"]))
    assert wait_ic(sm, wide, timeout=30)["InferenceComponentStatus"] == "InService"
    sm.update_inference_component_runtime_config(InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": 1})
    d = wait_ic(sm, name, lambda d: d["InferenceComponentStatus"] == "InService" and "FailureReason" in d)
    assert d["RuntimeConfig"] == {"DesiredCopyCount": 0, "CurrentCopyCount": 0}
    assert wide in d["FailureReason"] and artifacts["wide"] in d["FailureReason"], d["FailureReason"]
    assert "the container answered HTTP 424" in d["FailureReason"], d["FailureReason"]
    sm.delete_inference_component(InferenceComponentName=wide)
    wait_ic_gone(sm, wide)

    # woken by the base's step scaling policy: an adapter's invocation that finds no copy counts a
    # NoCapacityInvocationFailures datapoint for the base, whose alarm wakes it; the new copy has both
    # adapters before it serves
    target = {"ServiceNamespace": "sagemaker", "ResourceId": f"inference-component/{name}",
              "ScalableDimension": DIMENSION}
    aas.register_scalable_target(**target, MinCapacity=0, MaxCapacity=1)
    step = aas.put_scaling_policy(**target, PolicyName="wake-up", PolicyType="StepScaling",
                                  StepScalingPolicyConfiguration={
                                      "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Maximum",
                                      "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]})
    stack.client("cloudwatch").put_metric_alarm(
        AlarmName=f"{name}-no-capacity", AlarmActions=[step["PolicyARN"]], MetricName="NoCapacityInvocationFailures",
        Namespace="AWS/SageMaker", Statistic="Maximum", Dimensions=[{"Name": "InferenceComponentName", "Value": name}],
        Period=30, EvaluationPeriods=1, DatapointsToAlarm=1, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="missing")
    deadline = time.monotonic() + 120
    while True:
        try:
            answer = _ask(rt, endpoint, alpha)
            break
        except ClientError as exc:  # only no-capacity refusals while the base wakes up
            assert exc.response["Error"]["Message"] == NO_CAPACITY and time.monotonic() < deadline
            time.sleep(0.5)
    assert answer == base["alpha_answer"]
    assert sm.describe_inference_component(InferenceComponentName=name)["RuntimeConfig"]["CurrentCopyCount"] == 1
    aas.deregister_scalable_target(**target)
    gamma_answer = _ask(rt, endpoint, gamma)
    assert gamma_answer not in (base["answer"], base["alpha_answer"])

    # a rolling update of the base's container: the new copy gets the adapters before traffic moves to it
    sm.update_inference_component(InferenceComponentName=name, Specification={
        "Container": {"Image": LLAMA_IMAGE, "Environment": {"SM_SERVER_LOG_LEVEL": "INFO"}}})
    d = wait_ic(sm, name, lambda d: d["InferenceComponentStatus"] == "InService" and "Container" in d["Specification"])
    assert "FailureReason" not in d and d["RuntimeConfig"]["CurrentCopyCount"] == 1
    assert _ask(rt, endpoint, alpha) == base["alpha_answer"] and _ask(rt, endpoint, gamma) == gamma_answer
    assert _ask(rt, endpoint, name) == base["answer"]
    sm.delete_inference_component(InferenceComponentName=gamma)
    wait_ic_gone(sm, gamma)


def test_adapters_come_back_after_a_restart_then_go_before_their_base(stack, base):
    stack.restart()
    sm, rt = validated(stack.client("sagemaker")), validated(stack.client("sagemaker-runtime"))
    endpoint, name, alpha = base["endpoint"], base["name"], base["alpha"]
    wait_ic(sm, name, copies(1))
    assert wait_ic(sm, alpha)["InferenceComponentStatus"] == "InService"
    assert _ask(rt, endpoint, alpha) == base["alpha_answer"]

    sm.delete_inference_component(InferenceComponentName=alpha)
    sm.delete_inference_component(InferenceComponentName=name)  # its last adapter is going (or gone): allowed
    wait_ic_gone(sm, alpha)
    wait_ic_gone(sm, name)
    assert sm.list_inference_components(EndpointNameEquals=endpoint)["InferenceComponents"] == []
    sm.delete_endpoint(EndpointName=endpoint)
    sm.delete_endpoint(EndpointName=base["other"])


@pytest.mark.parametrize("entry, expected", [
    (("/etc/adapter_config.json", tarfile.REGTYPE), "points outside the archive's folder"),
    (("a/../../adapter_config.json", tarfile.REGTYPE), "points outside the archive's folder"),
    (("adapter_config.json", tarfile.LNKTYPE), "is a hard link"),
    (("adapter_config.json", tarfile.SYMTYPE), "is a symbolic link"),
    (("adapter_config.json", tarfile.FIFOTYPE), "not a regular file or folder"),
])
def test_archives_are_extracted_strictly(tmp_path, entry, expected):
    from llama_operator.local.sagemaker import s3io

    name, kind = entry
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind in (tarfile.LNKTYPE, tarfile.SYMTYPE):
        info.linkname = "adapter_model.safetensors"
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_targz([_file("adapter_model.safetensors", b"x"),
                                (info, b"{}" if kind == tarfile.REGTYPE else None)]))
    with pytest.raises(s3io.ArchiveError, match=expected):
        s3io.extract_tar_gz_strictly(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written
    assert not (tmp_path.parent / "adapter_config.json").exists()
