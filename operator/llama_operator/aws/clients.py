"""boto3 clients from the standard configuration chain (credentials, AWS_REGION / AWS_DEFAULT_REGION,
and the per-service AWS_ENDPOINT_URL_<SERVICE> variables that point the embedded default at the
local services), with botocore's standard retry mode for throttling and transient 5xx: each call
backs off on its own (exponential, with jitter). The adaptive mode's one client-wide rate limiter
made every resource's calls queue behind a few throttled ones: at 1,000 resources with a tenth of
calls throttled, creating took minutes and an endpoint's InService waited on its handler's queued
Describe (benchmarks/operator_scale.py)."""

from __future__ import annotations

import os
import threading

import boto3
from botocore.config import Config

DEFAULT_MAX_ATTEMPTS = 6
# blocking AWS calls the operator runs at once (its default thread pool, lifecycle.py), and so the
# connections each client keeps
AWS_CALL_THREADS = 32


def client_config(region: str | None = None, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                  read_timeout: float = 60.0) -> Config:
    return Config(region_name=region, max_pool_connections=AWS_CALL_THREADS,
                  retries={"mode": "standard", "max_attempts": max_attempts}, connect_timeout=10,
                  read_timeout=read_timeout, user_agent_extra="llama-operator")


_sessions: dict[tuple, boto3.session.Session] = {}
_lock = threading.Lock()


def _shared_session() -> boto3.session.Session:
    """One session for the process's clients while the AWS_* environment stays the same: a session
    of each client's own parsed botocore's shared data again (about 13 MB a client)."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    if key not in _sessions:
        _sessions.clear()
        _sessions[key] = boto3.session.Session()
    return _sessions[key]


def make_client(service: str, region: str | None = None, *, session: boto3.session.Session | None = None,
                **config):
    # Clients are thread-safe, sessions are not: clients are made one at a time.
    with _lock:
        session = session or _shared_session()
        return session.client(service, config=client_config(region or session.region_name, **config))


def cloudwatch_client(region: str | None = None, *, session: boto3.session.Session | None = None):
    """CloudWatch for reading training metrics: a read is best effort (the next poll comes soon), so
    few retries and short timeouts, never a reconcile held up behind a throttled call."""
    return make_client("cloudwatch", region, session=session, max_attempts=2, read_timeout=10.0)
