"""sm_server.py as SageMaker runs it: a separate process, real HTTP, model from SM_MODEL_DIR."""

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llama_operator.paths import workloads_dir

SERVE_DIR = workloads_dir() / "serve"

PROMPTS = ["Hello, how are you?", "I want two tickets", "Where is the station?", "Thank you very much",
           "Person1: Hi!##Person2:", "Could you help me?", "It is raining again", "See you later"]


def http(method, url, body=None, raw=None, timeout=120):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class ServerProcess:
    def __init__(self, model_dir, extra_env=None):
        env = {**os.environ, "SM_MODEL_DIR": str(model_dir), "SAGEMAKER_BIND_TO_PORT": "0",
               "SM_SERVER_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self.proc = subprocess.Popen([sys.executable, str(SERVE_DIR / "sm_server.py")], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.port = None
        self._found = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._found.wait(60), "no 'listening on' line:\n" + "".join(self.lines)
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"listening on [^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self._found.set()
        self._found.set()

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        statuses = []
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "server exited:\n" + "".join(self.lines)
            status, _ = http("GET", self.url + "/ping")
            statuses.append(status)
            if status == 200:
                return statuses
            time.sleep(0.2)
        raise AssertionError("never ready:\n" + "".join(self.lines))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    srv = ServerProcess(tiny_model_dir, {"SM_SERVER_LOG_LEVEL": "INFO"})
    srv.statuses = srv.wait_ready()
    yield srv
    srv.stop()


def test_ping_is_200_only_once_loaded(server):
    assert server.statuses[-1] == 200
    assert all(s == 503 for s in server.statuses[:-1])
    assert any("ready" in line for line in server.lines)


def test_invocations_single_and_list(server):
    status, one = http("POST", server.url + "/invocations",
                       {"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 12, "temperature": 0}})
    assert status == 200 and isinstance(one["generated_text"], str)
    status, many = http("POST", server.url + "/invocations",
                        {"inputs": PROMPTS[:3], "parameters": {"max_new_tokens": 12, "temperature": 0}})
    assert status == 200 and len(many) == 3
    assert many[0] == one  # greedy: the same prompt gives the same answer in a list


def test_malformed_request_fails_alone_while_its_batch_succeeds(server):
    params = {"max_new_tokens": 20, "temperature": 0}
    alone = [http("POST", server.url + "/invocations", {"inputs": p, "parameters": params})[1] for p in PROMPTS]
    bodies = [{"inputs": p, "parameters": params} for p in PROMPTS]
    bad_at = 3
    bodies.insert(bad_at, {"inputs": "hi", "parameters": {"max_new_tokens": -5}})
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: http("POST", server.url + "/invocations", b), bodies))
    bad_status, bad = answers.pop(bad_at)
    assert bad_status == 400
    assert bad["field"] == "parameters.max_new_tokens" and "positive integer" in bad["error"]
    assert [a for a in answers] == [(200, a) for a in alone]


def test_http_level_errors_are_clear(server):
    status, body = http("POST", server.url + "/invocations", raw=b"{not json")
    assert status == 400 and body["field"] == "body"
    status, body = http("GET", server.url + "/nope")
    assert status == 404 and "/ping" in body["error"]


def test_vllm_configuration_from_s3_is_served_by_the_batching_engine(tiny_model_dir, tmp_path):
    """serving.properties for vLLM with an s3:// model id: s5cmd pulls it from moto's S3, and with
    no vLLM here the batching engine serves it and says so."""
    import boto3
    from moto.server import ThreadedMotoServer

    from lmi import render_artifacts

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    srv = None
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="models")
        for f in Path(tiny_model_dir).iterdir():
            s3.upload_file(str(f), "models", f"tiny/{f.name}")
        code = tmp_path / "code"
        code.mkdir()
        for name, text in render_artifacts("vllm", "s3://models/tiny/", {"max_rolling_batch_size": 8}).items():
            (code / name).write_text(text)
        srv = ServerProcess(code, {"AWS_ENDPOINT_URL_S3": endpoint, "SM_SERVE_CACHE": str(tmp_path / "cache")})
        srv.wait_ready()
        status, out = http("POST", srv.url + "/invocations", {"inputs": PROMPTS[1], "parameters": {"max_new_tokens": 8}})
        assert status == 200 and isinstance(out["generated_text"], str)
        log = "".join(srv.lines)
        assert "vLLM" in log and "batching engine serves it" in log
        assert any(p.name == "model.safetensors" for p in (tmp_path / "cache").rglob("*"))
    finally:
        if srv:
            srv.stop()
        moto.stop()


def test_unservable_model_dir_exits_with_a_clear_message(tmp_path):
    srv = ServerProcess(tmp_path)
    assert srv.proc.wait(60) == 1
    log = "".join(srv.lines)
    assert "neither serving.properties nor a Hugging Face model" in log and "SM_MODEL_DIR" in log


def test_a_request_that_does_not_say_max_new_tokens_gets_the_endpoints_default():
    """spec.serving.maxNewTokens reaches the engine as its default; a request's own value wins."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    import sm_server

    class RecordingEngine:
        default_max_new_tokens = 37

        def __init__(self):
            self.seen = []

        def submit(self, prompt, params):
            self.seen.append(params.max_new_tokens)
            done = Future()
            done.set_result(SimpleNamespace(text="ok", finish_reason="length", token_ids=[1], prompt_tokens=1))
            return done

    engine = RecordingEngine()
    assert sm_server.invoke(engine, {"inputs": "hi"})[0] == 200
    assert sm_server.invoke(engine, {"inputs": "hi", "parameters": {"max_new_tokens": 5}})[0] == 200
    assert engine.seen == [37, 5]
