"""`llama-operator run`: the kopf operator, cluster-wide by default.

Settings come from flags, each defaulting to an environment variable (see settings.py). The
Kubernetes connection is the usual one (in-cluster service account, else KUBECONFIG), or
`--kubeconfig`; AWS is boto3's standard chain, so AWS_ENDPOINT_URL_<SERVICE> points it at the
embedded default's local services."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable

import kopf

from llama_operator.kinds import FINALIZER
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
    from llama_operator.aws.events import EventConsumer
    from llama_operator.aws.sagemaker import SageMakerGateway
    from llama_operator.handlers import finetune
    from llama_operator.handlers.app import App

    registry = kopf.OperatorRegistry()
    app = App(settings=settings,
              sagemaker=SageMakerGateway(sagemaker_client or make_client("sagemaker", settings.region),
                                         on_call=metrics.on_sagemaker_call),
              s3=make_client("s3", settings.region),
              allowlist=RoleAllowlist.from_file(settings.role_allowlist) if settings.role_allowlist else None)
    finetune.register(registry, app)
    if endpoints:
        from llama_operator.handlers import endpoint

        endpoint.register(registry, app)
    tasks: list[asyncio.Task] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        if kubeconfig:
            info = _login_from_kubeconfig(kubeconfig)
        else:
            info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None:
            app.kube.set(info)
        return info

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_):
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        settings.persistence.finalizer = FINALIZER
        settings.peering.priority = peering_priority(os.environ.get("POD_NAME"))
        if app.settings.events_queue_url:
            consumer = EventConsumer(make_client("sqs", app.settings.region), app.settings.events_queue_url,
                                     app.on_event, wait_seconds=app.settings.events_wait_seconds,
                                     active=peering_active(settings))
            tasks.append(asyncio.create_task(consumer.run(), name="sqs-events"))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_):
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await app.kube.close()

    registry.app = app
    return registry


def peering_priority(pod_name: str | None) -> int:
    """A priority distinct per replica: kopf pauses every peer of equal priority, so two replicas
    left at the default would both stand still. The pod name is unique; its hash orders replicas."""
    if not pod_name:
        return 0
    return int(hashlib.sha256(pod_name.encode()).hexdigest()[:7], 16) + 1


def peering_active(settings: kopf.OperatorSettings) -> Callable[[], bool] | None:
    """Whether kopf peering lets this replica work now, for work kopf does not run itself (the SQS
    consumer): a standby must leave the queue to the active replica. None (always) standalone, or
    if kopf's pause state cannot be found, which keeps consuming as without peering."""
    if settings.peering.standalone:
        return None
    paused = _kopf_operator_paused(settings)
    if paused is None:
        log.warning("kopf's peering pause state was not found (kopf %s); the events queue is consumed "
                    "whether or not this replica is paused", getattr(kopf, "__version__", "?"))
        return None

    def active() -> bool:
        try:
            if paused.is_on():
                return False
            if not settings.peering.mandatory:
                return True
            # kopf starts paused, with one toggle per peering object that starts "on"; but those are
            # made only once kopf has looked at the cluster. Until then the set holds only the
            # missing-CRD toggle, "off", and reads as not paused: that is not yet a leader.
            return any(toggle.name != "peering CRD is missing" for toggle in paused)
        except Exception:  # a kopf whose toggles look different: consume, as without peering
            return True

    return active


def _kopf_operator_paused(settings: kopf.OperatorSettings):
    """kopf's "operator_paused" ToggleSet of the operator running in this event loop (the one
    `settings` belongs to), or None.

    kopf (1.45) keeps its peering pause state in this private object, which it hands to its
    orchestrator and daemon killer but exposes through no setting, handler argument or hook. It is
    found, read-only, as an argument of those coroutines (directly, or held by kopf's task guard);
    a kopf that arranges this differently yields None."""
    try:
        from kopf._cogs.aiokits.aiotoggles import ToggleSet
    except ImportError:
        return None
    for task in asyncio.all_tasks():
        pending = [task.get_coro()]
        for _ in range(8):  # the guard, the coroutine it holds or awaits, and a little deeper
            if not pending:
                break
            coro = pending.pop()
            frame = getattr(coro, "cr_frame", None)
            if frame is None:
                continue
            local = frame.f_locals
            found = local.get("operator_paused")
            if isinstance(found, ToggleSet) and local.get("settings") is settings:
                return found
            pending += [v for v in (local.get("coro"), getattr(coro, "cr_await", None))
                        if asyncio.iscoroutine(v)]
    return None


def _login_from_kubeconfig(path: str):
    import yaml

    config = yaml.safe_load(Path(path).read_text()) or {}
    ctx_name = config.get("current-context")
    try:
        ctx = next(c["context"] for c in config.get("contexts") or [] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in config.get("clusters") or [] if c["name"] == ctx["cluster"])
    except (StopIteration, KeyError, TypeError):
        raise kopf.PermanentError(f"--kubeconfig {path}: no usable current-context (needs current-context, "
                                  "contexts and clusters entries)") from None
    user = next((u["user"] for u in config.get("users", []) if u["name"] == ctx.get("user")), {}) or {}
    return kopf.ConnectionInfo(
        server=cluster["server"], ca_path=cluster.get("certificate-authority"),
        insecure=cluster.get("insecure-skip-tls-verify"), token=user.get("token"),
        certificate_path=user.get("client-certificate"), private_key_path=user.get("client-key"),
        default_namespace=ctx.get("namespace"))


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
