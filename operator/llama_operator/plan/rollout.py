"""One LlamaEndpoint spec generation as SageMaker objects: their names, the endpoint code prefix
and every request (pure: the handler uploads `code_files` to `code_s3_uri` before it sends the
requests)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace

from llama_operator.artifacts import endpoint_code, s3uri
from llama_operator.plan import components
from llama_operator.plan import endpoint as plan_ep
from llama_operator.plan import names
from llama_operator.plan.model_source import Resolved


@dataclass
class Plan:
    """Everything one spec generation asks of SageMaker, with the names it gets."""
    endpoint_name: str
    model_name: str
    config_name: str
    spec_hash: str
    model_request: dict
    config_request: dict
    endpoint_request: dict
    update_request: dict
    model_s3_uri: str
    code_s3_uri: str
    code_files: dict[str, str]
    # (source, destination) S3 objects: adapters copied into the code prefix (vllm)
    adapter_copies: list[tuple[str, str]]
    # deployment.mode inferenceComponents: the config is named by its own hash, and the model runs as
    # this component (created or updated by the handlers once the endpoint serves: components.py)
    config_hash: str | None = None
    component: str | None = None
    # ... and each of model.adapters an adapter component: {adapter: source s3 prefix}, packed
    # (artifacts/adapter_pack.py) under packs_base_uri by the handler, which fills adapter_artifacts
    # {adapter: pack s3 URI} before it records them in status
    adapter_sources: dict[str, str] = field(default_factory=dict)
    packs_base_uri: str = ""
    adapter_artifacts: dict[str, str] = field(default_factory=dict)


def code_base_uri(source_s3_uri: str | None, model_s3_uri: str) -> str:
    """Where endpoint code prefixes go: beside the training source packs when the operator has a
    source location, else in the model's own bucket (the endpoint's role reads it anyway)."""
    if source_s3_uri:
        return source_s3_uri.rstrip("/")
    bucket, _ = s3uri.split(model_s3_uri)
    return f"s3://{bucket}/llama-operator"


def combined_hash(spec_hash: str, code_s3_uri: str) -> str:
    """The spec's hash, changed also when the rendered serving code changes (an operator upgrade
    that renders different artifacts rolls endpoints forward as a spec change would)."""
    return hashlib.sha256(f"{spec_hash}|{code_s3_uri}".encode()).hexdigest()[:len(spec_hash) or 16]


def plan(spec_model, *, namespace: str, name: str, uid: str, resolved: Resolved, region: str,
         source_s3_uri: str | None) -> Plan:
    """`resolved`: what `model` resolved to (plan.model_source), adapters included."""
    model_s3_uri = resolved.model_s3_uri
    served, sources = resolved, {}
    settings = plan_ep.serving_settings(spec_model, resolved)
    if components.uses_components(spec_model):
        base, sources = components.split_adapters(resolved)
        served = replace(resolved, adapters=base)
        settings = plan_ep.serving_settings(spec_model, served)
        if sources:  # free slots the adapter components are loaded into at run time
            settings.update(enable_lora=True, max_loras=components.adapter_slots(base),
                            max_lora_rank=resolved.max_adapter_rank)
    files = endpoint_code.render(spec_model.serving.engine, model_s3_uri, settings, served.adapters)
    code_base = code_base_uri(source_s3_uri, model_s3_uri)
    code_uri = endpoint_code.code_prefix(code_base, files)
    h = combined_hash(plan_ep.spec_hash(spec_model, model_s3_uri=model_s3_uri, adapters=served.adapters), code_uri)
    common = dict(namespace=namespace, name=name, uid=uid, spec_hash=h)
    if components.uses_components(spec_model):
        p = _component_plan(spec_model, h, code_uri, files, served, region, namespace, name, uid)
        p.adapter_sources, p.packs_base_uri = sources, code_base
        return p
    return Plan(
        endpoint_name=names.endpoint_name(namespace, name, uid),
        model_name=names.model_name(namespace, name, uid, h),
        config_name=names.endpoint_config_name(namespace, name, uid, h),
        spec_hash=h,
        model_request=plan_ep.create_model_request(spec_model, code_s3_uri=code_uri, region=region, **common),
        config_request=plan_ep.create_endpoint_config_request(spec_model, **common),
        endpoint_request=plan_ep.create_endpoint_request(spec_model, **common),
        update_request=plan_ep.update_endpoint_request(spec_model, **common),
        model_s3_uri=model_s3_uri, code_s3_uri=code_uri, code_files=files,
        adapter_copies=endpoint_code.adapter_copies(spec_model.serving.engine, code_uri, resolved.adapters),
    )


def _component_plan(spec_model, h: str, code_uri: str, files: dict, resolved: Resolved, region: str,
                    namespace: str, name: str, uid: str) -> Plan:
    """The model (named by the spec hash, as in variant mode) becomes the endpoint's inference
    component; the endpoint config, named by its own hash, holds only the instance pool."""
    owner = dict(namespace=namespace, name=name, uid=uid)
    ch = components.config_hash(spec_model)
    config = names.endpoint_config_name(namespace, name, uid, ch)
    endpoint = names.endpoint_name(namespace, name, uid)
    model = names.model_name(namespace, name, uid, h)
    endpoint_request = plan_ep.create_endpoint_request(spec_model, spec_hash=h, **owner)
    endpoint_request["EndpointConfigName"] = config
    return Plan(
        endpoint_name=endpoint, model_name=model, config_name=config, spec_hash=h,
        model_request=plan_ep.create_model_request(spec_model, code_s3_uri=code_uri, region=region, spec_hash=h,
                                                   **owner),
        config_request=components.endpoint_config_request(spec_model, config_name=config, **owner),
        endpoint_request=endpoint_request, update_request={},
        model_s3_uri=resolved.model_s3_uri, code_s3_uri=code_uri, code_files=files,
        adapter_copies=endpoint_code.adapter_copies(spec_model.serving.engine, code_uri, resolved.adapters),
        config_hash=ch, component=names.inference_component_name(namespace, name, uid),
    )


def names_prefix(namespace: str, name: str, uid: str) -> str | None:
    """The part every model/config name of this resource shares, to narrow SageMaker listings
    before owner tags are read."""
    candidates = [f(namespace, name, uid, h) for f in (names.model_name, names.endpoint_config_name)
                  for h in ("0" * 16, "f" * 16)]
    prefix = os.path.commonprefix(candidates)
    return prefix if len(prefix) >= 4 else None
