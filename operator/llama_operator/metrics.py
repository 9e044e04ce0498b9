"""Prometheus metrics of the operator, served on the port the Deployment declares (--metrics-port).

Labels are bounded sets (kind, operation, outcome, phase): never names of user objects, so a
cluster with thousands of fine-tunes does not explode the series count."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

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


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr, registry=REGISTRY)
