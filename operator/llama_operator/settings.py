"""Operator settings: flags of `llama-operator run`, each with an environment variable (the
Deployment's ConfigMap) as default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class Settings:
    region: str = "us-east-1"
    events_queue_url: str | None = None       # SQS queue fed by the EventBridge rule; None: resync only
    resync_seconds: float = 600.0             # slow Describe fallback
    source_s3_uri: str | None = None          # where the source tarball goes; None: under the spec's output
    workloads_dir: Path | None = None         # what is packed as the training source
    role_allowlist: str | None = None         # YAML file: namespace -> allowed role ARNs
    retry_seconds: float = 15.0               # first delay after throttling/5xx; doubles, capped at 5 min
    stop_poll_seconds: float = 2.0            # how often a delete checks that the job has stopped
    events_wait_seconds: int = 20             # SQS long-poll wait
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        values = {
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            "events_queue_url": env.get("LLAMA_OPERATOR_EVENTS_QUEUE_URL") or None,
            "resync_seconds": float(env.get("LLAMA_OPERATOR_RESYNC_SECONDS") or 600),
            "source_s3_uri": env.get("LLAMA_OPERATOR_SOURCE_S3_URI") or None,
            "workloads_dir": Path(env["LLAMA_OPERATOR_WORKLOADS_DIR"]) if env.get("LLAMA_OPERATOR_WORKLOADS_DIR")
            else None,
            "role_allowlist": env.get("LLAMA_OPERATOR_ROLE_ALLOWLIST") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.resync_seconds <= 0:
            raise ValueError("resync interval must be positive (--resync-seconds / LLAMA_OPERATOR_RESYNC_SECONDS)")
        return settings

    def workloads(self) -> Path:
        if self.workloads_dir:
            return Path(self.workloads_dir)
        from llama_operator import paths

        return paths.workloads_dir()
