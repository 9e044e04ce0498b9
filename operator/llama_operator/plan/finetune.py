"""LlamaFinetune spec -> CreateTrainingJob request, against the training workload's contract
(workloads/train_entry.py run under torchrun by the sagemaker-training toolkit)."""

from __future__ import annotations

from typing import Any

from llama_operator.plan.images import training_image_uri
from llama_operator.kinds import FINETUNE_KIND
from llama_operator.spec import LlamaFinetuneSpec
from llama_operator.status.finetune import output_s3_uri

from .names import training_job_name
from .tags import owner_tags

ENTRY_POINT = "train_entry.py"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
# the per-step line's " loss=", not the summary's "train_loss=" (an average over the run)
LOSS_REGEX = r"step=\S+ (?:.* )?loss=([0-9.eE+-]+)"
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": LOSS_REGEX},
    {"Name": "train:learning_rate", "Regex": r" lr=([0-9.eE+-]+)"},
    {"Name": "train:tokens_per_s", "Regex": r"tokens_per_s=([0-9.eE+-]+)"},
    {"Name": "train:mfu", "Regex": r"mfu=([0-9.eE+-]+)"},
]
DEFAULT_ZERO_STAGE = 3
DEFAULT_SMP_SHARD_DEGREE = 0
DEFAULT_SMP_TP_DEGREE = 1


def _prefix(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


def model_s3_uri(spec: LlamaFinetuneSpec, job_name: str) -> str:
    """Where the workload pushes the fine-tuned model: `<outputS3Uri>/<job name>/model/`."""
    return output_s3_uri(spec.output_s3_uri, job_name, "model")


def source_prefix(spec: LlamaFinetuneSpec, operator_prefix: str | None) -> str:
    """Where the job's source tarball goes: the operator's own prefix, else (the embedded default
    only, see settings.py) the job's output prefix."""
    return operator_prefix or spec.output_s3_uri


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def hyperparameters(spec: LlamaFinetuneSpec, *, job_name: str, source_s3_uri: str,
                    region: str, base_model_s3_uri: str | None = None) -> dict[str, str]:
    """`base_model_s3_uri`: what baseModel.fromFinetune resolved to (plan.model_source)."""
    hp, method = spec.hyperparameters, spec.method
    base = base_model_s3_uri or spec.base_model.s3_uri
    if not base:
        raise ValueError("baseModel.fromFinetune must be resolved to a model prefix before planning the job")
    values: dict[str, Any] = {
        "method": method.type,
        "base_model": _prefix(base),
        "output_s3_uri": model_s3_uri(spec, job_name),
        "epochs": hp.epochs,
        "max_steps": hp.max_steps,
        "learning_rate": hp.learning_rate,
        "warmup_ratio": hp.warmup_ratio,
        "lr_scheduler": hp.lr_scheduler,
        "weight_decay": hp.weight_decay,
        "per_device_batch_size": hp.per_device_batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "max_seq_length": hp.max_sequence_length,
        "packing": hp.packing,
        "gradient_checkpointing": hp.gradient_checkpointing,
        "precision": hp.precision,
        "attn_implementation": hp.attn_implementation,
        "torch_compile": hp.torch_compile,
        "add_special_tokens": ",".join(hp.add_special_tokens),
        "new_token_init": hp.new_token_init,
        "data_format": spec.dataset.format,
        "logging_steps": hp.logging_steps,
        "save_steps": hp.save_steps,
        "seed": hp.seed,
        "sagemaker_program": ENTRY_POINT,
        "sagemaker_submit_directory": source_s3_uri,
        "sagemaker_torch_distributed_enabled": True,
        "sagemaker_region": region,
    }
    if method.type == "deepspeed":
        values["zero_stage"] = method.zero_stage if method.zero_stage is not None else DEFAULT_ZERO_STAGE
    else:
        values["smp_shard_degree"] = (method.shard_degree if method.shard_degree is not None
                                      else DEFAULT_SMP_SHARD_DEGREE)
        values["smp_tp_degree"] = (method.tensor_parallel_degree if method.tensor_parallel_degree is not None
                                   else DEFAULT_SMP_TP_DEGREE)
    values.update(peft_hyperparameters(spec, job_name))
    return {k: _text(v) for k, v in values.items()}


def peft_hyperparameters(spec: LlamaFinetuneSpec, job_name: str) -> dict[str, Any]:
    """The workload's LoRA switches; none for a full fine-tune, whose request stays as it was."""
    peft = spec.method.peft
    if peft is None:
        return {}
    return {"peft": peft.type, "lora_r": peft.r, "lora_alpha": peft.alpha, "lora_dropout": peft.dropout,
            "lora_target_modules": ",".join(peft.target_modules), "merge_adapter": spec.output.merge_adapter,
            "adapter_s3_uri": output_s3_uri(spec.output_s3_uri, job_name, "adapter")}


def _channel(name: str, s3_uri: str) -> dict:
    return {"ChannelName": name,
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": s3_uri,
                                            "S3DataDistributionType": "FullyReplicated"}}}


def create_training_job_request(spec: LlamaFinetuneSpec, *, namespace: str, name: str, uid: str,
                                source_s3_uri: str, region: str, base_model_s3_uri: str | None = None) -> dict:
    """kwargs for boto3's `create_training_job`; `base_model_s3_uri` for a baseModel.fromFinetune."""
    job = training_job_name(namespace, name, uid)
    res = spec.resources
    channels = [_channel("train", spec.dataset.train)]
    if spec.dataset.validation:
        channels.append(_channel("validation", spec.dataset.validation))
    stopping = {"MaxRuntimeInSeconds": res.max_runtime_seconds}
    request: dict[str, Any] = {
        "TrainingJobName": job,
        "AlgorithmSpecification": {
            "TrainingImage": spec.image or training_image_uri(region, spec.method.type),
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(m) for m in METRIC_DEFINITIONS],
            "EnableSageMakerMetricsTimeSeries": True,
        },
        "RoleArn": spec.role_arn,
        "HyperParameters": hyperparameters(spec, job_name=job, source_s3_uri=source_s3_uri, region=region,
                                           base_model_s3_uri=base_model_s3_uri),
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": spec.output_s3_uri},
        "ResourceConfig": {"InstanceType": res.instance_type, "InstanceCount": res.instance_count,
                           "VolumeSizeInGB": res.volume_size_gb},
        "StoppingCondition": stopping,
        "Tags": owner_tags(FINETUNE_KIND, namespace, name, uid, spec.tags),
    }
    if spec.environment:
        request["Environment"] = dict(spec.environment)
    if res.spot:
        request["EnableManagedSpotTraining"] = True
        stopping["MaxWaitTimeInSeconds"] = res.max_wait_seconds
    if res.checkpoint_s3_uri:
        request["CheckpointConfig"] = {"S3Uri": res.checkpoint_s3_uri, "LocalPath": CHECKPOINT_LOCAL_PATH}
    return request
