"""The SageMaker inference container contract around the batching engine.

  python workloads/serve/sm_server.py

Listens on 0.0.0.0:$SAGEMAKER_BIND_TO_PORT (default 8080; SM_SERVER_HOST narrows the address,
port 0 picks a free one and the log line "listening on" says which). GET /ping answers 200 once the
model is loaded (503 before); POST /invocations takes LMI's JSON, `{"inputs": "...", "parameters":
{...}}` -> `{"generated_text": "..."}`, a list of inputs -> a list of results, with the adapter the
X-Amzn-SageMaker-Adapter-Identifier header names. POST /adapters, DELETE /adapters/{name} and
GET /adapters register, unregister and list LoRA adapters at run time (SageMaker's adapter inference
components). The model comes from $SM_MODEL_DIR (default /opt/ml/model): a Hugging Face model or
LMI artifacts (see README). Each HTTP request runs on its own thread and waits on the shared engine,
which batches them."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lora_adapters import AdapterError, AdapterExistsError, AdapterNotFoundError  # noqa: E402
from model_source import ConfigError, load_engine, registered_adapter_dir, resolve_model  # noqa: E402
from request_params import (  # noqa: E402
    ADAPTER_HEADER,
    RequestError,
    parse_adapter_registration,
    parse_request,
)

log = logging.getLogger("sm_server")
REQUEST_TIMEOUT_S = float(os.environ.get("SM_SERVER_REQUEST_TIMEOUT", "600"))


def render_result(result, params) -> dict:
    out = {"generated_text": result.text}
    if params.details:
        out["details"] = {"finish_reason": result.finish_reason, "generated_tokens": len(result.token_ids),
                          "inputs_tokens": result.prompt_tokens}
    return out


def invoke(engine, body, adapter_header: str | None = None) -> tuple[int, object]:
    """Answer one /invocations body: (HTTP status, JSON payload). Pure apart from the engine.
    `adapter_header`: the X-Amzn-SageMaker-Adapter-Identifier header, the adapter of every prompt."""
    try:
        prompts, params, many = parse_request(body, default_max_new_tokens=engine.default_max_new_tokens,
                                              adapters=getattr(engine, "adapter_names", None),
                                              adapter_header=adapter_header)
        futures = [engine.submit(p, params.for_prompt(i)) for i, p in enumerate(prompts)]
    except RequestError as err:
        return err.status, err.to_json()
    try:
        results = [render_result(f.result(REQUEST_TIMEOUT_S), params) for f in futures]
    except RequestError as err:  # its adapter was unregistered while it waited
        return err.status, err.to_json()
    return 200, (results if many else results[0])


def register(engine, body) -> tuple[int, dict]:
    """Answer one POST /adapters body: load the adapter into a free slot. 400: a malformed body;
    409: the name is taken; 424: the adapter cannot be loaded (the error says why)."""
    try:
        reg = parse_adapter_registration(body)
    except RequestError as err:
        return err.status, err.to_json()
    if reg.name in engine.adapter_names:  # before pulling or reading anything
        return _taken(reg.name)
    try:
        _load_registered(engine, reg.name, reg.src)
    except AdapterExistsError:  # registered by a concurrent request meanwhile
        return _taken(reg.name)
    except AdapterError as err:
        return 424, {"code": 424, "error": f"cannot load the adapter: {err}", "field": err.field}
    except ConfigError as err:  # the s3:// pull failed
        return 424, {"code": 424, "error": f"cannot load the adapter: {err}", "field": "src"}
    except RequestError as err:  # the engine is stopping
        return err.status, err.to_json()
    log.info("adapter %s registered from %s", reg.name, reg.src)
    return 200, {"message": f"Adapter {reg.name} registered"}


def _load_registered(engine, name: str, src: str) -> None:
    """Pull (s3://) and load one adapter; the pulled copy goes once the engine holds the weights."""
    path, scratch = registered_adapter_dir(src)
    try:
        if not path.is_dir():
            raise AdapterError(name, "src", f"{src}: no such directory here (give the adapter's local directory or "
                                            "its s3:// prefix)")
        engine.add_adapter(name, path)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _taken(name: str) -> tuple[int, dict]:
    return 409, {"code": 409, "error": f"adapter {name!r} is already registered; unregister it first "
                                       f"(DELETE /adapters/{name})", "field": "name"}


def unregister(engine, name: str) -> tuple[int, dict]:
    """Answer DELETE /adapters/{name}: unload the adapter and free its slot."""
    try:
        engine.remove_adapter(name)
    except AdapterNotFoundError:
        return 404, {"code": 404, "error": f"The adapter {name} was not found"}
    except AdapterError as err:  # the endpoint's default adapter
        return 409, {"code": 409, "error": str(err), "field": err.field}
    except RequestError as err:
        return err.status, err.to_json()
    log.info("adapter %s unregistered", name)
    return 200, {"message": f"Adapter {name} unregistered"}


def list_adapters(engine) -> dict:
    """GET /adapters: what is registered and how much room is left (for debugging)."""
    bank = getattr(engine, "lora_bank", None)
    return {"adapters": sorted(engine.adapter_names), "max_loras": bank.max_loras if bank else 0,
            "max_lora_rank": bank.max_rank if bank else None}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    engine = None          # set once the model is loaded
    load_error: str | None = None


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # route the access log through logging, at debug level
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> str:
        return urlsplit(self.path).path

    def _loading(self) -> bool:
        if self.server.engine is None:
            self._send(503, {"code": 503, "error": "the model is still loading; retry after GET /ping is 200"})
            return True
        return False

    def do_GET(self):
        route = self._route()
        if route == "/adapters":
            if not self._loading():
                self._send(200, list_adapters(self.server.engine))
            return
        if route != "/ping":
            return self._send(404, {"code": 404, "error": f"no route GET {self.path}; use GET /ping or GET /adapters"})
        if self.server.engine is None:
            return self._send(503, {"status": "Loading" if not self.server.load_error else "Failed",
                                    "error": self.server.load_error})
        self._send(200, {"status": "Healthy"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        route = self._route()
        if route not in ("/invocations", "/adapters"):
            return self._send(404, {"code": 404, "error": f"no route POST {self.path}; use POST /invocations or "
                                                          "POST /adapters"})
        if self._loading():
            return
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if ctype not in ("application/json", "*/*", ""):
            return self._send(415, {"code": 415, "error": f"Content-Type {ctype!r}: send application/json"})
        try:
            body = json.loads(raw or b"null")
        except ValueError as err:
            return self._send(400, {"code": 400, "error": f"body: not valid JSON ({err})", "field": "body"})
        try:
            if route == "/adapters":
                status, payload = register(self.server.engine, body)
            else:
                status, payload = invoke(self.server.engine, body, self.headers.get(ADAPTER_HEADER))
        except Exception as err:  # the engine failed: a server error, said plainly
            what = "registering the adapter" if route == "/adapters" else "generation"
            log.exception("%s failed", what)
            status, payload = 500, {"code": 500, "error": f"{what} failed: {err}"}
        self._send(status, payload)

    def do_DELETE(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # keep the connection's next request readable
        route = self._route()
        prefix = "/adapters/"
        if not route.startswith(prefix) or len(route) == len(prefix) or "/" in route[len(prefix):]:
            return self._send(404, {"code": 404, "error": f"no route DELETE {self.path}; use DELETE /adapters/{{name}}"})
        if self._loading():
            return
        try:
            status, payload = unregister(self.server.engine, unquote(route[len(prefix):]))
        except Exception as err:
            log.exception("unregistering an adapter failed")
            status, payload = 500, {"code": 500, "error": f"unregistering the adapter failed: {err}"}
        self._send(status, payload)


def load(server: Server, model_dir: str) -> None:
    try:
        settings = resolve_model(model_dir)
        if settings.engine == "vllm":
            try:
                import vllm  # noqa: F401
                why = "this server has no vLLM backend (LMI's own server runs vLLM in the LMI container)"
            except ImportError:
                why = "vllm is not importable here"
            log.warning("serving.properties asks for vLLM rolling batch (tensor_parallel_degree=%s); %s, "
                        "so the batching engine serves it", settings.tensor_parallel_degree, why)
        server.engine = load_engine(settings)
        log.info("model loaded from %s (engine batching, max batch %d, max wait %.0f ms); ready",
                 settings.model_dir, settings.max_batch_size, settings.max_wait_ms)
    except Exception as err:
        server.load_error = str(err)
        log.error("cannot load the model: %s", err, exc_info=not isinstance(err, ConfigError))
        # SageMaker sees a failed container; the local service sees the exit code.
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv=None) -> int:
    logging.basicConfig(level=os.environ.get("SM_SERVER_LOG_LEVEL", "INFO"), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    host = os.environ.get("SM_SERVER_HOST", "0.0.0.0")
    model_dir = os.environ.get("SM_MODEL_DIR", "/opt/ml/model")
    server = Server((host, port), Handler)
    log.info("listening on %s:%d", host, server.server_address[1])
    stopping = threading.Event()

    def stop(signum, frame):
        stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=load, args=(server, model_dir), name="load-model", daemon=True).start()
    server.serve_forever()
    server.server_close()
    if server.engine is not None:
        server.engine.close()
    if server.load_error:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
