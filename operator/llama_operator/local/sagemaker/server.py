"""`llama-operator local-sagemaker`: SageMaker (inference components included), SageMaker Runtime and
Application Auto Scaling (for endpoint variants and inference components) on one port, moto's S3,
SQS and CloudWatch on another, state on disk. Prints `export NAME=value` lines, then `# ready`; logs
go to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from llama_operator.local.sagemaker import (
    autoscaling,
    components,
    imageenv,
    model_servers,
    names,
    s3snapshot,
    scheduled,
    training,
)
from llama_operator.local.sagemaker import endpoints as ep
from llama_operator.local.sagemaker.api import SageMaker
from llama_operator.local.sagemaker.context import Context
from llama_operator.local.sagemaker.errors import AwsError, InternalFailure, ModelError
from llama_operator.local.sagemaker.events import EventSink
from llama_operator.local.sagemaker.store import Store

log = logging.getLogger("llama_operator.local")

DUMMY_KEY_ID = "local"
DUMMY_SECRET = "local-secret"
_INVOKE_PATH = re.compile(r"^/endpoints/([^/]+)/invocations$")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llama-operator local-sagemaker", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    p.add_argument("--port", type=int, default=0, help="SageMaker and SageMaker Runtime port (0: a free one)")
    p.add_argument("--moto-port", type=int, default=0, help="moto's S3, SQS and CloudWatch port (0: a free one)")
    p.add_argument("--state-dir", required=True, type=Path, help="where jobs, models and endpoints are kept")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--events-queue", default="llama-operator-events",
                   help="SQS queue that receives the EventBridge-shaped state-change events")
    p.add_argument("--container", action="append", default=[], metavar="REGEX=COMMAND",
                   help="serve images matching REGEX with COMMAND ({python}, {workloads} are filled in); "
                        "repeatable, checked before the built-in LMI entry")
    p.add_argument("--image-profiles", type=Path, default=None,
                   help="a JSON file of further image profiles (the schema of llama_operator/plan/image_profiles.json), "
                        "for images of your own")
    p.add_argument("--max-instances", type=int, default=8,
                   help="instances that may run at once per kind of usage (ResourceLimitExceeded above it)")
    p.add_argument("--scheduled", type=float, metavar="SECONDS", default=None,
                   help="scheduled mode, for scale tests: jobs and endpoints change state every SECONDS "
                        "(jittered) and nothing runs (llama_operator/local/sagemaker/scheduled.py)")
    p.add_argument("--throttle-rate", type=float, default=0.0, metavar="FRACTION",
                   help="answer this fraction of SageMaker API calls with ThrottlingException, as AWS does "
                        "under load")
    p.add_argument("--autoscaling-period", type=float, default=60.0, metavar="SECONDS",
                   help="length of one Application Auto Scaling metric period (AWS: 60); cooldowns are scaled by "
                        "SECONDS/60 too, so 1 makes the high alarm's 3 periods 3 s and a 300 s cooldown 5 s "
                        "(llama_operator/local/sagemaker/autoscaling.py)")
    args = p.parse_args(argv)
    if not args.autoscaling_period > 0:
        p.error("--autoscaling-period must be greater than 0")
    if not 0 <= args.throttle_rate < 1:
        p.error("--throttle-rate must be at least 0 and below 1")
    try:
        args.container = [model_servers.parse_container_flag(c) for c in args.container]
    except (ValueError, re.error) as exc:
        p.error(str(exc))
    return args


class Service:
    def __init__(self, args: argparse.Namespace):
        from moto.server import ThreadedMotoServer  # heavy: imported only when serving

        self.args = args
        args.state_dir.mkdir(parents=True, exist_ok=True)
        self.moto = ThreadedMotoServer(ip_address=args.host, port=args.moto_port, verbose=False)
        self.moto.start()
        moto_host, moto_port = self.moto.get_host_and_port()
        moto_url = f"http://{moto_host}:{moto_port}"
        ThreadingHTTPServer.request_queue_size = 128  # bursts of concurrent invocations
        self.http = ThreadingHTTPServer((args.host, args.port), _Handler)
        self.http.daemon_threads = True
        self.http.service = self
        host, port = self.http.server_address[:2]
        # A wildcard bind is reachable on loopback; clients need an address they can dial.
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        moto_host = "127.0.0.1" if moto_host in ("0.0.0.0", "::") else moto_host
        moto_url = f"http://{moto_host}:{moto_port}"
        url = f"http://{host}:{port}"
        self.child_env = {
            "AWS_ENDPOINT_URL_SAGEMAKER": url,
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": url,
            "AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING": url,  # botocore's variable for "Application Auto Scaling"
            "AWS_ENDPOINT_URL_S3": moto_url,
            "AWS_ENDPOINT_URL_SQS": moto_url,
            "AWS_ENDPOINT_URL_CLOUDWATCH": moto_url,  # training metrics, as SageMaker publishes them
            "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
            "AWS_DEFAULT_REGION": args.region,
        }
        # The service's own boto3 clients (S3 downloads, SQS events) use the same variables.
        os.environ.update(self.child_env)
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)
        import boto3

        self.s3 = boto3.client("s3", region_name=args.region)
        restored = s3snapshot.restore(self.s3, args.state_dir / "s3")
        if restored:
            log.info("restored %d S3 objects from the state dir", restored)
        sqs = boto3.client("sqs", region_name=args.region)
        queue_url = sqs.create_queue(QueueName=args.events_queue)["QueueUrl"]
        # The operator's own prefix for training sources and endpoint code, as the account stack's
        # SourceBucket (llama-operator-ACCOUNT): never the bucket of a user's model or data.
        source_bucket = f"llama-operator-{names.ACCOUNT}"
        if source_bucket not in {b["Name"] for b in self.s3.list_buckets().get("Buckets", [])}:
            self.s3.create_bucket(Bucket=source_bucket)
        self.env = {**self.child_env, "LLAMA_OPERATOR_EVENTS_QUEUE_URL": queue_url,
                    "LLAMA_OPERATOR_SOURCE_S3_URI": f"s3://{source_bucket}/"}
        self.ctx = Context(
            region=args.region, state_dir=args.state_dir, store=Store(args.state_dir),
            sink=EventSink(sqs, queue_url), child_env=dict(self.env),
            s3_factory=lambda: boto3.client("s3", region_name=args.region), max_instances=args.max_instances,
        )
        images = imageenv.ImageEnvironments(profiles=imageenv.load_profiles(extra=args.image_profiles))
        if args.scheduled is not None:
            timetable = scheduled.Timetable()
            self.jobs = scheduled.ScheduledJobs(self.ctx, timetable, args.scheduled, images)
            self.endpoints = scheduled.ScheduledEndpoints(self.ctx, timetable, args.scheduled, images)
        else:
            self.jobs = training.TrainingJobs(self.ctx, images)
            self.endpoints = ep.Endpoints(self.ctx, args.container, images)
        self.api = SageMaker(self.ctx, self.jobs, self.endpoints, throttle_rate=args.throttle_rate)
        self.components = components.InferenceComponents(self.ctx, self.endpoints, self.api,
                                                         scheduled=args.scheduled is not None,
                                                         time_scale=args.autoscaling_period / 60.0)
        self.api.components = self.endpoints.components = self.components
        self.autoscaling = autoscaling.AutoScaling(self.ctx, self.api, self.endpoints, period=args.autoscaling_period,
                                                   components=self.components)
        self.api.autoscaling = self.components.autoscaling = self.autoscaling
        self.jobs.recover()
        self.endpoints.recover()
        self.components.recover()
        self.autoscaling.recover()

    def serve(self) -> None:
        threading.Thread(target=self.http.serve_forever, name="http", daemon=True).start()
        self.autoscaling.start()
        for key, value in self.env.items():
            print(f"export {key}={value}")  # the keys are fixed dummies, never real credentials
        print("# ready", flush=True)
        log.info("local SageMaker on %s, S3/SQS/CloudWatch (moto) on %s, state in %s",
                 self.env["AWS_ENDPOINT_URL_SAGEMAKER"], self.env["AWS_ENDPOINT_URL_S3"], self.args.state_dir)

    def close(self) -> None:
        self.autoscaling.stop()
        self.jobs.shutdown()
        self.components.shutdown()
        self.endpoints.shutdown()
        self.ctx.sink.flush(5)
        self.http.shutdown()
        try:
            log.info("saved %d S3 objects to the state dir", s3snapshot.save(self.s3, self.args.state_dir / "s3"))
        except Exception:
            log.exception("could not save S3 to the state dir")
        self.moto.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalSageMaker"
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's
    # delayed ACK (about 40 ms a call on loopback).
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def _read(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, err: AwsError, json_type: str) -> None:
        body = json.dumps(err.body()).encode()
        self._send(err.status, body, {"Content-Type": json_type, "x-amzn-ErrorType": err.code,
                                      "x-amzn-RequestId": "local"})

    def do_GET(self):
        if self.path in ("/", "/ping", "/health"):
            self._send(200, b"{}", {"Content-Type": "application/json"})
        elif self.path == "/_local/calls":  # this service's own: API calls by operation and outcome
            calls = [{"operation": op, "outcome": outcome, "count": n}
                     for (op, outcome), n in sorted(self.server.service.api.calls.items())]
            self._send(200, json.dumps(calls).encode(), {"Content-Type": "application/json"})
        else:
            self._send(404, b"{}", {"Content-Type": "application/json"})

    def do_POST(self):
        service: Service = self.server.service
        body = self._read()
        path = urlparse(self.path).path
        m = _INVOKE_PATH.match(path)
        if m:
            return self._invoke(service, unquote(m.group(1)), body)
        target = self.headers.get("X-Amz-Target", "")
        json_type = "application/x-amz-json-1.1"
        prefix = target.split(".", 1)[0]
        apis = {"SageMaker": service.api, autoscaling.TARGET_PREFIX: service.autoscaling}
        if "." not in target or prefix not in apis:
            return self._error(AwsError(f"Unknown target {target!r}"), json_type)
        try:
            try:
                params = json.loads(body or b"{}")
            except ValueError as exc:
                raise AwsError(f"The request body is not valid JSON: {exc}") from exc
            result = apis[prefix].call(target.split(".", 1)[1], params)
            self._send(200, json.dumps(result).encode(), {"Content-Type": json_type, "x-amzn-RequestId": "local"})
        except AwsError as err:
            self._error(err, json_type)
        except Exception as exc:
            log.exception("%s failed", target)
            self._error(InternalFailure(f"{type(exc).__name__}: {exc}"), json_type)

    def _invoke(self, service: Service, name: str, body: bytes) -> None:
        forward = {"Content-Type": self.headers.get("Content-Type", "application/octet-stream")}
        if self.headers.get("Accept"):
            forward["Accept"] = self.headers["Accept"]
        custom = self.headers.get("X-Amzn-SageMaker-Custom-Attributes")
        if custom:
            forward["X-Amzn-SageMaker-Custom-Attributes"] = custom
        try:
            # an endpoint for inference components, or a request naming one (components.py)
            answer = service.components.invoke(name, self.headers.get("X-Amzn-SageMaker-Inference-Component"),
                                               body, forward)
            variant, headers, data = answer or service.endpoints.invoke(
                name, body, forward, self.headers.get("X-Amzn-SageMaker-Target-Variant"))
        except AwsError as err:
            return self._error(err, "application/json")
        except Exception as exc:
            log.exception("invoke %s failed", name)
            return self._error(ModelError(f"{type(exc).__name__}: {exc}"), "application/json")
        out = {"Content-Type": _header(headers, "Content-Type") or "application/octet-stream",
               "x-Amzn-Invoked-Production-Variant": variant}
        attrs = _header(headers, "X-Amzn-SageMaker-Custom-Attributes")
        if attrs:
            out["X-Amzn-SageMaker-Custom-Attributes"] = attrs
        self._send(200, data, out)


def _header(headers: dict[str, str], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service(args)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    service.serve()
    while not done.wait(0.5):
        pass
    log.info("shutting down: stopping jobs' and endpoints' processes")
    service.close()
    return 0
