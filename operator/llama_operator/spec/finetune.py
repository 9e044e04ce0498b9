"""LlamaFinetune spec: mirrors crds/llamafinetunes.yaml (same names, defaults, bounds and rules)."""

from __future__ import annotations

import re
from typing import List, Literal, Optional

from pydantic import Field, model_validator
from typing_extensions import Annotated

from .common import FinetuneName, InstanceType, ResourceSpec, S3Uri, SpecModel, environment_type

BF16_LESS_INSTANCES = re.compile(r"^ml[.](p2|p3|p3dn|g3|g3s|g4dn)[.]")
SMP_INSTANCES = re.compile(r"^ml[.](p4d|p4de|p5|p5e|p5en)[.]")
# NVIDIA GPU families (g4dn, g5, g6, g6e, p3, p4d, p5, ...): what bitsandbytes' 4-bit kernels need
GPU_INSTANCES = re.compile(r"^ml[.](g|p)[0-9]+[a-z]*[.]")
# LoRA on every attention and MLP projection of a Llama decoder layer
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*$"

MSG_ZERO_STAGE = ("method.zeroStage applies only to method.type deepspeed: remove zeroStage or set "
                  "method.type to deepspeed")
MSG_SMP_DEGREES = ("method.shardDegree and method.tensorParallelDegree apply only to method.type smp: "
                   "remove them or set method.type to smp")
MSG_SPOT_WAIT = ("resources.spot needs resources.maxWaitSeconds >= resources.maxRuntimeSeconds (time to "
                 "wait for spot capacity plus run time): set maxWaitSeconds")
MSG_WAIT_NO_SPOT = ("resources.maxWaitSeconds applies only to spot training: remove it or set "
                    "resources.spot to true")
MSG_SPOT_CHECKPOINT = ("resources.spot needs resources.checkpointS3Uri so an interrupted job resumes from "
                       "its checkpoints: set checkpointS3Uri")
MSG_BF16 = ("hyperparameters.precision bf16 needs an Ampere or newer GPU: on ml.p3/ml.g4dn instances set "
            "hyperparameters.precision to fp16 (or fp32), or pick an ml.g5/ml.p4d/ml.p5 instance type")
MSG_SMP_INSTANCE = ("method.type smp (SageMaker model parallelism v2) runs only on ml.p4d, ml.p4de and "
                    "ml.p5 instance types: change resources.instanceType or use method.type deepspeed")
MSG_SMP_FP16 = "method.type smp trains in bf16 or fp32 only: set hyperparameters.precision to bf16"
MSG_QLORA_GPU = ("method.peft.type qlora loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU: "
                 "pick an ml.g* or ml.p* resources.instanceType, or set method.peft.type to lora")
MSG_QLORA_SHARDING = ("method.peft.type qlora trains with method.type deepspeed and zeroStage 1 or 2 (ZeRO-3 and "
                      "smp shard weights, which 4-bit weights do not allow here): set method.zeroStage to 2")
MSG_PEFT_TP = ("method.peft with method.type smp needs tensorParallelDegree 1 (adapters are not split across "
               "GPUs): remove tensorParallelDegree or set it to 1")
MSG_MERGE_NO_PEFT = ("output.mergeAdapter applies only to a parameter-efficient fine-tune: set method.peft or "
                     "remove output.mergeAdapter (a full fine-tune always writes the whole model)")
MSG_IMMUTABLE = ("spec is immutable once the training job exists; create a new LlamaFinetune "
                 "(only spec.deletionPolicy may change)")


MSG_ONE_BASE = "set exactly one of baseModel.s3Uri or baseModel.fromFinetune"


class BaseModelSource(SpecModel):
    """The model to start from: an S3 prefix, or the model another LlamaFinetune produced."""
    s3_uri: Optional[S3Uri] = None
    from_finetune: Optional[FinetuneName] = None

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.s3_uri is None) == (self.from_finetune is None):
            raise ValueError(MSG_ONE_BASE)
        return self


class Dataset(SpecModel):
    train: S3Uri
    validation: Optional[S3Uri] = None
    format: Literal["auto", "dailydialog", "chat_jsonl", "prepared"] = "auto"


class Peft(SpecModel):
    """LoRA adapters on a frozen base (qlora: the base loaded in 4-bit)."""
    type: Literal["lora", "qlora"]
    r: Annotated[int, Field(ge=1, le=256)] = 16
    alpha: Annotated[int, Field(ge=1, le=4096)] = 32
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    target_modules: Annotated[
        List[Annotated[str, Field(min_length=1, max_length=64, pattern=MODULE_NAME_PATTERN)]],
        Field(min_length=1, max_length=64)] = list(LORA_TARGET_MODULES)


