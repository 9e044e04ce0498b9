"""The local stand-in for LMI's front end (DJL Serving with its Python engine) for a model that
names a custom entry point (`option.entryPoint=model.py`): it runs inside the LMI image's
environment, as LMI runs the entry point inside its container.

What it does of DJL Serving's contract, in order:
- configuration from `serving.properties` in the model directory, overridden by `OPTION_*`
  container variables (OPTION_MAX_ROLLING_BATCH_SIZE -> option.max_rolling_batch_size);
- an `s3://` option.model_id is pulled with s5cmd (LMI's bundled tool) and the entry point sees
  the local copy as `model_id`;
- the entry point is imported from the model directory and called once with an empty input (the
  warm-up at model load); GET /ping answers 200 only after that;
- POST /invocations requests are gathered for up to `max_batch_delay` ms, at most `batch_size`
  at a time, and handed to `handle()` as one batch; each request gets the output at its
  `batch_index`, with the status code of the whole batch's Output (DJL applies one code to a
  batch); a request's X-Amzn-SageMaker-Adapter-Identifier header reaches it as an Input property
  of that name, as DJL hands request headers to the Python engine;
- SageMaker's adapter registration (adapter inference components): POST /adapters `{"name",
  "src", ...}` calls the entry point's `register_adapter(inputs)`, DELETE /adapters/{name} its
  `unregister_adapter(inputs)`, the fields as Input properties; the Output's code is the answer's.
Not modelled: DJL's worker pools, model archives, streaming, and its own request routes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("lmi_frontend")
RESPONSE_TIMEOUT_S = 600
ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
ADAPTER_FIELDS = ("name", "src", "alias", "preload", "pin")


def parse_properties(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def configuration(model_dir: Path, environ: dict[str, str]) -> dict[str, str]:
    """serving.properties, then OPTION_* variables on top (LMI's precedence)."""
    path = model_dir / "serving.properties"
    props = parse_properties(path.read_text()) if path.is_file() else {}
    for key, value in environ.items():
        if key.startswith("OPTION_"):
            name = key[len("OPTION_"):].lower()
            # LMI's variables are upper snake; entryPoint is the one camel-case option
            props["option.entryPoint" if name == "entrypoint" else "option." + name] = value
    return props


def handler_properties(props: dict[str, str], model_dir: Path) -> dict[str, str]:
    """What the entry point's `inputs.get_properties()` holds: options without their prefix."""
    out = {k.removeprefix("option."): v for k, v in props.items()}
    out["model_dir"] = str(model_dir)
    return out


def pull_model(model_id: str, environ: dict[str, str]) -> Path:
    s5cmd = shutil.which("s5cmd")
    if s5cmd is None:
        raise RuntimeError(f"option.model_id={model_id}: s5cmd is not in this image")
    dest = Path(tempfile.gettempdir()) / ".djl-download" / hashlib.sha256(model_id.encode()).hexdigest()[:16]
    if (dest / "config.json").is_file():
        return dest
    cmd = [s5cmd]
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        cmd += ["--endpoint-url", endpoint]
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd + ["cp", model_id.rstrip("/") + "/*", str(dest) + "/"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"option.model_id={model_id}: s5cmd failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return dest


def load_entry_point(model_dir: Path, name: str):
    path = model_dir / name
    if not path.is_file():
        raise RuntimeError(f"option.entryPoint={name}: no such file in the model directory {model_dir}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


class Batcher:
    """Gathers requests into batches for `handle()`, as DJL's batch aggregation does."""

    def __init__(self, handle, properties: dict[str, str], batch_size: int, max_delay_ms: float):
        self.handle, self.properties = handle, properties
        self.batch_size, self.max_delay = max(1, batch_size), max(0.0, max_delay_ms) / 1000
        self.requests: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, name="batcher", daemon=True).start()

    def submit(self, body: bytes, content_type: str, adapter: str | None = None) -> Future:
        future: Future = Future()
        self.requests.put((body, content_type, adapter, future))
        return future

    def _loop(self) -> None:
        while True:
            batch = [self.requests.get()]
            deadline = time.monotonic() + self.max_delay
            while len(batch) < self.batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self.requests.get(timeout=left))
                except queue.Empty:
                    break
            self._run(batch)

    def _run(self, batch) -> None:
        from djl_python import Input

        items = [Input({**self.properties, **({ADAPTER_HEADER: adapter} if adapter else {})}, body,
                       headers={"Content-Type": ctype}) for body, ctype, adapter, _ in batch]
        try:
            out = self.handle(Input(self.properties, batch=items))
        except Exception as exc:  # DJL answers every request of a failed batch with the error
            log.exception("handle() raised")
            for *_, future in batch:
                future.set_result((424, "application/json", json.dumps({"code": 424, "error": str(exc)}).encode()))
            return
        code = getattr(out, "code", 200)
        ctype = getattr(out, "properties", {}).get("Content-Type", "application/json")
        for i, (*_, future) in enumerate(batch):
            body = out.items.get(i, out.items.get(None, b"")) if out is not None else b""
            future.set_result((code, ctype, body))


def call_adapter_hook(module, hook: str, properties: dict) -> tuple[int, str, bytes]:
    """The entry point's register_adapter / unregister_adapter with `properties` as its Input's:
    (status, content type, body) from its Output."""
    from djl_python import Input

    fn = getattr(module, hook, None)
    if fn is None:
        return 404, "application/json", json.dumps({"code": 404, "error": f"the entry point has no {hook}()"}).encode()
    try:
        out = fn(Input({k: str(v).lower() if isinstance(v, bool) else v for k, v in properties.items()}))
    except Exception as exc:  # DJL answers a failed registration with the error
        log.exception("%s() raised", hook)
        return 424, "application/json", json.dumps({"code": 424, "error": str(exc)}).encode()
    body = out.items.get(None, next(iter(out.items.values()), b"")) if out is not None else b""
    return getattr(out, "code", 200), getattr(out, "properties", {}).get("Content-Type", "application/json"), body


class Server(ThreadingHTTPServer):
    daemon_threads = True
    batcher: Batcher | None = None
    module = None  # the entry point, once imported

    def handle_error(self, request, client_address):
        # health probes that connect and hang up are not errors
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        log.debug(fmt, *args)

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/ping":
            return self._send(404, "application/json", b'{"error": "not found"}')
        ready = self.server.batcher is not None
        self._send(200 if ready else 503, "application/json", b"{}" if ready else b'{"status": "loading"}')

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path not in ("/invocations", "/adapters"):
            return self._send(404, "application/json", b'{"error": "not found"}')
        if self.server.batcher is None:
            return self._send(503, "application/json", b'{"error": "the model is still loading"}')
        if self.path == "/adapters":
            try:
                fields = json.loads(body or b"{}")
            except ValueError:
                fields = None
            if not isinstance(fields, dict):
                return self._send(400, "application/json", b'{"code": 400, "error": "body: a JSON object"}')
            return self._send(*call_adapter_hook(self.server.module, "register_adapter",
                                                 {k: fields[k] for k in ADAPTER_FIELDS if k in fields}))
        code, ctype, payload = self.server.batcher.submit(body, self.headers.get("Content-Type", ""),
                                                          self.headers.get(ADAPTER_HEADER)).result(RESPONSE_TIMEOUT_S)
        self._send(code, ctype, payload)

    def do_DELETE(self):
        prefix = "/adapters/"
        if not self.path.startswith(prefix) or len(self.path) == len(prefix):
            return self._send(404, "application/json", b'{"error": "not found"}')
        if self.server.batcher is None:
            return self._send(503, "application/json", b'{"error": "the model is still loading"}')
        from urllib.parse import unquote

        self._send(*call_adapter_hook(self.server.module, "unregister_adapter",
                                      {"name": unquote(self.path[len(prefix):])}))


def main() -> int:
    from djl_python import Input

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    environ = dict(os.environ)
    model_dir = Path(environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    props = configuration(model_dir, environ)
    entry = props.get("option.entryPoint")
    if not entry:
        log.error("no option.entryPoint: this front end runs custom entry points only")
        return 2
    properties = handler_properties(props, model_dir)
    model_id = props.get("option.model_id", "")
    if model_id.startswith("s3://"):
        properties["model_id"] = str(pull_model(model_id, environ))
    server = Server(("0.0.0.0", int(environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("listening on port %d", server.server_address[1])
    module = load_entry_point(model_dir, entry)
    module.handle(Input(properties))  # DJL's warm-up call at model load
    server.module = module
    server.batcher = Batcher(module.handle, properties, int(props.get("batch_size", 1)),
                             float(props.get("max_batch_delay", 100)))
    import torch
    import transformers

    log.info("model loaded from %s with entry point %s (python %s, torch %s, transformers %s)",
             properties.get("model_id", model_dir), entry, sys.version.split()[0], torch.__version__,
             transformers.__version__)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
