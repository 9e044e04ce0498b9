"""Multi-tenancy: the operator's role allowlist, with the real operator (kopf, both kinds'
handlers) against the embedded Kubernetes API and the local SageMaker service.

Namespace team-a may hand SageMaker role A, team-b role B. A LlamaFinetune and a LlamaEndpoint in
team-a that ask for role B are refused before anything exists in SageMaker; an allowed one in the
same run goes ahead; a refused spec fixed to an allowed role proceeds; a refused resource is
deleted at once, without SageMaker delete calls. A refused change to an endpoint that already
serves leaves the old configuration serving, and status says Degraded (not Failed, and not
InService when an event or the resync observes the old configuration) until the role is fixed."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from operator_harness import BUCKET
from operator_harness import InProcessOperator, endpoint, finetune, owned, unique, wait_for
from llama_operator.local.sagemaker import events as local_events
from llama_operator.settings import Settings

ROLE_A = "arn:aws:iam::123456789012:role/sagemaker-team-a"
ROLE_B = "arn:aws:iam::123456789012:role/sagemaker-team-b"
NS = "team-a"
FINETUNES, ENDPOINTS = "llamafinetunes", "llamaendpoints"
RESYNC_SECONDS = 2.0


@pytest.fixture(scope="module")
def sagemaker_calls():
    """Every SageMaker operation the operator sends, by name, in order."""
    return []


@pytest.fixture(scope="module")
def operator(stub_serving_aws, kube, workloads, tmp_path_factory, sagemaker_calls):
    allowlist = tmp_path_factory.mktemp("tenancy") / "role-allowlist.yaml"
    allowlist.write_text(f"team-a:\n  - {ROLE_A}\nteam-b:\n  - {ROLE_B}\n")
    env = stub_serving_aws.env
    # A short resync: a refusal must hold while the timer re-reads SageMaker.
    settings = Settings(region=env["AWS_DEFAULT_REGION"], events_queue_url=env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"],
                        resync_seconds=RESYNC_SECONDS, workloads_dir=workloads, retry_seconds=0.5, stop_poll_seconds=0.5,
                        events_wait_seconds=1, role_allowlist=str(allowlist),
                        source_s3_uri=f"s3://{BUCKET}/operator")
    with InProcessOperator(settings, kube.kubeconfig_path, endpoints=True) as op:
        app = op.registry.app
        for client in {id(c): c for c in (app.sagemaker.client, app.endpoint_gateway.client)}.values():
            client.meta.events.register("before-call.sagemaker",
                                        lambda model, **_: sagemaker_calls.append(model.name))
        yield op


@pytest.fixture(scope="module")
def sm(stub_serving_aws):
    return stub_serving_aws.client("sagemaker")


def obj(kube, plural: str, name: str) -> dict:
    return kube.get(plural, NS, name) or {}


def phase_in(kube, plural: str, name: str, *phases):
    def check():
        o = obj(kube, plural, name)
        return o if (o.get("status") or {}).get("phase") in phases else None
    return check


def condition(o: dict, type_: str) -> dict:
    return next((c for c in (o.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def warnings_for(kube, name: str) -> list[dict]:
    return [e for e in kube.list("events", NS, api_version="v1")
            if e["involvedObject"]["name"] == name and e.get("type") == "Warning"]


def training_jobs(sm) -> list[str]:
    return [j["TrainingJobName"] for j in sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]]


def endpoint_objects(sm) -> dict[str, list[str]]:
    return {"models": [m["ModelName"] for m in sm.list_models(MaxResults=100)["Models"]],
            "configs": [c["EndpointConfigName"] for c in sm.list_endpoint_configs(MaxResults=100)["EndpointConfigs"]],
            "endpoints": [e["EndpointName"] for e in sm.list_endpoints(MaxResults=100)["Endpoints"]]}


def assert_refused(o: dict, kind: str) -> None:
    st = o["status"]
    assert st["phase"] == "Failed", st
    failed = condition(o, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "RoleNotAllowed", failed
    # the message names the role, the namespace and the way out
    for part in (f"spec.roleArn {ROLE_B}", repr(NS), ROLE_A, "platform team", "role allowlist"):
        assert part in failed["message"], (kind, part, failed["message"])
    assert st["failureReason"] == failed["message"]


def test_a_role_of_another_namespace_is_refused_before_sagemaker_and_an_allowed_one_runs(kube, operator, sm,
                                                                                          sagemaker_calls):
    denied_ft, denied_ep, allowed_ft = unique("denied-ft"), unique("denied-ep"), unique("allowed-ft")
    kube.apply(finetune(denied_ft, BUCKET, namespace=NS, roleArn=ROLE_B))
    kube.apply(endpoint(denied_ep, namespace=NS, role=ROLE_B, source={"s3Uri": f"s3://{BUCKET}/models/tiny/"}))
    kube.apply(finetune(allowed_ft, BUCKET, namespace=NS, roleArn=ROLE_A))

    for plural, name, kind in ((FINETUNES, denied_ft, "LlamaFinetune"), (ENDPOINTS, denied_ep, "LlamaEndpoint")):
        o = wait_for(phase_in(kube, plural, name, "Failed", "InService", "Completed"), timeout=20,
                     what=f"{name} to be refused")
        assert_refused(o, kind)
        warnings = wait_for(lambda: [e for e in warnings_for(kube, name) if e["reason"] == "RoleNotAllowed"],
                            timeout=10, what=f"a RoleNotAllowed Warning for {name}")
        assert ROLE_B in warnings[0]["message"] and warnings[0]["involvedObject"]["kind"] == kind

    # The allowed one in the same namespace goes ahead (and finishes: the stand-in job is quick).
    done = wait_for(phase_in(kube, FINETUNES, allowed_ft, "Completed", "Failed"), timeout=30,
                    what=f"{allowed_ft} to finish")
    assert done["status"]["phase"] == "Completed", done["status"]
    jobs = training_jobs(sm)
    assert jobs == [done["status"]["trainingJobName"]]
    assert sm.describe_training_job(TrainingJobName=jobs[0])["RoleArn"] == ROLE_A
    # Nothing of the refused ones exists in SageMaker, and nothing was asked for.
    assert endpoint_objects(sm) == {"models": [], "configs": [], "endpoints": []}
    assert not [c for c in sagemaker_calls if c.startswith(("CreateModel", "CreateEndpoint"))], sagemaker_calls
    assert sagemaker_calls.count("CreateTrainingJob") == 1, sagemaker_calls

    # Deleting a refused resource releases the finalizer at once, with no SageMaker deletes.
    before = len(sagemaker_calls)
    kube.delete(ENDPOINTS, NS, denied_ep)
    kube.delete(FINETUNES, NS, denied_ft)
    wait_for(lambda: not obj(kube, ENDPOINTS, denied_ep) and not obj(kube, FINETUNES, denied_ft), timeout=10,
             what="the refused resources to go")
    deletes = [c for c in sagemaker_calls[before:] if c.startswith(("Delete", "Stop"))]
    assert deletes == [], deletes


def test_a_refused_spec_fixed_to_an_allowed_role_proceeds(kube, operator, sm):
    ft, ep = unique("fixed-ft"), unique("fixed-ep")
    kube.apply(finetune(ft, BUCKET, namespace=NS, roleArn=ROLE_B))
    kube.apply(endpoint(ep, namespace=NS, role=ROLE_B, source={"s3Uri": f"s3://{BUCKET}/models/tiny/"}))
    for plural, name in ((FINETUNES, ft), (ENDPOINTS, ep)):
        assert_refused(wait_for(phase_in(kube, plural, name, "Failed"), timeout=20, what=f"{name} refused"), plural)

    kube.apply(finetune(ft, BUCKET, namespace=NS, roleArn=ROLE_A))
    kube.apply(endpoint(ep, namespace=NS, role=ROLE_A, source={"s3Uri": f"s3://{BUCKET}/models/tiny/"}))

    tuned = wait_for(phase_in(kube, FINETUNES, ft, "Completed"), timeout=30, what=f"{ft} to complete")
    assert tuned["status"].get("failureReason") is None
    assert condition(tuned, "Failed")["status"] == "False"
    served = wait_for(phase_in(kube, ENDPOINTS, ep, "InService"), timeout=40, what=f"{ep} InService")
    st = served["status"]
    assert st.get("failureReason") is None and condition(served, "Failed")["status"] == "False"
    assert sm.describe_endpoint(EndpointName=st["endpointName"])["EndpointStatus"] == "InService"
    assert sm.describe_model(ModelName=st["modelName"])["ExecutionRoleArn"] == ROLE_A

    kube.delete(ENDPOINTS, NS, ep)
    kube.delete(FINETUNES, NS, ft)
    wait_for(lambda: not obj(kube, ENDPOINTS, ep) and not obj(kube, FINETUNES, ft), timeout=30,
             what="both to be deleted")
    assert endpoint_objects(sm) == {"models": [], "configs": [], "endpoints": []}


def invoke(rt, endpoint_name: str) -> str:
    resp = rt.invoke_endpoint(EndpointName=endpoint_name, ContentType="application/json",
                              Body=json.dumps({"inputs": "Hi", "parameters": {"max_new_tokens": 4}}))
    return json.loads(resp["Body"].read())["generated_text"]


def show_old_config_in_service_again(aws, sm, sagemaker_calls: list, endpoint_name: str) -> None:
    """The operator sees the endpoint's current state again: its last state change redelivered,
    then two resyncs' Describes. (The event always reaches observe; a Describe may be dropped as
    no newer than the event's millisecond time.)"""
    redeliver_state_change(aws, sm, endpoint_name)
    resyncs = sagemaker_calls.count("DescribeEndpoint")
    wait_for(lambda: sagemaker_calls.count("DescribeEndpoint") >= resyncs + 2,
             timeout=6 * RESYNC_SECONDS, what="two resyncs")


