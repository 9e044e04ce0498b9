"""LlamaEndpoint end to end on the embedded default: the real operator (kopf, the LlamaFinetune
and LlamaEndpoint handlers, the SQS events consumer) against the embedded Kubernetes API and the
local SageMaker service, which really trains the tiny model and really serves it with
workloads/serve. Status is driven by events: the resync interval is an hour."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from llama_operator.local.kubernetes.server import EmbeddedKubernetes
from llama_operator.local.stack import LocalStack
from llama_operator.paths import crds_dir
from llama_operator.settings import Settings

from crd_schema import undeclared_fields
from operator_harness import InProcessOperator, environment, jobs_for, owned, wait_for

pytestmark = pytest.mark.slow

API = "llamaops.dev/v1alpha1"
BUCKET = "endpoint-it"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-endpoint"
# An image the local service maps to a server that dies while loading, as a model too big for
# its instance does: the update to it must fail and roll back.
BROKEN_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/broken-lmi:1"
BROKEN_SERVER = ("import sys; print('loading model: CUDA out of memory while loading the weights', flush=True); "
                 "sys.exit(3)")


def chat_rows(n: int) -> str:
    from llama_operator.local.demo.tinymodel import dailydialog_texts

    rows = []
    for i, text in enumerate(dailydialog_texts(limit=n)):
        rows.append(json.dumps({"messages": [{"role": "user", "content": f"Tell me something, {i}."},
                                             {"role": "assistant", "content": text[:200]}]}))
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Local SageMaker + S3/SQS with a tiny base model and data, the embedded Kubernetes API, the
    operator; AWS variables point boto3 at the local services for the module's duration."""
    from llama_operator.local.demo.tinymodel import build_tiny_llama

    state = tmp_path_factory.mktemp("sagemaker")
    containers = {"broken-lmi": f"{sys.executable} -c \"{BROKEN_SERVER}\""}
    with LocalStack(state, containers=containers) as stack:
        s3 = stack.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        base = build_tiny_llama(tmp_path_factory.mktemp("base") / "tiny")
        for f in sorted(Path(base).iterdir()):
            if f.is_file():
                s3.upload_file(str(f), BUCKET, f"models/tiny/{f.name}")
        s3.put_object(Bucket=BUCKET, Key="data/chat/train.jsonl", Body=chat_rows(48).encode())

        fast = {"LLAMA_OPERATOR_MODEL_WAIT_SECONDS": "1", "LLAMA_OPERATOR_ENDPOINT_RETRY_SECONDS": "1",
                "LLAMA_OPERATOR_COMPONENT_POLL_SECONDS": "1"}
        with environment({**stack.env, **fast}), EmbeddedKubernetes(crds_dir=crds_dir()) as kube:
            kubeconfig = kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
            settings = Settings.from_env(region=stack.env["AWS_DEFAULT_REGION"],
                                         events_queue_url=stack.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"],
                                         resync_seconds=3600.0, source_s3_uri=f"s3://{BUCKET}/operator")
            ops = [InProcessOperator(settings, kubeconfig, endpoints=True).__enter__()]
            try:
                yield {"stack": stack, "kube": kube, "ops": ops, "settings": settings, "kubeconfig": kubeconfig,
                       "sm": stack.client("sagemaker"), "rt": stack.client("sagemaker-runtime"), "s3": s3}
            finally:
                for op in ops:
                    op.__exit__()


def finetune(name: str) -> dict:
    return {"apiVersion": API, "kind": "LlamaFinetune", "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "baseModel": {"s3Uri": f"s3://{BUCKET}/models/tiny/"},
                "dataset": {"train": f"s3://{BUCKET}/data/chat/", "format": "chat_jsonl"},
                "method": {"type": "deepspeed", "zeroStage": 1},
                "hyperparameters": {"maxSteps": 4, "learningRate": 0.001, "perDeviceBatchSize": 2,
                                    "maxSequenceLength": 128, "precision": "fp32", "loggingSteps": 1,
                                    "warmupRatio": 0.0},
                "resources": {"instanceType": "ml.m5.xlarge", "instanceCount": 1, "maxRuntimeSeconds": 600},
                "roleArn": ROLE,
                "outputS3Uri": f"s3://{BUCKET}/finetunes",
            }}


