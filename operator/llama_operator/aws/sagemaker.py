"""A thin gateway over the SageMaker training-job calls the operator makes.

Errors come out as two kinds: `TerminalError` (SageMaker rejected the request: retrying the same
request cannot help, so the resource goes Failed with AWS's message) and `RetryableError`
(throttling, 5xx, network: botocore's adaptive retries already backed off; the caller retries
later and says so in status)."""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError

from llama_operator.kinds import UID_TAG

log = logging.getLogger(__name__)

TERMINAL_CODES = frozenset({
    "ValidationException", "ResourceLimitExceeded", "AccessDeniedException", "AccessDenied",
    "UnrecognizedClientException", "InvalidClientTokenId", "IncompleteSignature", "MissingAuthenticationToken",
})
THROTTLING_CODES = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "ProvisionedThroughputExceededException", "SlowDown",
})


class SageMakerError(Exception):
    def __init__(self, code: str, message: str, operation: str):
        super().__init__(f"{operation}: {code}: {message}")
        self.code, self.message, self.operation = code, message, operation


class TerminalError(SageMakerError):
    """SageMaker rejected the request itself."""


class RetryableError(SageMakerError):
    """Throttled, a 5xx, or the network: the same request may succeed later."""

    @property
    def throttled(self) -> bool:
        return self.code in THROTTLING_CODES


def classify(exc: Exception, operation: str) -> SageMakerError:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "Unknown")
        message = err.get("Message", str(exc))
        http = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        if code in THROTTLING_CODES or http >= 500 or http == 429:
            return RetryableError(code, message, operation)
        return TerminalError(code, message, operation)
    if isinstance(exc, BotoCoreError):
        return RetryableError(type(exc).__name__, str(exc), operation)
    raise exc


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _not_found(exc: ClientError) -> bool:
    # SageMaker answers an unknown training job with ValidationException "Requested resource not found".
    msg = exc.response.get("Error", {}).get("Message", "")
    return _code(exc) in ("ResourceNotFound", "ValidationException") and "not found" in msg.lower()


class SageMakerGateway:
    def __init__(self, client, *, on_call=None):
        self.client = client
        self._on_call = on_call or (lambda operation, outcome: None)

    def _call(self, operation: str, fn, **kwargs):
        try:
            out = fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            self._on_call(operation, _code(exc) if isinstance(exc, ClientError) else type(exc).__name__)
            raise
        self._on_call(operation, "ok")
        return out

    def describe_training_job(self, name: str) -> dict | None:
        """DescribeTrainingJob, or None when no job has this name."""
        try:
            return self._call("DescribeTrainingJob", self.client.describe_training_job, TrainingJobName=name)
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise classify(exc, "DescribeTrainingJob") from exc
        except BotoCoreError as exc:
            raise classify(exc, "DescribeTrainingJob") from exc

    def tags(self, arn: str) -> dict[str, str]:
        try:
            out = self._call("ListTags", self.client.list_tags, ResourceArn=arn, MaxResults=100)
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, "ListTags") from exc
        return {t["Key"]: t.get("Value", "") for t in out.get("Tags", [])}

    def ensure_training_job(self, request: dict) -> tuple[dict, bool]:
        """(DescribeTrainingJob, created) for the job named in `request`: an existing job with that
        name is adopted, never created twice (restarts and re-applies are safe)."""
        name = request["TrainingJobName"]
        existing = self.describe_training_job(name)
        if existing is not None:
            self._check_owner(existing, request)
            return existing, False
        try:
            self._call("CreateTrainingJob", self.client.create_training_job, **request)
        except ClientError as exc:
            if _code(exc) == "ResourceInUse":  # created by a run that died before recording it
                existing = self.describe_training_job(name)
                if existing is not None:
                    self._check_owner(existing, request)
                    return existing, False
            raise classify(exc, "CreateTrainingJob") from exc
        except BotoCoreError as exc:
            raise classify(exc, "CreateTrainingJob") from exc
        described = self.describe_training_job(name)
        if described is None:  # eventual consistency: report what we sent
            described = {"TrainingJobName": name, "TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting"}
        return described, True

    def _check_owner(self, existing: dict, request: dict) -> None:
        want = {t["Key"]: t["Value"] for t in request.get("Tags", []) if t["Key"] == UID_TAG}
        if not want or not existing.get("TrainingJobArn"):
            return
        have = self.tags(existing["TrainingJobArn"])
        if have.get(UID_TAG) not in (None, want[UID_TAG]):
            raise TerminalError("NameCollision", f"a training job named {request['TrainingJobName']} exists and "
                                "belongs to another resource (tag llamaops.dev/uid differs)", "CreateTrainingJob")

    def stop_training_job(self, name: str) -> bool:
        """StopTrainingJob; False when the job is gone or no longer running (nothing to stop)."""
        try:
            self._call("StopTrainingJob", self.client.stop_training_job, TrainingJobName=name)
            return True
        except ClientError as exc:
            if _not_found(exc) or _code(exc) == "ValidationException":
                return False
            raise classify(exc, "StopTrainingJob") from exc
        except BotoCoreError as exc:
            raise classify(exc, "StopTrainingJob") from exc
