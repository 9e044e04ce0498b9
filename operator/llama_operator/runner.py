"""`llama-operator run`: the kopf operator, cluster-wide by default.

Settings come from flags, each defaulting to an environment variable (see settings.py). The
Kubernetes connection is the usual one (in-cluster service account, else KUBECONFIG), or
`--kubeconfig`; AWS is boto3's standard chain, so AWS_ENDPOINT_URL_<SERVICE> points it at the
embedded default's local services."""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from pathlib import Path

import kopf

from llama_operator.settings import Settings

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-operator run", description=__doc__.splitlines()[0])
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    p.add_argument("-n", "--namespace", action="append", default=[], help="watch only these namespaces")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("--region", help="AWS region (default: $AWS_REGION / $AWS_DEFAULT_REGION)")
    p.add_argument("--events-queue-url", help="SQS queue with SageMaker state-change events "
                                              "(default: $LLAMA_OPERATOR_EVENTS_QUEUE_URL; none: resync only)")
    p.add_argument("--resync-seconds", type=float, help="Describe fallback interval (default 600; "
                                                        "$LLAMA_OPERATOR_RESYNC_SECONDS)")
    p.add_argument("--source-s3-uri", help="S3 prefix the operator uploads training sources and endpoint code "
                                           "to ($LLAMA_OPERATOR_SOURCE_S3_URI; the stack's SourceS3Uri output). "
                                           "Required against AWS; on a local S3 endpoint it defaults to the "
                                           "spec's output prefix")
    p.add_argument("--workloads-dir", help="directory packed as the training source "
                                           "($LLAMA_OPERATOR_WORKLOADS_DIR; default: the project's workloads/)")
    p.add_argument("--role-allowlist", help="YAML file: namespace -> IAM role ARNs it may use")
    p.add_argument("--peering", help="kopf peering object name (default: standalone)")
    p.add_argument("--standalone", action="store_true", help="no peering (the default without --peering)")
    p.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings.from_env(region=args.region, events_queue_url=args.events_queue_url,
                             resync_seconds=args.resync_seconds, source_s3_uri=args.source_s3_uri,
                             workloads_dir=Path(args.workloads_dir) if args.workloads_dir else None,
                             role_allowlist=args.role_allowlist)


def build_registry(settings: Settings, *, kubeconfig: str | None = None, sagemaker_client=None,
                   endpoints: bool = False):
    """A kopf registry with the LlamaFinetune handlers (and the LlamaEndpoint ones with
    `endpoints`), bound to clients made from `settings` (a test may pass its own SageMaker client,
    e.g. one with a botocore Stubber)."""
    from llama_operator import metrics
    from llama_operator.allowlist import RoleAllowlist
    from llama_operator.aws.clients import make_client
    from llama_operator.aws.training_jobs import TrainingJobGateway
    from llama_operator.handlers import finetune, lifecycle
    from llama_operator.handlers.app import App

    registry = kopf.OperatorRegistry()
    app = App(settings=settings,
              sagemaker=TrainingJobGateway(sagemaker_client or make_client("sagemaker", settings.region),
                                           on_call=metrics.on_sagemaker_call),
              s3=make_client("s3", settings.region),
              allowlist=RoleAllowlist.from_file(settings.role_allowlist) if settings.role_allowlist else None,
              kubeconfig=kubeconfig)
    finetune.register(registry, app)
    if endpoints:
        from llama_operator.handlers import endpoint

        endpoint.register(registry, app)
    lifecycle.register(registry, app)
    registry.app = app
    return registry


def operator_coroutine(registry, *, namespaces=(), peering: str | None = None, liveness: str | None = None,
                       stop_flag: threading.Event | None = None, ready_flag: threading.Event | None = None):
    return kopf.operator(registry=registry, clusterwide=not namespaces, namespaces=list(namespaces),
                         standalone=peering is None, peering_name=peering, liveness_endpoint=liveness,
                         stop_flag=stop_flag, ready_flag=ready_flag)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"llama-operator run: {exc}")
        return 2
    if args.metrics_port:
        from llama_operator import metrics
        metrics.serve(args.metrics_port)
    registry = build_registry(settings, kubeconfig=args.kubeconfig, endpoints=True)
    peering = None if args.standalone else args.peering
    asyncio.run(operator_coroutine(registry, namespaces=args.namespace, peering=peering, liveness=args.liveness))
    return 0