def endpoint(name: str, *, source: dict, serving: dict | None = None, image: str | None = None,
             policy: str = "Delete") -> dict:
    spec = {"model": source,
            "serving": serving or {"engine": "batching", "maxNewTokens": 8, "maxBatchSize": 4, "maxWaitMs": 5,
                                   "dtype": "fp32"},
            "resources": {"instanceType": "ml.g5.xlarge", "instanceCount": 1,
                          "containerStartupHealthCheckTimeoutSeconds": 120},
            "roleArn": ROLE,
            "deployment": {"strategy": "AllAtOnce", "waitIntervalSeconds": 0},
            "deletionPolicy": policy}
    if image:
        spec["image"] = image
    return {"apiVersion": API, "kind": "LlamaEndpoint", "metadata": {"name": name, "namespace": "default"},
            "spec": spec}


def get(world, plural: str, name: str) -> dict:
    return world["kube"].get(plural, "default", name) or {}


def phase(world, name: str) -> str | None:
    return get(world, "llamaendpoints", name).get("status", {}).get("phase")


def condition(obj: dict, type_: str) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def invoke(rt, endpoint_name: str, prompt: str, max_new_tokens: int = 8) -> str:
    resp = rt.invoke_endpoint(EndpointName=endpoint_name, ContentType="application/json",
                              Accept="application/json",
                              Body=json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}}))
    return json.loads(resp["Body"].read())["generated_text"]


def events_for(world, name: str) -> list[tuple[str, str]]:
    items = world["kube"].list("events", "default", api_version="v1")
    return [(e.get("type"), e.get("reason")) for e in items if e.get("involvedObject", {}).get("name") == name]


def test_from_finetune_waits_serves_rolls_blue_green_and_deletes_everything(world):
    kube, sm, rt = world["kube"], world["sm"], world["rt"]
    # Applied together, as a GitOps commit would: the endpoint must wait for the model.
    kube.apply(finetune("chat-tune"))
    kube.apply(endpoint("chat", source={"fromFinetune": "chat-tune"}))

    waiting = wait_for(lambda: (o := get(world, "llamaendpoints", "chat")).get("status", {}).get("phase")
                       == "WaitingForModel" and o, 30, "WaitingForModel")
    assert condition(waiting, "WaitingForModel")["status"] == "True"
    assert "chat-tune" in condition(waiting, "WaitingForModel")["message"]
    assert not sm.list_endpoints()["Endpoints"]  # nothing is created before the model exists

    tuned = wait_for(lambda: (o := get(world, "llamafinetunes", "chat-tune")).get("status", {}).get("phase")
                     in ("Completed", "Failed") and o, 300, "the fine-tune to finish")
    assert tuned["status"]["phase"] == "Completed", tuned["status"].get("failureReason")
    model_uri = tuned["status"]["modelS3Uri"]

    ep = wait_for(lambda: (o := get(world, "llamaendpoints", "chat")).get("status", {}).get("phase")
                  in ("InService", "Failed") and o, 180, "InService")
    st = ep["status"]
    assert st["phase"] == "InService", st.get("failureReason")
    # a real API server prunes what the CRD does not declare: every field written must be in it
    assert undeclared_fields("llamaendpoints", ep) == []
    assert undeclared_fields("llamafinetunes", tuned) == []
    uid = ep["metadata"]["uid"]
    name = st["endpointName"]
    described = sm.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "InService"
    assert st["endpointArn"] == described["EndpointArn"]
    assert st["endpointConfigName"] == described["EndpointConfigName"]
    assert st["invocationUrl"] == f"https://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/{name}/invocations"
    assert st["modelS3Uri"] == model_uri
    assert condition(ep, "Ready")["status"] == "True" and condition(ep, "WaitingForModel")["status"] == "False"

    # What SageMaker was asked for: the LMI image, the code prefix whose serving.properties points
    # at the fine-tuned model, the instance type from the spec.
    config = sm.describe_endpoint_config(EndpointConfigName=st["endpointConfigName"])
    variant = config["ProductionVariants"][0]
    assert variant["ModelName"] == st["modelName"] and variant["InstanceType"] == "ml.g5.xlarge"
    model = sm.describe_model(ModelName=st["modelName"])
    assert "djl-inference" in model["PrimaryContainer"]["Image"]
    code_uri = model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"]
    bucket, _, prefix = code_uri[len("s3://"):].partition("/")
    props = world["s3"].get_object(Bucket=bucket, Key=prefix + "serving.properties")["Body"].read().decode()
    assert model_uri.rstrip("/") in props

    # Served text comes from the fine-tuned model: the same greedy continuation as the weights at
    # status.modelS3Uri give when loaded directly.
    text = invoke(rt, name, "Hello, how are you?")
    assert isinstance(text, str) and text.strip()
    assert text == greedy_reference(world, model_uri, "Hello, how are you?", 8)
    # ...served by our model.py through LMI's handler contract, in the LMI image's environment
    # (its transformers 4), while the model was trained and the reference computed with transformers 5
    server_logs = "".join(p.read_text() for p in (world["stack"].state_dir / "endpoints").glob(f"{name}/logs/*.log"))
    assert re.search(r"lmi_frontend INFO model loaded .* with entry point model\.py \(python \S+, torch 2\.6\.0\S*, "
                     r"transformers 4\.51\.3\)", server_logs), server_logs[-2000:]

    # Spec change -> a new model and config by the new hash, UpdateEndpoint blue/green, while a
    # client keeps calling: no call may fail.
    failures, answers, stop = [], [], threading.Event()

    def keep_invoking():
        while not stop.is_set():
            try:
                answers.append(invoke(rt, name, "What time is it?", 4))
            except Exception as exc:  # counted, asserted below
                failures.append(repr(exc))
            time.sleep(0.05)

    caller = threading.Thread(target=keep_invoking, daemon=True)
    caller.start()
    old_config, old_model = st["endpointConfigName"], st["modelName"]
    changed = endpoint("chat", source={"fromFinetune": "chat-tune"},
                       serving={"engine": "batching", "maxNewTokens": 8, "maxBatchSize": 2, "maxWaitMs": 1,
                                "dtype": "fp32"})
    kube.apply(changed)
    try:
        updating = wait_for(lambda: phase(world, "chat") == "Updating", 30, "Updating")
        assert updating
        rolled = wait_for(lambda: (o := get(world, "llamaendpoints", "chat"))["status"].get("phase") == "InService"
                          and o["status"].get("endpointConfigName") != old_config and o, 180, "the new config")
    finally:
        stop.set()
        caller.join(30)
    assert failures == [] and len(answers) > 5
    new_config, new_model = rolled["status"]["endpointConfigName"], rolled["status"]["modelName"]
    assert new_config != old_config and new_model != old_model
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == new_config
    assert rolled["status"]["observedGeneration"] == rolled["metadata"]["generation"]
    # the old model and config are deleted once the new ones serve
    wait_for(lambda: owned(sm, uid)["Models"] == [new_model], 30, "the old model to be deleted")
    assert owned(sm, uid) == {"Endpoints": [name], "EndpointConfigs": [new_config], "Models": [new_model]}
    reasons = [r for _, r in events_for(world, "chat")]
    assert "WaitingForModel" in reasons and "InService" in reasons and "Updating" in reasons

    # Delete (policy Delete, the default): the object goes only when SageMaker holds nothing of it.
    assert kube.delete("llamaendpoints", "default", "chat") in (200, 202)
    wait_for(lambda: kube.get("llamaendpoints", "default", "chat") is None, 60, "the LlamaEndpoint to go")
    assert owned(sm, uid) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}
    assert not [e for e in sm.list_endpoints()["Endpoints"] if e["EndpointName"] == name]


