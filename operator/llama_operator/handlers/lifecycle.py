"""The operator's own lifecycle, for kopf: log in to Kubernetes (the kubeconfig given, else
in-cluster, else $KUBECONFIG), start the SQS events consumer, and stop it at cleanup; and how
replicas share the work under kopf peering."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import kopf

from llama_operator.handlers.app import App
from llama_operator.kinds import FINALIZER

log = logging.getLogger(__name__)


def login(app: App, **kwargs):
    if app.kubeconfig:
        info = login_from_kubeconfig(app.kubeconfig)
    else:
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        app.kube.set(info)
    return info


async def startup(app: App, settings: kopf.OperatorSettings, **_):
    from llama_operator.aws.clients import AWS_CALL_THREADS, make_client
    from llama_operator.aws.events import EventConsumer

    # Blocking AWS calls run on the loop's default pool, a throttled one through its retries'
    # backoff. Python's default (cores + 4 threads) let a few throttled creates hold up every
    # other call.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=AWS_CALL_THREADS, thread_name_prefix="aws-call"))
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.persistence.finalizer = FINALIZER
    settings.peering.priority = peering_priority(os.environ.get("POD_NAME"))
    if app.settings.events_queue_url:
        consumer = EventConsumer(make_client("sqs", app.settings.region), app.settings.events_queue_url,
                                 app.on_event, wait_seconds=app.settings.events_wait_seconds,
                                 active=peering_active(settings))
        app.tasks.append(asyncio.create_task(consumer.run(), name="sqs-events"))


async def cleanup(app: App, **_):
    for task in app.tasks:
        task.cancel()
    await asyncio.gather(*app.tasks, return_exceptions=True)
    app.tasks.clear()
    await app.kube.close()


def register(registry: kopf.OperatorRegistry, app: App) -> None:
    bound = functools.partial
    kopf.on.login(registry=registry, id="login")(bound(login, app))
    kopf.on.startup(registry=registry, id="startup")(bound(startup, app))
    kopf.on.cleanup(registry=registry, id="cleanup")(bound(cleanup, app))


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


def login_from_kubeconfig(path: str):
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
