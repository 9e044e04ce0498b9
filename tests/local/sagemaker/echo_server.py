"""A tiny model server that follows SageMaker's inference container contract, for tests: answers
GET /ping (or, with ECHO_FAIL_PING=1, dies before it ever answers, as a model that fails to load does), and POST /invocations by echoing the request with
the model file's content, or by failing with the status the request asks for."""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODEL_DIR = Path(os.environ["SM_MODEL_DIR"])
VERSION = os.environ.get("ECHO_VERSION", "v1")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        sys.stderr.write("echo-server: " + fmt % args + "\n")

    def _reply(self, status, body: bytes, content_type="application/json", extra=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/ping":
            return self._reply(404, b"{}")
        self._reply(200, b'{"status": "healthy"}')

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = json.loads(body or b"{}")
        if "fail" in request:
            return self._reply(int(request["fail"]), json.dumps({"error": "asked to fail"}).encode())
        answer = {
            "echo": request,
            "model": (MODEL_DIR / "model.txt").read_text() if (MODEL_DIR / "model.txt").exists() else None,
            "version": VERSION,
            "pid": os.getpid(),
            "content_type": self.headers.get("Content-Type"),
            "accept": self.headers.get("Accept"),
        }
        extra = {}
        if self.headers.get("X-Amzn-SageMaker-Custom-Attributes"):
            extra["X-Amzn-SageMaker-Custom-Attributes"] = "echoed=" + self.headers["X-Amzn-SageMaker-Custom-Attributes"]
        self._reply(200, json.dumps(answer).encode(), extra=extra)


if __name__ == "__main__":
    if os.environ.get("ECHO_FAIL_PING") == "1":
        print("echo-server: model failed to load: ping refused on purpose", file=sys.stderr, flush=True)
        sys.exit(1)
    if os.environ.get("ECHO_PID_FILE"):
        Path(os.environ["ECHO_PID_FILE"]).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("ECHO_START_DELAY", "0")))  # a model that takes a while to load
    port = int(os.environ["SAGEMAKER_BIND_TO_PORT"])
    print(f"echo-server: listening on {port}", file=sys.stderr, flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
