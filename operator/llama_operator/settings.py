"""Operator settings: flags of `llama-operator run`, each with an environment variable (the
Deployment's ConfigMap) as default.

Against AWS the source prefix (--source-s3-uri / LLAMA_OPERATOR_SOURCE_S3_URI) is required: it is
the one place the operator's IAM role (manifests/aws/account.yaml) may write, and the operator puts
the training source tarball and the endpoints' code there. Only when S3 is another endpoint (the
embedded default's moto, through AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) may it be left out; the
tarball then goes under each resource's own output prefix."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from llama_operator.artifacts import s3uri

SOURCE_S3_URI_ENV = "LLAMA_OPERATOR_SOURCE_S3_URI"


def s3_endpoint_overridden(env: Mapping[str, str]) -> bool:
    """Whether boto3 sends S3 calls somewhere other than AWS: AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL, as the embedded default sets them (and unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS
    tells boto3 to ignore them)."""
    if (env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") or "").strip().lower() == "true":
        return False
    return bool(env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"))


def _check_s3_prefix(uri: str) -> None:
    try:
        s3uri.split(uri)
    except ValueError:
        raise ValueError(f"--source-s3-uri / {SOURCE_S3_URI_ENV} must be an s3://bucket/[prefix/] URI, "
                         f"not {uri!r}") from None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(env.get(name) or default)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {env.get(name)!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")
    return value


@dataclass(frozen=True)
class Settings:
    region: str = "us-east-1"
    events_queue_url: str | None = None       # SQS queue fed by the EventBridge rule; None: resync only
    resync_seconds: float = 600.0             # slow Describe fallback
    source_s3_uri: str | None = None          # operator's S3 prefix (source/, endpoint-code/); None: local only
    workloads_dir: Path | None = None         # what is packed as the training source
    role_allowlist: str | None = None         # YAML file: namespace -> allowed role ARNs
    retry_seconds: float = 15.0               # first delay after throttling/5xx; doubles, capped at 5 min
    stop_poll_seconds: float = 2.0            # how often a delete checks that the job has stopped
    events_wait_seconds: int = 20             # SQS long-poll wait
    model_wait_seconds: float = 10.0          # how often an endpoint waiting for its LlamaFinetune looks again
    endpoint_retry_seconds: float = 5.0       # first retry of a request that met a busy endpoint
    delete_poll_seconds: float = 2.0          # how often a delete checks that the endpoint is gone
    # inference components emit no state-change events: how often their copies and status are read
    component_poll_seconds: float = 10.0
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        values = {
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            "events_queue_url": env.get("LLAMA_OPERATOR_EVENTS_QUEUE_URL") or None,
            "resync_seconds": float(env.get("LLAMA_OPERATOR_RESYNC_SECONDS") or 600),
            "source_s3_uri": env.get(SOURCE_S3_URI_ENV) or None,
            "workloads_dir": Path(env["LLAMA_OPERATOR_WORKLOADS_DIR"]) if env.get("LLAMA_OPERATOR_WORKLOADS_DIR")
            else None,
            "role_allowlist": env.get("LLAMA_OPERATOR_ROLE_ALLOWLIST") or None,
            "model_wait_seconds": _seconds(env, "LLAMA_OPERATOR_MODEL_WAIT_SECONDS", 10.0),
            "endpoint_retry_seconds": _seconds(env, "LLAMA_OPERATOR_ENDPOINT_RETRY_SECONDS", 5.0),
            "component_poll_seconds": _seconds(env, "LLAMA_OPERATOR_COMPONENT_POLL_SECONDS", 10.0),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.resync_seconds <= 0:
            raise ValueError("resync interval must be positive (--resync-seconds / LLAMA_OPERATOR_RESYNC_SECONDS)")
        if settings.source_s3_uri:
            _check_s3_prefix(settings.source_s3_uri)
        elif not s3_endpoint_overridden(env):
            raise ValueError(
                f"against AWS the operator needs its S3 prefix for training sources and endpoint code: "
                f"set --source-s3-uri or {SOURCE_S3_URI_ENV} to the SourceS3Uri output of "
                "manifests/aws/account.yaml (s3://llama-operator-ACCOUNT/); its IAM role may write nowhere else")
        return settings

    def workloads(self) -> Path:
        if self.workloads_dir:
            return Path(self.workloads_dir)
        from llama_operator import paths

        return paths.workloads_dir()
