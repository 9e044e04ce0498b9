"""The planner as the handlers see it: `llama_operator.spec` and `llama_operator.plan` when they
are installed; until then, a minimal stand-in with the same signatures so the operator runtime can
be exercised on its own."""

from __future__ import annotations

import hashlib
import json
import re

try:  # the real planner
    from llama_operator.plan.finetune import create_training_job_request  # noqa: F401
    from llama_operator.plan.names import training_job_name  # noqa: F401
    from llama_operator.spec import LlamaFinetuneSpec

    def validate_spec(spec: dict):
        return LlamaFinetuneSpec.model_validate(spec)

    STANDIN = False
except ImportError:  # pragma: no cover - only before the planner lands
    STANDIN = True

    def validate_spec(spec: dict):
        for key in ("roleArn", "outputS3Uri", "baseModel", "dataset", "resources"):
            if not spec.get(key):
                raise ValueError(f"spec.{key} is required")
        return spec

    def training_job_name(namespace: str, name: str, uid: str) -> str:
        digest = hashlib.sha256(uid.encode()).hexdigest()[:8]
        prefix = re.sub(r"[^a-zA-Z0-9-]", "-", f"{namespace}-{name}")[: 63 - 9].strip("-")
        return f"{prefix}-{digest}"

    def create_training_job_request(spec, *, namespace, name, uid, source_s3_uri, region) -> dict:
        res = spec.get("resources", {})
        job = training_job_name(namespace, name, uid)
        hps = {"sagemaker_program": "train_entry.py", "sagemaker_submit_directory": source_s3_uri,
               **{k: v for k, v in (spec.get("hyperparameters") or {}).items()}}
        tags = {"llamaops.dev/kind": "LlamaFinetune", "llamaops.dev/namespace": namespace,
                "llamaops.dev/name": name, "llamaops.dev/uid": uid, **(spec.get("tags") or {})}
        req = {
            "TrainingJobName": job,
            "AlgorithmSpecification": {"TrainingImage": spec.get("image") or
                                       f"763104351884.dkr.ecr.{region}.amazonaws.com/pytorch-training:2.5-cpu-py311",
                                       "TrainingInputMode": "File",
                                       "MetricDefinitions": [{"Name": "train:loss", "Regex": r"loss=([0-9.]+)"}]},
            "RoleArn": spec["roleArn"],
            "HyperParameters": {k: json.dumps(v) for k, v in hps.items()},
            "OutputDataConfig": {"S3OutputPath": spec["outputS3Uri"]},
            "InputDataConfig": [_channel("model", spec["baseModel"]["s3Uri"]), _channel("train", spec["dataset"]["train"])],
            "ResourceConfig": {"InstanceType": res.get("instanceType", "ml.m5.xlarge"),
                               "InstanceCount": int(res.get("instanceCount", 1)),
                               "VolumeSizeInGB": int(res.get("volumeSizeGB", 30))},
            "StoppingCondition": {"MaxRuntimeInSeconds": int(res.get("maxRuntimeSeconds", 86400))},
            "Environment": dict(spec.get("environment") or {}),
            "Tags": [{"Key": k, "Value": str(v)} for k, v in tags.items()],
        }
        return req

    def _channel(name: str, uri: str) -> dict:
        return {"ChannelName": name, "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}}


def describe_invalid(exc: Exception) -> str:
    """One line per problem, each naming the field as written in the manifest."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"spec.{field}: {err.get('msg', 'invalid')}" if field else err.get("msg", "invalid"))
    return "; ".join(parts) + " (fix the manifest and apply it again)"


def deletion_policy(spec: dict) -> str:
    return str(spec.get("deletionPolicy") or "Delete")


def output_path(request: dict) -> str:
    return request["OutputDataConfig"]["S3OutputPath"]
