"""The SageMaker inference container contract around the batching engine.

  python workloads/serve/sm_server.py

Listens on 0.0.0.0:$SAGEMAKER_BIND_TO_PORT (default 8080; SM_SERVER_HOST narrows the address,
port 0 picks a free one and the log line "listening on" says which). GET /ping answers 200 once the
model is loaded (503 before); POST /invocations takes LMI's JSON, `{"inputs": "...", "parameters":
{...}}` -> `{"generated_text": "..."}`, a list of inputs -> a list of results. The model comes
from $SM_MODEL_DIR (default /opt/ml/model): a Hugging Face model or LMI artifacts (see README).
Each HTTP request runs on its own thread and waits on the shared engine, which batches them."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_source import ConfigError, load_engine, resolve_model  # noqa: E402
from request_params import RequestError, parse_request  # noqa: E402

log = logging.getLogger("sm_server")
REQUEST_TIMEOUT_S = float(os.environ.get("SM_SERVER_REQUEST_TIMEOUT", "600"))


def render_result(result, params) -> dict:
    out = {"generated_text": result.text}
    if params.details:
        out["details"] = {"finish_reason": result.finish_reason, "generated_tokens": len(result.token_ids),
                          "inputs_tokens": result.prompt_tokens}
    return out


def invoke(engine, body) -> tuple[int, object]:
    """Answer one /invocations body: (HTTP status, JSON payload). Pure apart from the engine."""
    try:
        prompts, params, many = parse_request(body, default_max_new_tokens=engine.default_max_new_tokens,
                                              adapters=getattr(engine, "adapter_names", None))
        futures = [engine.submit(p, params.for_prompt(i)) for i, p in enumerate(prompts)]
    except RequestError as err:
        return err.status, err.to_json()
    results = [render_result(f.result(REQUEST_TIMEOUT_S), params) for f in futures]
    return 200, (results if many else results[0])


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

    def do_GET(self):
        if self.path != "/ping":
            return self._send(404, {"code": 404, "error": f"no route GET {self.path}; use GET /ping"})
        if self.server.engine is None:
            return self._send(503, {"status": "Loading" if not self.server.load_error else "Failed",
                                    "error": self.server.load_error})
        self._send(200, {"status": "Healthy"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path != "/invocations":
            return self._send(404, {"code": 404, "error": f"no route POST {self.path}; use POST /invocations"})
        if self.server.engine is None:
            return self._send(503, {"code": 503, "error": "the model is still loading; retry after GET /ping is 200"})
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if ctype not in ("application/json", "*/*", ""):
            return self._send(415, {"code": 415, "error": f"Content-Type {ctype!r}: send application/json"})
        try:
            body = json.loads(raw or b"null")
        except ValueError as err:
            return self._send(400, {"code": 400, "error": f"body: not valid JSON ({err})", "field": "body"})
        try:
            status, payload = invoke(self.server.engine, body)
        except Exception as err:  # the engine failed: a server error, said plainly
            log.exception("invocation failed")
            status, payload = 500, {"code": 500, "error": f"generation failed: {err}"}
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