class Method(SpecModel):
    type: Literal["deepspeed", "smp"] = "deepspeed"
    zero_stage: Optional[Annotated[int, Field(ge=1, le=3)]] = None
    shard_degree: Optional[Annotated[int, Field(ge=0, le=4096)]] = None
    tensor_parallel_degree: Optional[Annotated[int, Field(ge=1, le=64)]] = None
    peft: Optional[Peft] = None

    @model_validator(mode="after")
    def _method_knobs(self):
        if self.type != "deepspeed" and self.zero_stage is not None:
            raise ValueError(MSG_ZERO_STAGE)
        if self.type != "smp" and (self.shard_degree is not None or self.tensor_parallel_degree is not None):
            raise ValueError(MSG_SMP_DEGREES)
        if self.peft is not None and self.peft.type == "qlora" and (
                self.type != "deepspeed" or self.zero_stage is None or self.zero_stage > 2):
            raise ValueError(MSG_QLORA_SHARDING)
        if self.peft is not None and (self.tensor_parallel_degree or 1) > 1:
            raise ValueError(MSG_PEFT_TP)
        return self


class Hyperparameters(SpecModel):
    epochs: Annotated[float, Field(gt=0, le=1000)] = 1
    max_steps: Annotated[int, Field(ge=-1)] = -1
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 2e-5
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.03
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: Annotated[float, Field(ge=0)] = 0
    per_device_batch_size: Annotated[int, Field(ge=1, le=1024)] = 4
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 1
    max_sequence_length: Annotated[int, Field(ge=16, le=131072)] = 2048
    packing: bool = True
    gradient_checkpointing: bool = False
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    attn_implementation: Literal["auto", "sdpa", "flex_attention", "eager"] = "auto"
    torch_compile: Literal["auto", "off", "on", "max-autotune-no-cudagraphs"] = "auto"
    add_special_tokens: Annotated[
        List[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^,]+$")]],
        Field(max_length=64)] = []
    new_token_init: Literal["mean", "normal"] = "normal"
    logging_steps: Annotated[int, Field(ge=1)] = 10
    save_steps: Annotated[int, Field(ge=0)] = 0
    seed: Annotated[int, Field(ge=0)] = 42


class TrainingResources(SpecModel):
    instance_type: InstanceType
    instance_count: Annotated[int, Field(ge=1, le=256)] = 1
    volume_size_gb: Annotated[int, Field(ge=1, le=16384, alias="volumeSizeGB")] = 200
    max_runtime_seconds: Annotated[int, Field(ge=60, le=2419200)] = 86400
    spot: bool = False
    max_wait_seconds: Optional[Annotated[int, Field(ge=60, le=2419200)]] = None
    checkpoint_s3_uri: Optional[S3Uri] = Field(default=None, alias="checkpointS3Uri")

    @model_validator(mode="after")
    def _spot(self):
        if self.spot and (self.max_wait_seconds is None or self.max_wait_seconds < self.max_runtime_seconds):
            raise ValueError(MSG_SPOT_WAIT)
        if not self.spot and self.max_wait_seconds is not None:
            raise ValueError(MSG_WAIT_NO_SPOT)
        if self.spot and self.checkpoint_s3_uri is None:
            raise ValueError(MSG_SPOT_CHECKPOINT)
        return self


class Output(SpecModel):
    merge_adapter: bool = False


class LlamaFinetuneSpec(ResourceSpec):
    base_model: BaseModelSource
    dataset: Dataset
    method: Method = Method()
    hyperparameters: Hyperparameters = Hyperparameters()
    resources: TrainingResources
    output_s3_uri: S3Uri = Field(alias="outputS3Uri")
    output: Output = Output()
    environment: environment_type(512, 512) = {}

    @model_validator(mode="after")
    def _cross_field(self):
        precision, instance = self.hyperparameters.precision, self.resources.instance_type
        if precision == "bf16" and BF16_LESS_INSTANCES.match(instance):
            raise ValueError(MSG_BF16)
        if self.method.type == "smp" and not SMP_INSTANCES.match(instance):
            raise ValueError(MSG_SMP_INSTANCE)
        if self.method.type == "smp" and precision == "fp16":
            raise ValueError(MSG_SMP_FP16)
        peft = self.method.peft
        if peft is not None and peft.type == "qlora" and not GPU_INSTANCES.match(instance):
            raise ValueError(MSG_QLORA_GPU)
        if self.output.merge_adapter and peft is None:
            raise ValueError(MSG_MERGE_NO_PEFT)
        return self

    def check_update(self, old: "LlamaFinetuneSpec") -> None:
        """The CRD's transition rule, which holds once status.trainingJobName is set, for API servers
        that do not run CEL."""
        mine = self.to_body()
        theirs = old.to_body()
        mine.pop("deletionPolicy", None)
        theirs.pop("deletionPolicy", None)
        if mine != theirs:
            raise ValueError(MSG_IMMUTABLE)
