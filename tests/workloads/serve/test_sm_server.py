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


def http(method, url, body=None, raw=None, timeout=120, headers=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
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


# ---------------------------------------------------------------- adapters registered at run time
HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
GREEDY = {"max_new_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def lora_dirs(tiny_model_dir, tmp_path_factory):
    """PEFT-format adapters of the tiny base: gamma's rank (2) below alpha's (8), so alpha's rows
    left in a reused slot would change gamma's answers."""
    from lora_adapters import write_random_adapter
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    root = tmp_path_factory.mktemp("lora")
    return {"alpha": write_random_adapter(model, root / "alpha", rank=8, seed=1, b_std=0.3),
            "gamma": write_random_adapter(model, root / "gamma", rank=2, seed=2, b_std=0.3),
            "rank16": write_random_adapter(model, root / "rank16", rank=16, seed=3, b_std=0.3)}


@pytest.fixture(scope="module")
def reference(tiny_model_dir, lora_dirs):
    """The greedy answer to PROMPTS[0] of an engine that loaded the adapters at start, in-process."""
    from model_source import ServeSettings, load_engine
    from request_params import GenerationParams

    eng = load_engine(ServeSettings(model_dir=tiny_model_dir, adapters={n: str(lora_dirs[n]) for n in ("alpha", "gamma")}),
                      device="cpu")
    answers = {a: eng.generate(PROMPTS[0], GenerationParams(max_new_tokens=GREEDY["max_new_tokens"], adapter=a),
                               timeout=120).text for a in ("", "alpha", "gamma")}
    eng.close()
    assert len(set(answers.values())) == 3, "each adapter changes the answer, or the comparisons prove nothing"
    return answers


@pytest.fixture(scope="module")
def lora_server(tiny_model_dir, tmp_path_factory):
    """An endpoint started with enable_lora, two free slots (rank 8) and no adapters, from the code
    prefix lmi.py renders."""
    from lmi import render_artifacts

    code = tmp_path_factory.mktemp("lora-code")
    settings = {"enable_lora": True, "max_loras": 2, "max_lora_rank": 8, "max_wait_ms": 20}
    for name, text in render_artifacts("batching", str(tiny_model_dir), settings).items():
        (code / name).write_text(text)
    srv = ServerProcess(code)
    srv.wait_ready()
    yield srv
    srv.stop()


def invoke(srv, adapter=None, body=None):
    return http("POST", srv.url + "/invocations", body or {"inputs": PROMPTS[0], "parameters": GREEDY},
                headers={HEADER: adapter} if adapter else None)


def register(srv, name, src):
    return http("POST", srv.url + "/adapters", {"name": name, "src": str(src)})


def unregister(srv, name):
    return http("DELETE", f"{srv.url}/adapters/{name}")


def test_an_adapter_registered_over_http_answers_requests_that_name_it_in_the_header(lora_server, lora_dirs,
                                                                                     reference):
    srv = lora_server
    assert register(srv, "Alpha-IC", lora_dirs["alpha"]) == (200, {"message": "Adapter Alpha-IC registered"})
    try:
        assert http("GET", srv.url + "/adapters") == (200, {"adapters": ["Alpha-IC"], "max_loras": 2,
                                                            "max_lora_rank": 8})
        status, out = invoke(srv, "Alpha-IC")
        assert status == 200 and out["generated_text"] == reference["alpha"] != reference[""]
        status, many = invoke(srv, "Alpha-IC", {"inputs": [PROMPTS[0], PROMPTS[0]], "parameters": GREEDY})
        assert status == 200 and [o["generated_text"] for o in many] == [reference["alpha"]] * 2
        assert invoke(srv)[1]["generated_text"] == reference[""]  # no header: the base model
        # The body may say the same; another adapter (or the base, "") in the body is a conflict.
        same = {"inputs": PROMPTS[0], "parameters": {**GREEDY, "adapter": "Alpha-IC"}}
        assert invoke(srv, "Alpha-IC", same)[1]["generated_text"] == reference["alpha"]
        status, out = invoke(srv, "Alpha-IC", {"inputs": PROMPTS[0], "parameters": {**GREEDY, "adapter": ""}})
        assert status == 400 and out["field"] == "parameters.adapter" and HEADER in out["error"]
    finally:
        assert unregister(srv, "Alpha-IC") == (200, {"message": "Adapter Alpha-IC unregistered"})
    status, out = invoke(srv, "Alpha-IC")
    assert status == 400 and out["field"] == HEADER and "unknown adapter 'Alpha-IC'" in out["error"]
    assert unregister(srv, "Alpha-IC") == (404, {"code": 404, "error": "The adapter Alpha-IC was not found"})
    assert http("GET", srv.url + "/adapters")[1]["adapters"] == []


def test_a_freed_slot_serves_the_next_adapter_with_nothing_left_of_the_one_before(lora_server, lora_dirs, reference):
    srv = lora_server
    assert register(srv, "first", lora_dirs["alpha"])[0] == 200
    assert register(srv, "other", lora_dirs["alpha"])[0] == 200
    status, out = register(srv, "third", lora_dirs["gamma"])
    assert status == 424 and out["field"] == "max_loras" and "all 2 adapter slots are taken" in out["error"]
    assert unregister(srv, "first")[0] == 200
    assert register(srv, "second", lora_dirs["gamma"])[0] == 200  # into the slot "first" had
    try:
        assert invoke(srv, "second")[1]["generated_text"] == reference["gamma"]
        assert invoke(srv, "other")[1]["generated_text"] == reference["alpha"]
        assert invoke(srv)[1]["generated_text"] == reference[""]
    finally:
        for name in ("second", "other"):
            assert unregister(srv, name)[0] == 200


def test_registrations_that_cannot_be_served_say_why(lora_server, lora_dirs, tmp_path):
    srv = lora_server
    assert register(srv, "alpha", lora_dirs["alpha"])[0] == 200
    try:
        status, out = register(srv, "alpha", lora_dirs["gamma"])
        assert status == 409 and out["field"] == "name" and "already registered" in out["error"]
        status, out = register(srv, "big", lora_dirs["rank16"])
        assert status == 424 and out["field"] == "r" and "16 is above this engine's max_lora_rank (8)" in out["error"]
        status, out = register(srv, "missing", tmp_path / "nowhere")
        assert status == 424 and out["field"] == "src" and "no such directory" in out["error"]
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8}')
        (tmp_path / "broken" / "adapter_model.safetensors").write_bytes(b"not safetensors")
        status, out = register(srv, "broken", tmp_path / "broken")
        assert status == 424 and out["field"] == "adapter_model.safetensors" and "cannot be read" in out["error"]
        for body, field in [({"src": str(lora_dirs["gamma"])}, "name"), ({"name": "gamma"}, "src"),
                            ({"name": "-gamma", "src": str(lora_dirs["gamma"])}, "name")]:
            status, out = http("POST", srv.url + "/adapters", body)
            assert (status, out["field"]) == (400, field), body
        status, out = http("POST", srv.url + "/adapters", raw=b"{nope")
        assert (status, out["field"]) == (400, "body")
        assert http("GET", srv.url + "/adapters")[1]["adapters"] == ["alpha"]  # the refused ones took no slot
    finally:
        assert unregister(srv, "alpha")[0] == 200


def test_adapter_routes_answer_503_while_the_model_loads():
    import sm_server

    server = sm_server.Server(("127.0.0.1", 0), sm_server.Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for method, path, body in [("POST", "/adapters", {"name": "a", "src": "/a"}), ("DELETE", "/adapters/a", None),
                                   ("GET", "/adapters", None)]:
            status, out = http(method, url + path, body)
            assert status == 503 and "still loading" in out["error"], (method, path)
    finally:
        server.shutdown()
        server.server_close()