def greedy_reference(world, model_uri: str, prompt: str, max_new_tokens: int) -> str:
    """The served engine's answer for `prompt` alone, computed from the weights at `model_uri`
    with transformers' greedy generate()."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s3 = world["s3"]
    bucket, _, prefix = model_uri[len("s3://"):].partition("/")
    with tempfile.TemporaryDirectory() as tmp:
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
            rel = obj["Key"][len(prefix):]
            if rel and "/" not in rel:
                s3.download_file(bucket, obj["Key"], os.path.join(tmp, rel))
        tok = AutoTokenizer.from_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32).eval()
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_failed_update_is_degraded_while_the_old_config_serves(world):
    kube, sm, rt = world["kube"], world["sm"], world["rt"]
    base = f"s3://{BUCKET}/models/tiny/"
    kube.apply(endpoint("steady", source={"s3Uri": base}, policy="Retain"))
    ep = wait_for(lambda: (o := get(world, "llamaendpoints", "steady")).get("status", {}).get("phase")
                  in ("InService", "Failed") and o, 180, "InService")
    assert ep["status"]["phase"] == "InService", ep["status"].get("failureReason")
    name, serving = ep["status"]["endpointName"], ep["status"]["endpointConfigName"]
    before = invoke(rt, name, "Good morning")

    broken = endpoint("steady", source={"s3Uri": base}, image=BROKEN_IMAGE, policy="Retain")
    broken["spec"]["resources"]["containerStartupHealthCheckTimeoutSeconds"] = 60
    kube.apply(broken)
    degraded = wait_for(lambda: (o := get(world, "llamaendpoints", "steady"))["status"].get("phase") == "Degraded"
                        and o, 120, "Degraded")
    st = degraded["status"]
    assert "ping health check" in st["failureReason"] and "out of memory" in st["failureReason"]
    assert st["endpointConfigName"] == serving  # the old configuration keeps serving
    assert condition(degraded, "Degraded")["status"] == "True"
    assert condition(degraded, "Ready")["status"] == "True"
    assert invoke(rt, name, "Good morning") == before
    assert ("Warning", "Degraded") in events_for(world, "steady")

    # Retain: the resource goes, the endpoint stays (and is cleaned up here by hand).
    uid = degraded["metadata"]["uid"]
    assert kube.delete("llamaendpoints", "default", "steady") in (200, 202)
    wait_for(lambda: kube.get("llamaendpoints", "default", "steady") is None, 60, "the LlamaEndpoint to go")
    left = owned(sm, uid)
    assert left["Endpoints"] == [name] and serving in left["EndpointConfigs"]
    sm.delete_endpoint(EndpointName=name)
    wait_for(lambda: not [e for e in sm.list_endpoints()["Endpoints"] if e["EndpointName"] == name], 30,
             "the retained endpoint to be deleted by hand")


def test_restart_mid_creation_and_reapply_adopt_instead_of_duplicating(world):
    kube, sm = world["kube"], world["sm"]
    manifest = endpoint("again", source={"s3Uri": f"s3://{BUCKET}/models/tiny/"})
    kube.apply(manifest)
    creating = wait_for(lambda: (o := get(world, "llamaendpoints", "again")).get("status", {}).get("endpointName")
                        and o, 60, "the endpoint to be created")
    uid = creating["metadata"]["uid"]
    # The operator goes away while SageMaker is still creating; a new one resumes the resource
    # and must adopt what exists (and catch up on the events queued meanwhile).
    world["ops"][-1].__exit__()
    first = owned(sm, uid)
    world["ops"].append(InProcessOperator(world["settings"], world["kubeconfig"], endpoints=True).__enter__())
    ep = wait_for(lambda: (o := get(world, "llamaendpoints", "again")).get("status", {}).get("phase")
                  in ("InService", "Failed") and o, 120, "InService after the restart")
    assert ep["status"]["phase"] == "InService", ep["status"].get("failureReason")
    assert owned(sm, uid) == first and [len(v) for v in first.values()] == [1, 1, 1]

    generation = ep["metadata"]["generation"]
    kube.apply(manifest)  # a GitOps re-sync of the same file
    time.sleep(3)
    again = get(world, "llamaendpoints", "again")
    assert again["metadata"]["generation"] == generation and again["status"]["phase"] == "InService"
    assert owned(sm, uid) == first

    assert kube.delete("llamaendpoints", "default", "again") in (200, 202)
    wait_for(lambda: kube.get("llamaendpoints", "default", "again") is None, 60, "the LlamaEndpoint to go")
    assert owned(sm, uid) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}


def test_endpoint_from_a_failed_finetune_fails_with_its_reason(world):
    kube, sm = world["kube"], world["sm"]
    broken = finetune("broken-tune")
    broken["spec"]["baseModel"] = {"s3Uri": f"s3://{BUCKET}/models/nothing-here/"}
    kube.apply(broken)
    kube.apply(endpoint("broken-chat", source={"fromFinetune": "broken-tune"}))
    tuned = wait_for(lambda: (o := get(world, "llamafinetunes", "broken-tune")).get("status", {}).get("phase")
                     in ("Completed", "Failed") and o, 180, "the fine-tune to fail")
    assert tuned["status"]["phase"] == "Failed"
    ep = wait_for(lambda: (o := get(world, "llamaendpoints", "broken-chat")).get("status", {}).get("phase")
                  == "Failed" and o, 30, "the endpoint to fail")
    reason = ep["status"]["failureReason"]
    assert "LlamaFinetune broken-tune is Failed" in reason and tuned["status"]["failureReason"] in reason
    assert condition(ep, "Failed")["status"] == "True" and condition(ep, "Ready")["status"] == "False"
    assert ("Warning", "Failed") in events_for(world, "broken-chat")
    uid = ep["metadata"]["uid"]
    assert owned(sm, uid) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}

    for plural, name in (("llamaendpoints", "broken-chat"), ("llamafinetunes", "broken-tune")):
        assert kube.delete(plural, "default", name) in (200, 202)
        wait_for(lambda: kube.get(plural, "default", name) is None, 60, f"{name} to go")


def test_a_change_during_an_update_waits_for_it_then_rolls_on(world):
    kube, sm, rt = world["kube"], world["sm"], world["rt"]
    source = {"s3Uri": f"s3://{BUCKET}/models/tiny/"}

    def version(wait_ms: int) -> dict:
        return endpoint("busy", source=source, serving={"engine": "batching", "maxNewTokens": 4, "maxBatchSize": 2,
                                                        "maxWaitMs": wait_ms, "dtype": "fp32"})

    kube.apply(version(1))
    ep = wait_for(lambda: (o := get(world, "llamaendpoints", "busy")).get("status", {}).get("phase")
                  in ("InService", "Failed") and o, 120, "InService")
    assert ep["status"]["phase"] == "InService", ep["status"].get("failureReason")
    uid, name = ep["metadata"]["uid"], ep["status"]["endpointName"]
    first = ep["status"]["specHash"]

    # Two commits in a row: the second arrives while SageMaker is still updating to the first.
    kube.apply(version(2))
    wait_for(lambda: phase(world, "busy") == "Updating", 30, "Updating")
    kube.apply(version(3))
    final = wait_for(lambda: (o := get(world, "llamaendpoints", "busy"))["status"].get("phase") == "InService"
                     and o["status"].get("observedGeneration") == o["metadata"]["generation"]
                     and o["status"].get("endpointConfigName") == sm.describe_endpoint(EndpointName=name)[
                         "EndpointConfigName"] and o["status"]["specHash"] != first and o, 120,
                     "the last change to serve")
    props = world["s3"].get_object(
        Bucket=BUCKET, Key=sm.describe_model(ModelName=final["status"]["modelName"])["PrimaryContainer"][
            "ModelDataSource"]["S3DataSource"]["S3Uri"].split("/", 3)[3] + "serving.properties")["Body"].read()
    assert b"max_wait_ms=3" in props  # the last spec serves, not the one in between
    assert invoke(rt, name, "Hi there", 4) is not None
    # Both superseded generations are collected; only what serves is left.
    wait_for(lambda: owned(sm, uid)["Models"] == [final["status"]["modelName"]], 30, "superseded models to go")
    assert owned(sm, uid) == {"Endpoints": [name], "EndpointConfigs": [final["status"]["endpointConfigName"]],
                              "Models": [final["status"]["modelName"]]}

    assert kube.delete("llamaendpoints", "default", "busy") in (200, 202)
    wait_for(lambda: kube.get("llamaendpoints", "default", "busy") is None, 60, "the LlamaEndpoint to go")
    assert owned(sm, uid) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}


def test_endpoint_deleted_behind_the_operators_back_comes_back_at_resync(world):
    """The one test that relies on the Describe fallback: an operator with a 2-second resync."""

    kube, sm = world["kube"], world["sm"]
    world["ops"][-1].__exit__()
    world["ops"].append(InProcessOperator(dataclasses.replace(world["settings"], resync_seconds=2.0),
                                          world["kubeconfig"], endpoints=True).__enter__())
    kube.apply(endpoint("drift", source={"s3Uri": f"s3://{BUCKET}/models/tiny/"}))
    ep = wait_for(lambda: (o := get(world, "llamaendpoints", "drift")).get("status", {}).get("phase")
                  in ("InService", "Failed") and o, 120, "InService")
    assert ep["status"]["phase"] == "InService", ep["status"].get("failureReason")
    name, uid = ep["status"]["endpointName"], ep["metadata"]["uid"]
    first_created = sm.describe_endpoint(EndpointName=name)["CreationTime"]
    sm.delete_endpoint(EndpointName=name)  # someone tidies up in the console
    # a 2 s resync may re-create it before a poll sees it gone: a new one has a later CreationTime
    back = wait_for(lambda: [e for e in sm.list_endpoints()["Endpoints"]
                             if e["EndpointName"] == name and e["EndpointStatus"] == "InService"
                             and e["CreationTime"] > first_created], 120,
                    "the endpoint to be created again")
    assert back
    wait_for(lambda: phase(world, "drift") == "InService", 30, "status to say InService again")

    assert kube.delete("llamaendpoints", "default", "drift") in (200, 202)
    wait_for(lambda: kube.get("llamaendpoints", "default", "drift") is None, 60, "the LlamaEndpoint to go")
    assert owned(sm, uid) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}


def lora_finetune(name: str, seed: int) -> dict:
    doc = finetune(name)
    doc["spec"]["method"] = {"type": "deepspeed", "zeroStage": 2, "peft": {"type": "lora", "r": 4, "alpha": 16}}
    doc["spec"]["hyperparameters"].update(learningRate=0.02, seed=seed)
    return doc


def merged_reference(world, base_uri: str, adapter_uri: str, prompt: str, max_new_tokens: int) -> str:
    """What base + adapter answer, merged by PEFT and decoded greedily by transformers."""
    import tempfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s3 = world["s3"]
    with tempfile.TemporaryDirectory() as tmp:
        for uri, sub in ((base_uri, "base"), (adapter_uri, "adapter")):
            bucket, _, prefix = uri[len("s3://"):].partition("/")
            os.makedirs(os.path.join(tmp, sub))
            for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
                rel = obj["Key"][len(prefix):]
                if rel and "/" not in rel:
                    s3.download_file(bucket, obj["Key"], os.path.join(tmp, sub, rel))
        tok = AutoTokenizer.from_pretrained(os.path.join(tmp, "base"))
        base = AutoModelForCausalLM.from_pretrained(os.path.join(tmp, "base"), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, os.path.join(tmp, "adapter")).merge_and_unload().eval()
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_lora_fine_tunes_then_one_endpoint_serves_both_adapters_on_the_base(world):
    kube, sm, rt, s3 = world["kube"], world["sm"], world["rt"], world["s3"]
    kube.apply(lora_finetune("lora-a", 1))
    kube.apply(lora_finetune("lora-b", 2))
    kube.apply(endpoint("two-adapters", source={"fromFinetune": "lora-a",
                                                "adapters": [{"name": "b", "fromFinetune": "lora-b"}]}))
    done = {}
    for name in ("lora-a", "lora-b"):
        done[name] = wait_for(lambda n=name: (o := get(world, "llamafinetunes", n)).get("status", {}).get("phase")
                              in ("Completed", "Failed") and o, 300, f"{name} to finish")["status"]
        assert done[name]["phase"] == "Completed", done[name].get("failureReason")
        # the adapter, not a whole model: an adapter config and weights far smaller than the base's
        st = done[name]
        assert st["adapterS3Uri"].endswith(f"/{st['trainingJobName']}/adapter/") and "modelS3Uri" not in st
        bucket, _, prefix = st["adapterS3Uri"][len("s3://"):].partition("/")
        sizes = {o["Key"][len(prefix):]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
        base_sizes = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="models/tiny/")["Contents"]}
        assert "adapter_config.json" in sizes
        assert sizes["adapter_model.safetensors"] * 4 < base_sizes["models/tiny/model.safetensors"]

    ep = wait_for(lambda: (o := get(world, "llamaendpoints", "two-adapters")).get("status", {}).get("phase")
                  in ("InService", "Failed") and o, 240, "InService")
    st = ep["status"]
    assert st["phase"] == "InService", st.get("failureReason")
    assert st["modelS3Uri"] == f"s3://{BUCKET}/models/tiny/" and st["adapters"] == ["b", "lora-a"]
    assert undeclared_fields("llamaendpoints", ep) == []

    def ask(prompt, **params):
        body = {"inputs": prompt, "parameters": {"max_new_tokens": 8, **params}}
        resp = rt.invoke_endpoint(EndpointName=st["endpointName"], ContentType="application/json",
                                  Body=json.dumps(body))
        return json.loads(resp["Body"].read())["generated_text"]

    prompt = "Hello, how are you?"
    base_uri = st["modelS3Uri"]
    # no adapter named: the endpoint's own fine-tune (lora-a); "b" by name; "" the base model alone
    assert ask(prompt) == merged_reference(world, base_uri, done["lora-a"]["adapterS3Uri"], prompt, 8)
    assert ask(prompt, adapter="b") == merged_reference(world, base_uri, done["lora-b"]["adapterS3Uri"], prompt, 8)
    assert ask(prompt, adapter="").strip()
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as err:
        ask(prompt, adapter="c")
    assert "parameters.adapter" in str(err.value)
    base_answer = ask(prompt, adapter="")

    # The same adapters on the vllm engine: the operator copies them into the code prefix, where
    # LMI loads adapters (adapters/<name>/); requests name one with LMI's top-level "adapters".
    kube.apply(endpoint("two-adapters-vllm", source={"fromFinetune": "lora-a",
                                                     "adapters": [{"name": "b", "fromFinetune": "lora-b"}]},
                        serving={"engine": "vllm", "maxNewTokens": 8, "dtype": "fp32"}))
    vep = wait_for(lambda: (o := get(world, "llamaendpoints", "two-adapters-vllm")).get("status", {}).get("phase")
                   in ("InService", "Failed") and o, 240, "the vllm endpoint InService")
    vst = vep["status"]
    assert vst["phase"] == "InService", vst.get("failureReason")
    code = s3.list_objects_v2(Bucket=BUCKET, Prefix="operator/endpoint-code/")["Contents"]
    copied = {k["Key"].split("/adapters/", 1)[1] for k in code if "/adapters/" in k["Key"]}
    assert {"lora-a/adapter_config.json", "lora-a/adapter_model.safetensors", "b/adapter_config.json",
            "b/adapter_model.safetensors"} <= copied

    def ask_lmi(prompt, adapters=None):
        body = {"inputs": prompt, "parameters": {"max_new_tokens": 8}}
        if adapters is not None:
            body["adapters"] = adapters
        resp = rt.invoke_endpoint(EndpointName=vst["endpointName"], ContentType="application/json",
                                  Body=json.dumps(body))
        return json.loads(resp["Body"].read())["generated_text"]

    assert ask_lmi(prompt, "b") == merged_reference(world, base_uri, done["lora-b"]["adapterS3Uri"], prompt, 8)
    assert ask_lmi(prompt, "lora-a") == merged_reference(world, base_uri, done["lora-a"]["adapterS3Uri"], prompt, 8)
    assert ask_lmi(prompt) == base_answer  # LMI's vLLM has no default adapter

    for name, obj in (("two-adapters", ep), ("two-adapters-vllm", vep)):
        assert kube.delete("llamaendpoints", "default", name) in (200, 202)
        wait_for(lambda n=name: kube.get("llamaendpoints", "default", n) is None, 60, f"{name} to go")
        assert owned(sm, obj["metadata"]["uid"]) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}


def test_a_lora_fine_tune_chained_on_a_full_one_by_reference(world):
    """baseModel.fromFinetune: the LoRA fine-tune waits for the full one, trains on the model it
    produced, and an endpoint of the LoRA fine-tune serves that model with the adapter."""
    kube, sm = world["kube"], world["sm"]
    chained = lora_finetune("chain-lora", 3)
    chained["spec"]["baseModel"] = {"fromFinetune": "chain-full"}
    kube.apply(chained)
    waiting = wait_for(lambda: (o := get(world, "llamafinetunes", "chain-lora")).get("status", {}).get("phase")
                       == "WaitingForModel" and o, 60, "the chained fine-tune to wait")
    assert "chain-full" in condition(waiting, "Progressing").get("message", "")
    assert jobs_for(sm, "chain-lora") == []
    kube.apply(finetune("chain-full"))
    done = {}
    for name in ("chain-full", "chain-lora"):
        done[name] = wait_for(lambda n=name: (o := get(world, "llamafinetunes", n)).get("status", {}).get("phase")
                              in ("Completed", "Failed") and o, 300, f"{name} to finish")["status"]
        assert done[name]["phase"] == "Completed", done[name].get("failureReason")
    full_model = done["chain-full"]["modelS3Uri"]
    assert done["chain-lora"]["baseModelS3Uri"] == full_model
    assert done["chain-full"]["baseModelS3Uri"] == f"s3://{BUCKET}/models/tiny/"

    kube.apply(endpoint("chained", source={"fromFinetune": "chain-lora"}))
    ep = wait_for(lambda: (o := get(world, "llamaendpoints", "chained")).get("status", {}).get("phase")
                  in ("InService", "Failed") and o, 240, "InService")
    st = ep["status"]
    assert st["phase"] == "InService", st.get("failureReason")
    assert st["modelS3Uri"] == full_model and st["adapters"] == ["chain-lora"]
    prompt = "Hello, how are you?"
    assert invoke(world["rt"], st["endpointName"], prompt) == merged_reference(
        world, full_model, done["chain-lora"]["adapterS3Uri"], prompt, 8)
    assert kube.delete("llamaendpoints", "default", "chained") in (200, 202)
    wait_for(lambda: kube.get("llamaendpoints", "default", "chained") is None, 60, "the LlamaEndpoint to go")
    assert owned(sm, ep["metadata"]["uid"]) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}


def upload_random_adapter(world, name: str, seed: int) -> str:
    """A PEFT-format LoRA adapter for the tiny base with random weights (large enough to change
    greedy answers), uploaded under adapters/<name>/; its s3:// prefix."""
    import tempfile

    from transformers import AutoModelForCausalLM

    from llama_operator.local.demo.tinymodel import build_tiny_llama
    from llama_operator.paths import workloads_dir

    serve = str(workloads_dir() / "serve")  # (its modules import each other by plain name)
    if serve not in sys.path:
        sys.path.append(serve)
    import lora_adapters as lora

    with tempfile.TemporaryDirectory() as tmp:
        model = AutoModelForCausalLM.from_pretrained(build_tiny_llama(Path(tmp) / "base"))
        path = lora.write_random_adapter(model, Path(tmp) / "adapter", rank=8, seed=seed, b_std=0.5)
        for f in sorted(path.iterdir()):
            world["s3"].upload_file(str(f), BUCKET, f"adapters/{name}/{f.name}")
    return f"s3://{BUCKET}/adapters/{name}/"


