"""LlamaEndpoint status writers racing each other: the kopf handler, SQS events (possibly two at
once, or on two replicas) and the resync all write status. Each write is computed from the object
as read for it, with the read's resourceVersion as precondition, so none may overwrite a newer
state with an older one (InService back to Creating)."""

from __future__ import annotations

import asyncio
import time
import uuid

from operator_harness import BUCKET
from operator_harness import InProcessOperator, endpoint
from llama_operator.status import values
from llama_operator.handlers import endpoint as endpoint_handlers
from llama_operator.handlers.app import App
from llama_operator.handlers.kube import KubeWriter
from llama_operator.handlers.lifecycle import login_from_kubeconfig
from llama_operator.settings import Settings

PLURAL = "llamaendpoints"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-endpoint"
BASE = 1_795_000_000.0


def app_with(kube: KubeWriter) -> App:
    """What the event handler works with, writing through `kube`."""
    return App(settings=Settings(), sagemaker=None, s3=None, kube=kube)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def status_of(kube, name: str) -> dict:
    return ((kube.get(PLURAL, "default", name) or {}).get("status")) or {}


def state_change(obj: dict, status: str, t: float) -> dict:
    """A "SageMaker Endpoint State Change" event for the endpoint `obj` owns, at BASE + t."""
    meta = obj["metadata"]
    return {"version": "0", "id": uuid.uuid4().hex, "detail-type": endpoint_handlers.ENDPOINT_DETAIL_TYPE,
            "source": "aws.sagemaker", "detail": {
                "EndpointName": f"ep-{meta['name']}", "EndpointConfigName": f"cfg-{meta['name']}",
                "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/ep-{meta['name']}",
                "EndpointStatus": status, "LastModifiedTime": int((BASE + t) * 1000),
                "Tags": {"llamaops.dev/kind": "LlamaEndpoint", "llamaops.dev/namespace": meta["namespace"],
                         "llamaops.dev/name": meta["name"], "llamaops.dev/uid": meta["uid"]}}}


def test_two_events_at_once_never_move_status_back(kube):
    # The Creating event is read and computed; before its write, the InService event (another
    # consumer, another replica) is written. The Creating write must not land on top.
    obj = kube.apply(endpoint("racy-events", source={"s3Uri": f"s3://{BUCKET}/models/tiny/"}, role=ROLE))
    creating, in_service = state_change(obj, "Creating", 100), state_change(obj, "InService", 200)
    info = login_from_kubeconfig(str(kube.kubeconfig_path))

    class RacedWriter(KubeWriter):
        """The first read is followed at once by the other consumer's write."""
        raced = False

        async def get(self, *args, **kwargs):
            obj = await super().get(*args, **kwargs)
            if not self.raced:
                self.raced = True
                assert await endpoint_handlers.on_endpoint_event(app_with(other), in_service)
            return obj

    async def run():
        try:
            return await endpoint_handlers.on_endpoint_event(app_with(writer), creating)
        finally:
            await writer.close()
            await other.close()

    writer, other = RacedWriter(), KubeWriter()
    writer.set(info)
    other.set(info)
    assert asyncio.run(run())
    assert writer.raced
    st = status_of(kube, "racy-events")
    assert st["phase"] == "InService", st
    assert st["lastEventTime"] == values.iso(BASE + 200)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    reasons = [e["reason"] for e in kube.list("events", "default", api_version="v1")
               if e["involvedObject"]["name"] == "racy-events"]
    assert reasons == ["InService"]  # nothing was written for the late Creating, so no Event either


def test_handler_status_from_before_a_fast_event_never_moves_status_back(kube, stub_serving_aws, workloads):
    # The create handler's DescribeEndpoint says Creating; its answer reaches the handler only
    # once the InService event has been written. The handler's status write comes after and must
    # keep InService (and still record what the handler sent).
    env = stub_serving_aws.env
    settings = Settings(region=env["AWS_DEFAULT_REGION"], events_queue_url=env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"],
                        resync_seconds=3600, workloads_dir=workloads, retry_seconds=0.5, stop_poll_seconds=0.5,
                        events_wait_seconds=1, source_s3_uri=f"s3://{BUCKET}/operator")
    name = unique("racy-handler")
    held: list[dict] = []

    def hold_creating(parsed, **_):
        if parsed.get("EndpointStatus") != "Creating" or held:
            return
        held.append(dict(parsed))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and status_of(kube, name).get("phase") != "InService":
            time.sleep(0.1)

    op = InProcessOperator(settings, kube.kubeconfig_path, endpoints=True)
    op.registry.app.endpoint_gateway.client.meta.events.register("after-call.sagemaker.DescribeEndpoint",
                                                             hold_creating)
    with op:
        kube.apply(endpoint(name, source={"s3Uri": f"s3://{BUCKET}/models/tiny/"}, role=ROLE))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not status_of(kube, name).get("specHash"):
            time.sleep(0.2)
        time.sleep(1)  # kopf's own patch after the handler, had it carried status
        st = status_of(kube, name)
        assert held and st.get("specHash"), (held, st)
        assert st["phase"] == "InService", st
        assert st["modelName"] and st["endpointConfigName"] and st["observedGeneration"] == 1
        conditions = {c["type"]: c for c in st["conditions"]}
        assert conditions["Ready"]["status"] == "True" and conditions["Progressing"]["status"] == "False"
        assert conditions["Synced"]["status"] == "True" and conditions["Synced"]["reason"] == "RequestsSent"
        # the time of the InService event, not of the handler's older Describe
        assert values.to_epoch(st["lastEventTime"]) > values.to_epoch(held[0]["LastModifiedTime"]) + 0.001
        assert stub_serving_aws.client("sagemaker").describe_endpoint(
            EndpointName=held[0]["EndpointName"])["EndpointStatus"] == "InService"

        assert kube.delete(PLURAL, "default", name) in (200, 202)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and kube.get(PLURAL, "default", name) is not None:
            time.sleep(0.2)
        assert kube.get(PLURAL, "default", name) is None
