"""LlamaEndpoint spec: mirrors crds/llamaendpoints.yaml (same names, defaults, bounds and rules)."""

from __future__ import annotations

import re
from typing import List, Literal, Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator
from typing_extensions import Annotated

from llama_operator.instances import copy_shape

from .common import FinetuneName, InstanceType, ResourceSpec, S3Uri, SpecModel, environment_type

BF16_LESS_INSTANCES = re.compile(r"^ml[.](p2|p3|g3|g3s|g4dn)[.]")

MSG_BF16 = ("serving.dtype bf16 needs an Ampere or newer GPU: on ml.p3/ml.g4dn instances set serving.dtype to "
            "fp16, or pick an ml.g5/ml.g6/ml.p4d instance type")
MSG_ONE_MODEL = "set exactly one of model.s3Uri or model.fromFinetune"
MSG_ONE_ADAPTER_SOURCE = "set exactly one of s3Uri or fromFinetune for each of model.adapters"
MSG_ADAPTER_NAMES = "model.adapters: each adapter needs its own name (requests pick one by it)"
ADAPTER_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MAX_ADAPTERS = 16
MSG_VLLM_ONLY = ("serving.maxRollingBatchSize and serving.maxModelLength apply only to serving.engine vllm: "
                 "remove them or set engine to vllm")
MSG_TP_VLLM = ("serving.tensorParallelDegree above 1 needs serving.engine vllm (the batching engine runs one "
               "model copy on one GPU): remove it or set engine to vllm")
# LMI's option.tensor_parallel_degree=max (all GPUs of the instance) is what an absent
# serving.tensorParallelDegree means with engine vllm; the field itself is a number of GPUs (the CRD
# types it integer), so "max" written into the spec gets a message that says what to do instead.
TP_ALL_GPUS = "max"
MSG_TP_MAX_VLLM = ("serving.tensorParallelDegree max: leave tensorParallelDegree out to split each model copy over "
                   "all GPUs of the instance (LMI's tensor_parallel_degree=max), or give a number of GPUs from 1 to 64")
MSG_TP_MAX_BATCHING = ("serving.tensorParallelDegree max: the batching engine runs one model copy on one GPU; set "
                       "tensorParallelDegree to 1 or leave it out, or set serving.engine to vllm and leave "
                       "tensorParallelDegree out to use all GPUs of the instance")
MSG_BATCHING_ONLY = ("serving.maxBatchSize and serving.maxWaitMs apply only to serving.engine batching: "
                     "remove them or set engine to batching")
MSG_CANARY = ("deployment.canaryPercent applies only to deployment.strategy Canary: remove it or set "
              "strategy to Canary")
MSG_ALARMS = ("deployment.rollbackAlarms are watched only when deployment.autoRollback is true: set "
              "autoRollback to true or remove the alarms")

MSG_SCALING_BOUNDS = "scaling.minInstances must not exceed scaling.maxInstances"
MSG_ONE_TARGET = ("set exactly one of scaling.target.invocationsPerInstance (deployment.mode variant) or "
                  "scaling.target.concurrentRequestsPerCopy (deployment.mode inferenceComponents)")
MSG_TARGET_PER_COPY = ("scaling.target.concurrentRequestsPerCopy counts model copies, which only "
                       "deployment.mode inferenceComponents has: set the mode, or use invocationsPerInstance")
MSG_TARGET_PER_INSTANCE = ("scaling.target.invocationsPerInstance applies to deployment.mode variant: with "
                           "inferenceComponents use concurrentRequestsPerCopy")
MSG_SCALE_TO_ZERO = ("scaling.minInstances 0 (scale to zero) needs deployment.mode inferenceComponents: SageMaker "
                     "scales an endpoint to zero only when it hosts inference components")
MSG_CANARY_COMPONENTS = ("deployment.strategy Canary is a blue/green traffic shift of deployment.mode variant; "
                         "inference components roll one copy at a time: remove strategy and canaryPercent")
MSG_SCALING_START = ("resources.instanceCount is the count the endpoint starts with and must lie within "
                     "scaling.minInstances..scaling.maxInstances: change one of them")

# What the serving knobs default to when the spec leaves them out is workloads/serve/defaults.json
# (llama_operator.paths.serving_default), which the serving workload reads too.
DEFAULT_CANARY_PERCENT = 10


class AdapterSource(SpecModel):
    """One LoRA adapter served on the endpoint's base model, picked per request by its name."""
    name: Annotated[str, Field(min_length=1, max_length=63, pattern=ADAPTER_NAME)]
    s3_uri: Optional[S3Uri] = None
    from_finetune: Optional[FinetuneName] = None

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.s3_uri is None) == (self.from_finetune is None):
            raise ValueError(MSG_ONE_ADAPTER_SOURCE)
        return self


class ModelSource(SpecModel):
    s3_uri: Optional[S3Uri] = None
    from_finetune: Optional[FinetuneName] = None
    adapters: Optional[Annotated[List[AdapterSource], Field(max_length=MAX_ADAPTERS)]] = None
    max_adapter_rank: Optional[Annotated[int, Field(ge=1, le=256)]] = None

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.s3_uri is None) == (self.from_finetune is None):
            raise ValueError(MSG_ONE_MODEL)
        names = [a.name for a in self.adapters or []]
        if len(set(names)) != len(names):
            raise ValueError(MSG_ADAPTER_NAMES)
        return self


