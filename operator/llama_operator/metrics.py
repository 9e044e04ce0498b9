"""Prometheus metrics of the operator, served on the port the Deployment declares (--metrics-port).

Labels are bounded sets (kind, operation, outcome, phase): never names of user objects, so a
cluster with thousands of fine-tunes does not explode the series count."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter("llama_operator_reconciles", "Handler runs, by resource kind and outcome",
                     ["kind", "outcome"], registry=REGISTRY)
SAGEMAKER_CALLS = Counter("llama_operator_sagemaker_calls", "SageMaker API calls, by operation and outcome "
                          "(ok, or the AWS error code)", ["operation", "outcome"], registry=REGISTRY)
EVENTS_RECEIVED = Counter("llama_operator_events_received", "SageMaker state-change events taken from SQS, "
                          "by detail-type and whether they matched a resource", ["detail_type", "matched"],
                          registry=REGISTRY)
EVENTS_CONSUMING = Gauge("llama_operator_events_consuming", "1 while this replica receives from the events "
                         "queue; 0 while kopf peering has it paused (standby) or it has no queue",
                         registry=REGISTRY)
RESOURCES_BY_PHASE = Gauge("llama_operator_resources", "Resources the operator knows, by kind and phase",
                           ["kind", "phase"], registry=REGISTRY)

_phases: dict[tuple[str, str, str], str] = {}


def observe_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """Move one resource between phase buckets (None: it is gone)."""
    key = (kind, namespace, name)
    previous = _phases.pop(key, None)
    if previous is not None:
        RESOURCES_BY_PHASE.labels(kind=kind, phase=previous).dec()
    if phase is not None:
        _phases[key] = phase
        RESOURCES_BY_PHASE.labels(kind=kind, phase=phase).inc()


# What the handlers, the gateways and the events consumer call: a metric never breaks reconciliation.

def count(metric: str, **labels) -> None:
    """One more on a counter of this module (RECONCILES, SAGEMAKER_CALLS, EVENTS_RECEIVED)."""
    try:
        globals()[metric].labels(**labels).inc()
    except Exception:  # noqa: BLE001
        log.debug("metric %s not counted", metric, exc_info=True)


def phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """`observe_phase`, never raising."""
    try:
        observe_phase(kind, namespace, name, phase)
    except Exception:  # noqa: BLE001
        log.debug("phase of %s/%s not recorded", namespace, name, exc_info=True)


def consuming(active: bool) -> None:
    try:
        EVENTS_CONSUMING.set(1 if active else 0)
    except Exception:  # noqa: BLE001
        log.debug("events_consuming not set", exc_info=True)


def on_sagemaker_call(operation: str, outcome: str) -> None:
    """The gateways' `on_call` hook."""
    count("SAGEMAKER_CALLS", operation=operation, outcome=outcome)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr, registry=REGISTRY)