def redeliver_state_change(aws, sm, endpoint_name: str) -> None:
    """The endpoint's last state change once more, as EventBridge may deliver it (at least once)."""
    def epoch(value):  # boto3's datetimes as the epoch seconds local_events.envelope expects
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, dict):
            return {k: epoch(v) for k, v in value.items()}
        return [epoch(v) for v in value] if isinstance(value, list) else value

    described = epoch({k: v for k, v in sm.describe_endpoint(EndpointName=endpoint_name).items()
                       if k != "ResponseMetadata"})
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=described["EndpointArn"])["Tags"]}
    event = local_events.envelope("endpoint", described["EndpointArn"], {**described, "Tags": tags},
                                  aws.env["AWS_DEFAULT_REGION"])
    sqs, url = aws.client("sqs"), aws.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event))

    def consumed():
        counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return all(v == "0" for v in counts.values())
    wait_for(consumed, timeout=20, what="the operator to consume the redelivered event")


def test_a_refused_change_to_a_serving_endpoint_is_degraded_and_the_old_config_keeps_serving(
        kube, operator, sm, sagemaker_calls, stub_serving_aws):
    ep, source = unique("serving-ep"), {"s3Uri": f"s3://{BUCKET}/models/tiny/"}
    rt = stub_serving_aws.client("sagemaker-runtime")
    kube.apply(endpoint(ep, namespace=NS, role=ROLE_A, source=source))
    served = wait_for(phase_in(kube, ENDPOINTS, ep, "InService", "Failed"), timeout=40, what=f"{ep} InService")
    assert served["status"]["phase"] == "InService", served["status"]
    uid, st = served["metadata"]["uid"], served["status"]
    name, old_hash = st["endpointName"], st["specHash"]
    old_config, old_model = st["endpointConfigName"], st["modelName"]
    assert invoke(rt, name) == "stub"

    # A spec change (new serving knobs) that also asks for another namespace's role.
    changed = endpoint(ep, namespace=NS, role=ROLE_B, source=source)
    changed["spec"]["serving"]["maxWaitMs"] = 7
    calls = len(sagemaker_calls)
    generation = kube.apply(changed)["metadata"]["generation"]
    o = wait_for(lambda: (o := obj(kube, ENDPOINTS, ep))["status"].get("observedGeneration") == generation and o,
                 timeout=20, what=f"{ep} to record the refusal")
    warnings = wait_for(lambda: [e for e in warnings_for(kube, ep) if e["reason"] == "RoleNotAllowed"],
                        timeout=10, what=f"a RoleNotAllowed Warning for {ep}")
    assert ROLE_B in warnings[0]["message"]

    def assert_degraded_on_old_config(o: dict) -> None:
        st = o["status"]
        assert st["phase"] == "Degraded", st
        degraded, synced = condition(o, "Degraded"), condition(o, "Synced")
        assert degraded["status"] == "True" and degraded["reason"] == "RoleNotAllowed", degraded
        for part in (f"spec.roleArn {ROLE_B}", repr(NS), ROLE_A, "role allowlist", old_config):
            assert part in degraded["message"], (part, degraded["message"])
        assert st["failureReason"] == degraded["message"]
        assert synced["status"] == "False" and synced["reason"] == "RoleNotAllowed", synced
        assert condition(o, "Ready")["status"] == "True" and condition(o, "Failed")["status"] == "False"
        assert (st["endpointConfigName"], st["modelName"], st["specHash"]) == (old_config, old_model, old_hash)
        # the old configuration keeps serving; nothing new exists, nothing old was collected
        described = sm.describe_endpoint(EndpointName=name)
        assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", old_config)
        assert invoke(rt, name) == "stub"
        assert owned(sm, uid) == {"Endpoints": [name], "EndpointConfigs": [old_config], "Models": [old_model]}
        asked = [c for c in sagemaker_calls[calls:] if c.startswith(("Create", "Update", "Delete"))]
        assert asked == [], asked

    assert_degraded_on_old_config(o)

    # SageMaker's view of the old configuration (a redelivered event, then the resync's Describe)
    # says InService; the refused spec still stands, so status stays Degraded.
    show_old_config_in_service_again(stub_serving_aws, sm, sagemaker_calls, name)
    assert_degraded_on_old_config(obj(kube, ENDPOINTS, ep))

    # The role fixed: the change rolls out blue/green and the refusal's marks go.
    fixed = endpoint(ep, namespace=NS, role=ROLE_A, source=source)
    fixed["spec"]["serving"]["maxWaitMs"] = 7
    generation = kube.apply(fixed)["metadata"]["generation"]
    done = wait_for(lambda: (o := obj(kube, ENDPOINTS, ep))["status"].get("phase") == "InService"
                    and o["status"].get("observedGeneration") == generation
                    and o["status"].get("specHash") != old_hash and o, timeout=40, what=f"{ep} to roll out the fix")
    st = done["status"]
    assert st["endpointConfigName"] != old_config and st["modelName"] != old_model
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == st["endpointConfigName"]
    assert sm.describe_model(ModelName=st["modelName"])["ExecutionRoleArn"] == ROLE_A
    assert st.get("failureReason") is None
    assert condition(done, "Degraded")["status"] == "False" and condition(done, "Failed")["status"] == "False"
    assert condition(done, "Synced")["status"] == "True" and condition(done, "Synced")["reason"] != "RoleNotAllowed"
    wait_for(lambda: owned(sm, uid)["Models"] == [st["modelName"]], timeout=20, what="the old model to be collected")
    assert owned(sm, uid) == {"Endpoints": [name], "EndpointConfigs": [st["endpointConfigName"]],
                              "Models": [st["modelName"]]}
    assert invoke(rt, name) == "stub"
    time.sleep(RESYNC_SECONDS + 0.5)  # a resync after the roll-out keeps InService
    assert obj(kube, ENDPOINTS, ep)["status"]["phase"] == "InService"

    kube.delete(ENDPOINTS, NS, ep)
    wait_for(lambda: not obj(kube, ENDPOINTS, ep), timeout=30, what=f"{ep} to be deleted")
    assert owned(sm, uid) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}