def test_adapters_of_a_component_endpoint_are_adapter_components_added_and_removed_beside_the_model(world):
    """deployment.mode inferenceComponents: each of model.adapters is an adapter inference component
    on the model's component (requests name it); dropping one deletes its component and leaves
    the model's copies alone; deleting the resource leaves nothing."""
    kube, sm, rt = world["kube"], world["sm"], world["rt"]
    uris = {n: upload_random_adapter(world, n, seed) for n, seed in (("sql", 1), ("support", 2))}
    body = endpoint("ic-adapters", source={"s3Uri": f"s3://{BUCKET}/models/tiny/",
                                           "adapters": [{"name": n, "s3Uri": u} for n, u in uris.items()]})
    body["spec"]["deployment"]["mode"] = "inferenceComponents"
    uid = kube.apply(body)["metadata"]["uid"]

    last: dict = {}

    def settled(want: set[str]):
        def check():
            st = last["status"] = get(world, "llamaendpoints", "ic-adapters").get("status", {})
            rows = (st.get("inferenceComponent") or {}).get("adapters") or []
            if st.get("phase") == "Failed":
                return st
            ok = st.get("phase") == "InService" and {r["name"] for r in rows} == want and \
                all(r["status"] == "InService" for r in rows)
            return st if ok else None
        return check

    try:
        st = wait_for(settled({"sql", "support"}), 240, "the model and both adapter components in service")
    except AssertionError as err:
        raise AssertionError(f"{err}; status: {last.get('status')}") from None
    assert st["phase"] == "InService", st.get("failureReason")
    ep, base = st["endpointName"], st["inferenceComponent"]["name"]
    rows = {r["name"]: r for r in st["inferenceComponent"]["adapters"]}
    listed = {c["InferenceComponentName"] for c in sm.list_inference_components(EndpointNameEquals=ep)
              ["InferenceComponents"]}
    assert listed == {base, rows["sql"]["component"], rows["support"]["component"]}
    described = sm.describe_inference_component(InferenceComponentName=rows["sql"]["component"])
    assert described["Specification"]["BaseInferenceComponentName"] == base
    assert described["Specification"]["Container"]["ArtifactUrl"].endswith(".tar.gz")

    def ask(component: str) -> str:
        resp = rt.invoke_endpoint(EndpointName=ep, InferenceComponentName=component, ContentType="application/json",
                                  Body=json.dumps({"inputs": "Hello, how are you?",
                                                   "parameters": {"max_new_tokens": 8}}))
        return json.loads(resp["Body"].read())["generated_text"]

    base_uri = st["modelS3Uri"]
    for n in ("sql", "support"):  # each adapter component answers as base + that adapter, merged by PEFT
        assert ask(rows[n]["component"]) == merged_reference(world, base_uri, uris[n], "Hello, how are you?", 8)
    assert ask(rows["sql"]["component"]) != ask(rows["support"]["component"])
    base_answer = ask(base)

    # drop one: its component goes; the model is the same (no new copies), the other adapter serves
    body["spec"]["model"]["adapters"] = [{"name": "sql", "s3Uri": uris["sql"]}]
    kube.apply(body)
    wait_for(lambda: rows["support"]["component"] not in {
        c["InferenceComponentName"] for c in sm.list_inference_components(EndpointNameEquals=ep)["InferenceComponents"]},
        60, "the dropped adapter's component deleted")
    after = wait_for(settled({"sql"}), 60, "status without the dropped adapter")
    assert after["modelName"] == st["modelName"] and after["inferenceComponent"]["modelName"] == st["modelName"]
    assert ask(rows["sql"]["component"]) == merged_reference(world, base_uri, uris["sql"], "Hello, how are you?", 8)
    assert ask(base) == base_answer
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        ask(rows["support"]["component"])

    assert kube.delete("llamaendpoints", "default", "ic-adapters") in (200, 202)
    wait_for(lambda: kube.get("llamaendpoints", "default", "ic-adapters") is None, 120, "resource gone")
    assert sm.list_inference_components(EndpointNameEquals=ep)["InferenceComponents"] == []
    assert owned(sm, uid) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}
