"""Endpoints serve through local model-server processes (the test echo server, registered with
--container), reached only through boto3's SageMaker and SageMaker Runtime clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from sagemaker_helpers import BUCKET, ECHO_IMAGE, ROLE, unique, wait_endpoint


def _model(sm, s3, name: str, text: str, **env) -> None:
    import io
    import tarfile

    data = text.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("model.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    s3.put_object(Bucket=BUCKET, Key=f"models/{name}/model.tar.gz", Body=buf.getvalue())
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": ECHO_IMAGE, "ModelDataUrl": f"s3://{BUCKET}/models/{name}/model.tar.gz", "Environment": env})


def _config(sm, name: str, model: str, count: int = 1, health_timeout: int | None = None) -> None:
    variant = {"VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.g5.2xlarge",
               "InitialInstanceCount": count}
    if health_timeout:
        variant["ContainerStartupHealthCheckTimeoutInSeconds"] = health_timeout
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])


def _invoke(rt, endpoint: str, payload: dict) -> dict:
    resp = rt.invoke_endpoint(EndpointName=endpoint, Body=json.dumps(payload), ContentType="application/json",
                              Accept="application/json")
    return json.loads(resp["Body"].read())


def test_create_invoke_update_delete(sm, s3, rt, events):
    base = unique("ep")
    _model(sm, s3, f"{base}-m1", "weights-one", ECHO_VERSION="v1")
    _config(sm, f"{base}-c1", f"{base}-m1", count=2)
    arn = sm.create_endpoint(EndpointName=base, EndpointConfigName=f"{base}-c1")["EndpointArn"]
    assert sm.describe_endpoint(EndpointName=base)["EndpointStatus"] in ("Creating", "InService")
    d = wait_endpoint(sm, base)
    assert d["EndpointStatus"] == "InService", d.get("FailureReason")
    assert d["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    assert d["ProductionVariants"][0]["DeployedImages"][0]["SpecifiedImage"] == ECHO_IMAGE

    resp = rt.invoke_endpoint(EndpointName=base, Body=b'{"inputs": "hi"}', ContentType="application/json",
                              Accept="application/json", CustomAttributes="trace=1")
    out = json.loads(resp["Body"].read())
    assert out["echo"] == {"inputs": "hi"} and out["model"] == "weights-one" and out["version"] == "v1"
    assert out["accept"] == "application/json"
    assert resp["ContentType"] == "application/json"
    assert resp["InvokedProductionVariant"] == "AllTraffic"
    assert resp["CustomAttributes"] == "echoed=trace=1"

    with pytest.raises(rt.exceptions.ModelError) as err:
        _invoke(rt, base, {"fail": 422})
    assert err.value.response["OriginalStatusCode"] == 422
    assert "asked to fail" in err.value.response["OriginalMessage"]
    assert err.value.response["LogStreamArn"].endswith(f"/aws/sagemaker/Endpoints/{base}")

    # Blue/green update while invocations keep flowing: none may fail.
    _model(sm, s3, f"{base}-m2", "weights-two", ECHO_VERSION="v2")
    _config(sm, f"{base}-c2", f"{base}-m2")
    failures, versions, stop = [], set(), threading.Event()

    def keep_invoking():
        while not stop.is_set():
            try:
                versions.add(_invoke(rt, base, {"inputs": "again"})["version"])
            except Exception as exc:  # recorded, asserted below
                failures.append(repr(exc))

    workers = [threading.Thread(target=keep_invoking) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        while "v1" not in versions and not failures:
            stop.wait(0.05)
        sm.update_endpoint(EndpointName=base, EndpointConfigName=f"{base}-c2")
        assert sm.describe_endpoint(EndpointName=base)["EndpointStatus"] in ("Updating", "InService")
        d = wait_endpoint(sm, base)
        while d["EndpointConfigName"] != f"{base}-c2" and d["EndpointStatus"] != "Failed":
            d = wait_endpoint(sm, base)
        while "v2" not in versions and not failures:
            stop.wait(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == []
    assert d["EndpointConfigName"] == f"{base}-c2" and "FailureReason" not in d
    assert _invoke(rt, base, {"x": 1})["model"] == "weights-two"
    assert versions == {"v1", "v2"}  # traffic went to both configs, and not one call failed

    sm.delete_endpoint(EndpointName=base)
    with pytest.raises(sm.exceptions.ClientError) as err:
        for _ in range(100):
            sm.describe_endpoint(EndpointName=base)
            time.sleep(0.1)
    assert err.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(sm.exceptions.ClientError) as err:
        _invoke(rt, base, {"x": 1})
    assert err.value.response["Error"]["Code"] == "ValidationError"  # (the runtime's code)

    # Events spell EndpointStatus as SageMaker's documented example does (upper snake case), while
    # DescribeEndpoint keeps the API's spelling (asserted above).
    got = events.for_arn(arn, until=lambda e: e["detail"]["EndpointStatus"] == "DELETING")
    assert [e["detail"]["EndpointStatus"] for e in got] == ["CREATING", "IN_SERVICE", "UPDATING", "IN_SERVICE",
                                                            "DELETING"]
    assert got[0]["detail-type"] == "SageMaker Endpoint State Change"
    assert got[3]["detail"]["EndpointConfigName"] == f"{base}-c2"


def test_failed_update_keeps_serving_old_config(sm, s3, rt, stack):
    base = unique("epfu")
    _model(sm, s3, f"{base}-good", "good")
    _config(sm, f"{base}-c1", f"{base}-good")
    sm.create_endpoint(EndpointName=base, EndpointConfigName=f"{base}-c1")
    assert wait_endpoint(sm, base)["EndpointStatus"] == "InService"

    _model(sm, s3, f"{base}-bad", "bad", ECHO_FAIL_PING="1")
    _config(sm, f"{base}-c2", f"{base}-bad", health_timeout=60)
    sm.update_endpoint(EndpointName=base, EndpointConfigName=f"{base}-c2")
    d = wait_endpoint(sm, base, until=("InService", "Failed"))
    while d["EndpointStatus"] == "InService" and "FailureReason" not in d:
        d = wait_endpoint(sm, base)
    assert d["EndpointStatus"] == "InService"
    assert d["EndpointConfigName"] == f"{base}-c1"
    assert "ping health check" in d["FailureReason"]
    assert "ping refused on purpose" in d["FailureReason"]
    assert _invoke(rt, base, {"q": 1})["model"] == "good"
    logs = subprocess.run([sys.executable, "-m", "llama_operator", "logs", base, "--endpoint",
                           "--state-dir", str(stack.state_dir)], capture_output=True, text=True, check=True).stdout
    assert "ping refused on purpose" in logs and f"==> {base}-c1-AllTraffic-1 <==" in logs
    sm.delete_endpoint(EndpointName=base)


def test_unhealthy_container_fails_the_endpoint(sm, s3):
    base = unique("epbad")
    _model(sm, s3, f"{base}-m", "bad", ECHO_FAIL_PING="1")
    _config(sm, f"{base}-c", f"{base}-m", health_timeout=60)
    sm.create_endpoint(EndpointName=base, EndpointConfigName=f"{base}-c")
    d = wait_endpoint(sm, base)
    assert d["EndpointStatus"] == "Failed"
    assert "ping refused on purpose" in d["FailureReason"]
    with pytest.raises(sm.exceptions.ClientError) as err:
        sm.update_endpoint(EndpointName=base, EndpointConfigName=f"{base}-c")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    sm.delete_endpoint(EndpointName=base)


def test_delete_while_creating_stops_the_servers(sm, s3, tmp_path):
    base = unique("epdel")
    pid_file = tmp_path / "server.pid"
    _model(sm, s3, f"{base}-m", "slow", ECHO_START_DELAY="30", ECHO_PID_FILE=str(pid_file))
    _config(sm, f"{base}-c", f"{base}-m")
    sm.create_endpoint(EndpointName=base, EndpointConfigName=f"{base}-c")
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the model server never started"
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    assert sm.describe_endpoint(EndpointName=base)["EndpointStatus"] == "Creating"
    sm.delete_endpoint(EndpointName=base)
    assert base not in [e["EndpointName"] for e in _wait_gone(sm, base)]
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)


def _wait_gone(sm, name: str) -> list[dict]:
    deadline = time.monotonic() + 30
    while True:
        listed = sm.list_endpoints(NameContains=name)["Endpoints"]
        if not listed or time.monotonic() > deadline:
            return listed
        time.sleep(0.1)


def test_invoking_an_endpoint_that_does_not_exist_is_the_runtime_validation_error(rt):
    """SageMaker Runtime says ValidationError (its own model's code), not the control plane's
    ValidationException: a client catching rt.exceptions.ValidationError must catch it here too."""
    with pytest.raises(rt.exceptions.ValidationError) as err:
        rt.invoke_endpoint(EndpointName="no-such-endpoint", ContentType="application/json", Body=b"{}")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert "Endpoint no-such-endpoint of account" in err.value.response["Error"]["Message"]
    assert err.value.response["Error"]["Message"].endswith("not found.")