class Serving(SpecModel):
    engine: Literal["vllm", "batching"] = "vllm"
    tensor_parallel_degree: Optional[Annotated[int, Field(ge=1, le=64)]] = None
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 256
    max_rolling_batch_size: Optional[Annotated[int, Field(ge=1, le=1024)]] = None
    max_model_length: Optional[Annotated[int, Field(ge=16, le=1048576)]] = None
    max_batch_size: Optional[Annotated[int, Field(ge=1, le=256)]] = None
    max_wait_ms: Optional[Annotated[int, Field(ge=0, le=10000)]] = None

    @field_validator("tensor_parallel_degree", mode="before")
    @classmethod
    def _tp_is_a_number(cls, value, info: ValidationInfo):
        if isinstance(value, str) and value.strip().lower() == TP_ALL_GPUS:
            raise ValueError(MSG_TP_MAX_BATCHING if info.data.get("engine") == "batching" else MSG_TP_MAX_VLLM)
        return value

    @model_validator(mode="after")
    def _engine_knobs(self):
        if self.engine != "vllm" and (self.max_rolling_batch_size is not None or self.max_model_length is not None):
            raise ValueError(MSG_VLLM_ONLY)
        if self.engine != "vllm" and self.tensor_parallel_degree not in (None, 1):
            raise ValueError(MSG_TP_VLLM)
        if self.engine != "batching" and (self.max_batch_size is not None or self.max_wait_ms is not None):
            raise ValueError(MSG_BATCHING_ONLY)
        return self


class EndpointResources(SpecModel):
    instance_type: InstanceType
    instance_count: Annotated[int, Field(ge=1, le=100)] = 1
    container_startup_health_check_timeout_seconds: Annotated[int, Field(ge=60, le=3600)] = 1800
    model_data_download_timeout_seconds: Annotated[int, Field(ge=60, le=3600)] = 1800


class Deployment(SpecModel):
    mode: Literal["variant", "inferenceComponents"] = "variant"
    strategy: Literal["AllAtOnce", "Canary"] = "AllAtOnce"
    canary_percent: Optional[Annotated[int, Field(ge=1, le=99)]] = None
    wait_interval_seconds: Annotated[int, Field(ge=0, le=3600)] = 300
    termination_wait_seconds: Annotated[int, Field(ge=0, le=3600)] = 0
    auto_rollback: bool = True
    rollback_alarms: Annotated[List[Annotated[str, Field(min_length=1, max_length=255)]],
                               Field(max_length=10)] = []

    @model_validator(mode="after")
    def _rules(self):
        if self.strategy != "Canary" and self.canary_percent is not None:
            raise ValueError(MSG_CANARY)
        if not self.auto_rollback and self.rollback_alarms:
            raise ValueError(MSG_ALARMS)
        return self


class ScalingTarget(SpecModel):
    """What target tracking holds steady: invocations a minute per instance (SageMaker's
    SageMakerVariantInvocationsPerInstance metric), or, for inference components, requests in
    flight per model copy (SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution)."""
    invocations_per_instance: Optional[Annotated[float, Field(gt=0, le=1000000)]] = None
    concurrent_requests_per_copy: Optional[Annotated[float, Field(gt=0, le=10000)]] = None

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.invocations_per_instance is None) == (self.concurrent_requests_per_copy is None):
            raise ValueError(MSG_ONE_TARGET)
        return self


class Scaling(SpecModel):
    """Application Auto Scaling of the endpoint's instance count (target tracking)."""
    min_instances: Annotated[int, Field(ge=0, le=100)] = 1
    max_instances: Annotated[int, Field(ge=1, le=100)]
    target: ScalingTarget
    scale_in_cooldown_seconds: Annotated[int, Field(ge=0, le=86400)] = 300
    scale_out_cooldown_seconds: Annotated[int, Field(ge=0, le=86400)] = 60

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_instances > self.max_instances:
            raise ValueError(MSG_SCALING_BOUNDS)
        return self


class LlamaEndpointSpec(ResourceSpec):
    model: ModelSource
    serving: Serving = Serving()
    resources: EndpointResources
    deployment: Deployment = Deployment()
    scaling: Optional[Scaling] = None
    environment: environment_type(1024, 1024) = {}

    @model_validator(mode="after")
    def _dtype_fits_the_gpu(self):
        if self.serving.dtype == "bf16" and BF16_LESS_INSTANCES.match(self.resources.instance_type):
            raise ValueError(MSG_BF16)
        sc = self.scaling
        if sc is not None and not sc.min_instances <= self.resources.instance_count <= sc.max_instances:
            raise ValueError(MSG_SCALING_START)
        components = self.deployment.mode == "inferenceComponents"
        if components and self.deployment.strategy == "Canary":
            raise ValueError(MSG_CANARY_COMPONENTS)
        if sc is not None:
            if sc.target.concurrent_requests_per_copy is not None and not components:
                raise ValueError(MSG_TARGET_PER_COPY)
            if sc.target.invocations_per_instance is not None and components:
                raise ValueError(MSG_TARGET_PER_INSTANCE)
            if sc.min_instances == 0 and not components:
                raise ValueError(MSG_SCALE_TO_ZERO)
        if components and isinstance(shape := self.copy_shape(), str):
            raise ValueError(shape)
        return self

    def copy_shape(self):
        """instances.CopyShape of one model copy (mode inferenceComponents), or why there is none.
        The batching engine runs a copy on one GPU; vllm on tensorParallelDegree GPUs (default all)."""
        tp = self.serving.tensor_parallel_degree or (1 if self.serving.engine == "batching" else None)
        return copy_shape(self.resources.instance_type, tp)