def test_an_invalid_change_to_a_serving_endpoint_is_refused_at_admission_and_the_old_config_keeps_serving(
        kube, operator, sm, sagemaker_calls, stub_serving_aws):
    """A change the CRD's rules refuse never reaches the operator: the API server answers 422
    naming the field, the stored spec, its generation and what serves stay as they were."""
    ep, source = unique("invalid-ep"), {"s3Uri": f"s3://{BUCKET}/models/tiny/"}
    rt = stub_serving_aws.client("sagemaker-runtime")
    kube.apply(endpoint(ep, namespace=NS, role=ROLE_A, source=source))
    served = wait_for(phase_in(kube, ENDPOINTS, ep, "InService", "Failed"), timeout=40, what=f"{ep} InService")
    assert served["status"]["phase"] == "InService", served["status"]
    uid, name, old_config = served["metadata"]["uid"], served["status"]["endpointName"], \
        served["status"]["endpointConfigName"]

    invalid = endpoint(ep, namespace=NS, role=ROLE_A, source=source)
    invalid["spec"]["serving"]["maxRollingBatchSize"] = 8  # a vllm knob on the batching engine
    calls = len(sagemaker_calls)
    with pytest.raises(RuntimeError, match=r"\(422\).*spec.serving: .*serving.maxRollingBatchSize"):
        kube.apply(invalid)
    time.sleep(1)  # nothing to wait for: nothing may happen
    o = obj(kube, ENDPOINTS, ep)
    assert o["metadata"]["generation"] == served["metadata"]["generation"] and "maxRollingBatchSize" not in \
        o["spec"]["serving"]
    assert o["status"]["phase"] == "InService" and o["status"]["endpointConfigName"] == old_config
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == old_config and invoke(rt, name) == "stub"
    assert [c for c in sagemaker_calls[calls:] if c.startswith(("Create", "Update", "Delete"))] == []

    fixed = endpoint(ep, namespace=NS, role=ROLE_A, source=source)
    fixed["spec"]["serving"].update(maxWaitMs=9)
    generation = kube.apply(fixed)["metadata"]["generation"]
    done = wait_for(lambda: (o := obj(kube, ENDPOINTS, ep))["status"].get("phase") == "InService"
                    and o["status"].get("observedGeneration") == generation
                    and o["status"].get("endpointConfigName") != old_config and o,
                    timeout=40, what=f"{ep} to roll out the fixed spec")
    assert done["status"].get("failureReason") is None and condition(done, "Synced")["reason"] != "InvalidSpec"
    kube.delete(ENDPOINTS, NS, ep)
    wait_for(lambda: not obj(kube, ENDPOINTS, ep), timeout=30, what=f"{ep} to be deleted")
    assert owned(sm, uid) == {"Endpoints": [], "EndpointConfigs": [], "Models": []}
