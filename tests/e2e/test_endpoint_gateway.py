"""The LlamaEndpoint SageMaker layer against the local SageMaker service over HTTP: idempotent
creates that adopt our own objects and refuse foreign ones, owner-tag listing, garbage collection
that keeps what serves, and the content-addressed code upload to moto's S3."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid

import pytest
from botocore.stub import Stubber

from llama_operator.artifacts import endpoint_code
from llama_operator.aws.endpoints import EndpointGateway, RetryableError, TerminalError
from llama_operator.local.stack import LocalStack

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gateway-echo:1"
ROLE = "arn:aws:iam::123456789012:role/sagemaker"
BUCKET = "endpoint-gateway"

# A model server that follows SageMaker's container contract and answers with its model dir's
# serving.properties, so a test sees which code prefix an endpoint really loaded.
SERVER = textwrap.dedent("""
    import json, os, pathlib
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    MODEL = pathlib.Path(os.environ["SM_MODEL_DIR"])
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code); self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
        def do_GET(self): self._send(200, {})
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            p = MODEL / "serving.properties"
            self._send(200, {"properties": p.read_text() if p.exists() else None})
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["SAGEMAKER_BIND_TO_PORT"])), H).serve_forever()
""")


def tags(uid: str) -> list[dict]:
    return [{"Key": "llamaops.dev/kind", "Value": "LlamaEndpoint"}, {"Key": "llamaops.dev/uid", "Value": uid}]


@pytest.fixture(scope="module")
def gw_stack(tmp_path_factory):
    server = tmp_path_factory.mktemp("server") / "server.py"
    server.write_text(SERVER)
    with LocalStack(tmp_path_factory.mktemp("sm-state"), containers={"gateway-echo": f"{sys.executable} {server}"}) as s:
        s.client("s3").create_bucket(Bucket=BUCKET)
        yield s


@pytest.fixture(scope="module")
def sm(gw_stack):
    return gw_stack.client("sagemaker")


@pytest.fixture(scope="module")
def gw(sm):
    return EndpointGateway(sm)


def model_request(name, uid, code_uri):
    return {"ModelName": name, "ExecutionRoleArn": ROLE, "Tags": tags(uid), "PrimaryContainer": {
        "Image": IMAGE, "ModelDataSource": {"S3DataSource": {
            "S3Uri": code_uri, "S3DataType": "S3Prefix", "CompressionType": "None"}}}}


def config_request(name, model, uid):
    return {"EndpointConfigName": name, "Tags": tags(uid), "ProductionVariants": [{
        "VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.g5.2xlarge",
        "InitialInstanceCount": 1, "ContainerStartupHealthCheckTimeoutInSeconds": 60}]}


def put_code(s3, base: str, files: dict) -> str:
    """The endpoint code prefix for `files` under `base`, uploaded as the handlers do."""
    uri = endpoint_code.code_prefix(base, files)
    endpoint_code.upload(s3, uri, files)
    return uri


def test_upload_is_content_addressed_and_skipped_when_present(gw_stack):
    s3 = gw_stack.client("s3")
    puts = []
    s3.meta.events.register("provide-client-params.s3.PutObject", lambda params, **_: puts.append(params["Key"]))
    files = {"serving.properties": "option.model_id=s3://b/m/\n", "model.py": "def handle(inputs):\n    pass\n"}
    base = f"s3://{BUCKET}/ops"
    uri = endpoint_code.code_prefix(base, files)
    assert endpoint_code.upload(s3, uri, files)
    assert uri.startswith(f"{base}/endpoint-code/") and uri.endswith("/")
    assert sorted(p.rsplit("/", 1)[1] for p in puts) == ["model.py", "serving.properties"]
    got = s3.get_object(Bucket=BUCKET, Key=uri[len(f"s3://{BUCKET}/"):] + "serving.properties")["Body"].read()
    assert got.decode() == files["serving.properties"]

    puts.clear()
    reordered = dict(reversed(list(files.items())))
    assert endpoint_code.code_prefix(base, reordered) == uri  # order-independent
    assert not endpoint_code.upload(s3, uri, reordered)
    assert puts == []  # nothing uploaded again

    changed = endpoint_code.code_prefix(base, {**files, "serving.properties": "option.model_id=s3://b/other/\n"})
    assert changed != uri


def test_create_adopt_list_collect_delete(gw_stack, sm, gw):
    s3 = gw_stack.client("s3")
    uid, other_uid = str(uuid.uuid4()), str(uuid.uuid4())
    base = "gw-" + uid[:8]
    code1 = put_code(s3, f"s3://{BUCKET}/ops", {"serving.properties": "option.model_id=one\n"})
    code2 = put_code(s3, f"s3://{BUCKET}/ops", {"serving.properties": "option.model_id=two\n"})

    arn = gw.ensure_model(model_request(f"{base}-m1", uid, code1), uid)
    assert gw.ensure_model(model_request(f"{base}-m1", uid, code1), uid) == arn  # re-apply / restart: adopted
    gw.ensure_endpoint_config(config_request(f"{base}-c1", f"{base}-m1", uid), uid)
    gw.ensure_endpoint_config(config_request(f"{base}-c1", f"{base}-m1", uid), uid)
    created = gw.ensure_endpoint({"EndpointName": base, "EndpointConfigName": f"{base}-c1", "Tags": tags(uid)}, uid)
    adopted = gw.ensure_endpoint({"EndpointName": base, "EndpointConfigName": f"{base}-c1", "Tags": tags(uid)}, uid)
    assert created["EndpointArn"] == adopted["EndpointArn"]
    assert len([e for e in sm.list_endpoints()["Endpoints"] if e["EndpointName"] == base]) == 1

    # Someone else's model with a name we would use is refused, not taken over.
    sm.create_model(**model_request(f"{base}-foreign", other_uid, code1))
    with pytest.raises(TerminalError) as err:
        gw.ensure_model(model_request(f"{base}-foreign", uid, code1), uid)
    assert "belongs to another resource" in err.value.message

    # A second generation: new model and config; the first stays until the switch.
    gw.ensure_model(model_request(f"{base}-m2", uid, code2), uid)
    gw.ensure_endpoint_config(config_request(f"{base}-c2", f"{base}-m2", uid), uid)
    owned = gw.owned(uid, name_contains=base)
    assert owned.endpoints == [base]
    assert owned.endpoint_configs == [f"{base}-c1", f"{base}-c2"]
    assert owned.models == [f"{base}-m1", f"{base}-m2"]  # the foreign one is not ours

    import time
    deadline = time.monotonic() + 60
    while gw.describe_endpoint(base)["EndpointStatus"] != "InService":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    rt = gw_stack.client("sagemaker-runtime")
    body = json.loads(rt.invoke_endpoint(EndpointName=base, Body=b"{}", ContentType="application/json")["Body"].read())
    assert body["properties"] == "option.model_id=one\n"  # the code prefix became the model dir

    # While c1 serves, the newer c2/m2 may be an update being prepared: spared, not collected.
    spared = gw.delete_owned(uid, keep=[f"{base}-m1", f"{base}-c1"], name_contains=base,
                             spare_after=gw.config_created(f"{base}-c1"))
    assert spared.empty()
    assert gw.owned(uid, name_contains=base).models == [f"{base}-m1", f"{base}-m2"]

    # Collect everything but what serves and what is wanted.
    done = gw.delete_owned(uid, keep=[f"{base}-c2", f"{base}-m2", base], name_contains=base)
    assert (done.endpoint_configs, done.models) == ([f"{base}-c1"], [f"{base}-m1"])
    assert gw.owned(uid, name_contains=base).models == [f"{base}-m2"]

    # Delete everything: endpoint first, then nothing of this owner is left; the foreign model is.
    assert gw.delete_endpoint(base) is True
    assert gw.wait_endpoint_gone(base, timeout=30, interval=0.2)
    assert gw.delete_endpoint(base) is False  # already gone is not an error
    gw.delete_owned(uid, name_contains=base, endpoints=True)
    assert gw.owned(uid).empty()
    assert gw.delete_model(f"{base}-m2") is False
    assert f"{base}-foreign" in [m["ModelName"] for m in sm.list_models(NameContains=base)["Models"]]
    sm.delete_model(ModelName=f"{base}-foreign")


def test_errors_are_classified(sm, gw):
    with pytest.raises(TerminalError) as err:
        gw.ensure_endpoint_config(config_request("gw-no-model", "gw-model-that-does-not-exist", "u"), "u")
    assert err.value.code == "ValidationException"
    assert "Could not find model" in err.value.message
    assert gw.describe_endpoint("gw-never-created") is None


def test_throttling_is_transient(sm):
    calls = []
    stubbed = EndpointGateway(sm, on_call=lambda op, outcome: calls.append((op, outcome)))
    with Stubber(sm) as stub:
        stub.add_client_error("describe_endpoint", service_error_code="ThrottlingException",
                              service_message="Rate exceeded", http_status_code=400)
        with pytest.raises(RetryableError) as err:
            stubbed.describe_endpoint("anything")
    assert err.value.throttled and err.value.code == "ThrottlingException"
    assert calls[-1] == ("DescribeEndpoint", "ThrottlingException")
