"""The SageMaker side of a LlamaEndpoint, blocking (the handlers run it in a thread): send one
spec generation's requests (create, adopt, or roll blue/green), delete what a rollout superseded,
and delete everything the resource owns."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import kopf

from llama_operator.artifacts import adapter_pack, endpoint_code
from llama_operator.artifacts.upload import copy_missing
from llama_operator.aws.endpoints import EndpointGateway, Owned, SageMakerError, TerminalError
from llama_operator.handlers import endpoint_scaling
from llama_operator.handlers.kube import backoff
from llama_operator.plan import names, rollout
from llama_operator.plan.model_source import Resolved
from llama_operator.status.endpoint_changes import desired_names

log = logging.getLogger(__name__)

ADAPTER_NOT_FOUND = "AdapterNotFound"


def send_requests(app, spec_model, resolved: Resolved, *, namespace: str, name: str, uid: str,
                  status: Mapping[str, Any], retry: int) -> tuple[rollout.Plan, dict, str, bool]:
    """Model, config, endpoint (create, adopt, or blue/green): (plan, DescribeEndpoint after
    the requests, what was done, whether the endpoint's autoscaling is gone: deregistered before
    an update, or never made for a new endpoint). Raises kopf.TemporaryError to come back later."""
    gw: EndpointGateway = app.endpoint_gateway
    settings = app.settings
    plan = rollout.plan(spec_model, namespace=namespace, name=name, uid=uid, resolved=resolved,
                        region=settings.region, source_s3_uri=settings.source_s3_uri)
    endpoint_code.upload(app.s3, plan.code_s3_uri, plan.code_files)
    try:
        copy_missing(app.s3, plan.adapter_copies)
        plan.adapter_artifacts = {n: adapter_pack.ensure_pack(app.s3, uri, plan.packs_base_uri)
                                  for n, uri in sorted(plan.adapter_sources.items())}
    except FileNotFoundError as exc:
        raise TerminalError(ADAPTER_NOT_FOUND, f"{exc.args[0]} does not exist: a LoRA adapter directory holds "
                            f"{' and '.join(endpoint_code.ADAPTER_FILES)} (as PEFT saves it); fix model.adapters",
                            "CopyObject") from None
    gw.ensure_model(plan.model_request, uid)
    gw.ensure_endpoint_config(plan.config_request, uid)
    current = gw.describe_endpoint(plan.endpoint_name)
    scaling_gone = False
    if current is None:
        current = gw.ensure_endpoint(plan.endpoint_request, uid)
        scaling_gone = True
        action = f"created endpoint {plan.endpoint_name} with configuration {plan.config_name}"
    elif current.get("EndpointConfigName") == plan.config_name:
        action = f"endpoint {plan.endpoint_name} uses configuration {plan.config_name}"
    elif (current["EndpointStatus"] == "InService" and status.get("phase") == "Degraded"
          and status.get("specHash") == plan.spec_hash):
        # Resumed after a restart: this very update failed and rolled back; trying it again
        # takes a spec change, not a restart.
        action = f"update to {plan.config_name} failed before; {current['EndpointConfigName']} serves"
    elif plan.component is not None:  # (the pool cannot change: the handler refuses such a spec)
        action = f"endpoint {plan.endpoint_name} keeps configuration {current.get('EndpointConfigName')}"
    elif current["EndpointStatus"] == "InService":
        # AWS refuses an update that changes an autoscaled variant's instance type; the policy is
        # applied again once the new configuration serves.
        endpoint_scaling.remove(app, status, plan.endpoint_name)
        scaling_gone = True
        gw.update_endpoint(plan.update_request)
        current = gw.describe_endpoint(plan.endpoint_name) or current
        action = f"updating endpoint {plan.endpoint_name} to configuration {plan.config_name} (blue/green)"
    elif current["EndpointStatus"] == "Failed":
        # A Failed endpoint cannot be updated: SageMaker wants it deleted and created again.
        gw.delete_endpoint(plan.endpoint_name)
        raise kopf.TemporaryError(f"endpoint {plan.endpoint_name} failed; re-creating it with "
                                  f"{plan.config_name}", delay=settings.endpoint_retry_seconds)
    else:
        # SageMaker refuses a second update while one runs (real ones take minutes): ask
        # again less and less often, at most once a minute.
        raise kopf.TemporaryError(f"endpoint {plan.endpoint_name} is {current['EndpointStatus']}; "
                                  f"the change to {plan.config_name} waits for it",
                                  delay=min(backoff(settings.endpoint_retry_seconds, retry), 60.0))
    return plan, current, action, scaling_gone


def collect(gw: EndpointGateway, namespace: str, name: str, uid: str, *, model: str, config: str,
            component: bool = False) -> None:
    """Delete this resource's superseded models and configs (the old fleet's), keeping the
    serving (= desired) pair. Objects newer than the serving config (with a `component`, whose
    config stays, the serving model) are spared for a while: a spec change may be creating them
    right now, before status records its hash."""
    try:
        serving_since = gw.model_created(model) if component else gw.config_created(config)
        done = gw.delete_owned(uid, keep=(model, config), name_contains=rollout.names_prefix(namespace, name, uid),
                               spare_after=serving_since)
        if done.models or done.endpoint_configs:
            log.info("%s/%s: deleted superseded %s", namespace, name, done.endpoint_configs + done.models)
    except SageMakerError as exc:  # the next settle tries again
        log.warning("%s/%s: could not delete superseded objects: %s", namespace, name, exc)


def collect_if_serving(gw: EndpointGateway, describe: Mapping[str, Any] | None, *, namespace: str, name: str,
                       uid: str, status: Mapping[str, Any]) -> None:
    """Once an observation shows the configuration status.specHash asks for in service, delete
    the superseded models and configurations."""
    config, model = desired_names(namespace, name, uid, status or {})
    if (status or {}).get("configHash"):
        return  # the model serves through a component: collected once the component serves it
    if config and describe and describe.get("EndpointStatus") == "InService" \
            and describe.get("EndpointConfigName") == config:
        collect(gw, namespace, name, uid, model=model, config=config)


def delete_components(gw: EndpointGateway, namespace: str, name: str, uid: str, status: Mapping[str, Any]
                      ) -> list[str]:
    """DeleteInferenceComponent for every component on the resource's endpoint, adapter components
    before the base they are loaded on; those still there."""
    endpoint = status.get("endpointName") or names.endpoint_name(namespace, name, uid)
    if not status.get("configHash") and not status.get("inferenceComponent"):
        return []
    on = gw.component_states(endpoint)
    base = names.inference_component_name(namespace, name, uid)
    adapters = [c for c in on if c != base]
    for component in (adapters or list(on)):
        if on[component] != "Deleting":
            gw.delete_component(component)
    return [c for c in on if gw.describe_component(c) is not None]


def delete_endpoints(gw: EndpointGateway, namespace: str, name: str, uid: str, status: Mapping[str, Any]
                     ) -> list[str]:
    """DeleteEndpoint for every endpoint the resource owns (by tag, and by the name status or the
    planner gives it); the names asked to go."""
    owned = gw.owned(uid)
    endpoint = status.get("endpointName") or names.endpoint_name(namespace, name, uid)
    endpoints = sorted(set(owned.endpoints) | ({endpoint} if gw.describe_endpoint(endpoint) else set()))
    for ep in endpoints:
        gw.delete_endpoint(ep)
    return endpoints


def endpoints_gone(gw: EndpointGateway, endpoints: list[str]) -> bool:
    return all(gw.wait_endpoint_gone(ep, timeout=15, interval=0.5) for ep in endpoints)


def delete_the_rest(gw: EndpointGateway, uid: str) -> Owned:
    """Every config and model the resource owns; what SageMaker still lists after."""
    gw.delete_owned(uid, endpoints=True)
    return gw.owned(uid)
