"""LlamaEndpoint spec -> CreateModel / CreateEndpointConfig / CreateEndpoint / UpdateEndpoint.

The model and endpoint config are named by a hash of everything that shapes them, so a changed
spec yields new objects and an UpdateEndpoint (blue/green) to them, while a re-applied identical
spec finds the existing ones."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from llama_operator.plan.images import lmi_image_uri
from llama_operator.kinds import ENDPOINT_KIND
from llama_operator.paths import serving_default
from llama_operator.spec import LlamaEndpointSpec
from llama_operator.spec.endpoint import DEFAULT_CANARY_PERCENT

from .names import endpoint_config_name, endpoint_name, model_name
from .tags import owner_tags

KIND = ENDPOINT_KIND
VARIANT = "AllTraffic"
# Deployment, tags and deletion policy change how the endpoint is managed, not what it serves
# (nor does resources.instanceCount: see spec_hash).
_SERVING_FIELDS = ("model", "serving", "resources", "roleArn", "image", "environment")


def spec_hash(spec: LlamaEndpointSpec, *, model_s3_uri: str | None = None,
              adapters: dict[str, str] | None = None) -> str:
    """16 hex characters over what the serving objects are built from. Pass the resolved
    `model_s3_uri` (and adapters) for `fromFinetune`, so a re-trained model of the same name rolls out."""
    body = spec.to_body()
    doc = {k: body[k] for k in _SERVING_FIELDS if k in body}
    # The instance count is not what is served: it changes in place (UpdateEndpointWeightsAndCapacities,
    # autoscaling, or a component's copies), never by a new fleet.
    doc["resources"] = {k: v for k, v in doc["resources"].items() if k != "instanceCount"}
    if body.get("deployment", {}).get("mode") == "inferenceComponents":
        # model.adapters are adapter components there, added and removed beside the model
        doc["model"] = {k: v for k, v in doc["model"].items() if k != "adapters"}
    if model_s3_uri is not None:
        doc["resolvedModel"] = model_s3_uri
    if adapters:
        doc["resolvedAdapters"] = dict(adapters)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def serving_settings(spec: LlamaEndpointSpec, resolved=None) -> dict[str, Any]:
    """The engine's knobs with defaults applied (workloads/serve/defaults.json), for the serving
    workload's renderer. An absent tensorParallelDegree is "max" (LMI splits each model copy over
    all GPUs of the instance) with vllm, and 1 with the batching engine, which runs on one GPU."""
    s = spec.serving

    def default(spec_field: str) -> Any:
        return serving_default(spec_field, s.engine)

    settings: dict[str, Any] = {"dtype": s.dtype, "max_new_tokens": s.max_new_tokens,
                                "tensor_parallel_degree": s.tensor_parallel_degree or default("tensorParallelDegree")}
    if s.engine == "vllm":
        settings["max_rolling_batch_size"] = s.max_rolling_batch_size or default("maxRollingBatchSize")
        if s.max_model_length is not None:
            settings["max_model_len"] = s.max_model_length
    else:
        settings["max_batch_size"] = s.max_batch_size or default("maxBatchSize")
        settings["max_wait_ms"] = s.max_wait_ms if s.max_wait_ms is not None else default("maxWaitMs")
    if resolved is not None and resolved.adapters:  # plan.model_source.Resolved
        settings["max_lora_rank"] = resolved.max_adapter_rank
        if resolved.default_adapter:
            settings["default_adapter"] = resolved.default_adapter
    return settings


def create_model_request(spec: LlamaEndpointSpec, *, namespace: str, name: str, uid: str,
                         spec_hash: str, code_s3_uri: str, region: str) -> dict:
    """The model is the endpoint's small code prefix (serving.properties and handler), served
    uncompressed; the weights are pulled by the container from the model's own S3 prefix."""
    container: dict[str, Any] = {
        "Image": spec.image or lmi_image_uri(region),
        "ModelDataSource": {"S3DataSource": {"S3Uri": code_s3_uri if code_s3_uri.endswith("/")
                                             else code_s3_uri + "/",
                                             "S3DataType": "S3Prefix", "CompressionType": "None"}},
    }
    if spec.environment:
        container["Environment"] = dict(spec.environment)
    return {
        "ModelName": model_name(namespace, name, uid, spec_hash),
        "ExecutionRoleArn": spec.role_arn,
        "PrimaryContainer": container,
        "Tags": owner_tags(KIND, namespace, name, uid, spec.tags),
    }


def create_endpoint_config_request(spec: LlamaEndpointSpec, *, namespace: str, name: str, uid: str,
                                   spec_hash: str) -> dict:
    res = spec.resources
    return {
        "EndpointConfigName": endpoint_config_name(namespace, name, uid, spec_hash),
        "ProductionVariants": [{
            "VariantName": VARIANT,
            "ModelName": model_name(namespace, name, uid, spec_hash),
            "InstanceType": res.instance_type,
            "InitialInstanceCount": res.instance_count,
            "InitialVariantWeight": 1.0,
            "ContainerStartupHealthCheckTimeoutInSeconds": res.container_startup_health_check_timeout_seconds,
            "ModelDataDownloadTimeoutInSeconds": res.model_data_download_timeout_seconds,
        }],
        "Tags": owner_tags(KIND, namespace, name, uid, spec.tags),
    }


def create_endpoint_request(spec: LlamaEndpointSpec, *, namespace: str, name: str, uid: str,
                            spec_hash: str) -> dict:
    return {
        "EndpointName": endpoint_name(namespace, name, uid),
        "EndpointConfigName": endpoint_config_name(namespace, name, uid, spec_hash),
        "Tags": owner_tags(KIND, namespace, name, uid, spec.tags),
    }


def deployment_config(spec: LlamaEndpointSpec) -> dict:
    d = spec.deployment
    routing: dict[str, Any] = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": d.wait_interval_seconds}
    if d.strategy == "Canary":
        routing["Type"] = "CANARY"
        routing["CanarySize"] = {"Type": "CAPACITY_PERCENT",
                                 "Value": d.canary_percent or DEFAULT_CANARY_PERCENT}
    config: dict[str, Any] = {"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": routing,
        "TerminationWaitInSeconds": d.termination_wait_seconds,
    }}
    if d.auto_rollback and d.rollback_alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in d.rollback_alarms]}
    return config


def update_endpoint_request(spec: LlamaEndpointSpec, *, namespace: str, name: str, uid: str,
                            spec_hash: str) -> dict:
    return {
        "EndpointName": endpoint_name(namespace, name, uid),
        "EndpointConfigName": endpoint_config_name(namespace, name, uid, spec_hash),
        # Autoscaled: keep the count the policy reached through the blue/green update.
        "RetainAllVariantProperties": spec.scaling is not None,
        "DeploymentConfig": deployment_config(spec),
    }
