"""SageMaker's errors as the handlers of both kinds need them: `TerminalError` (SageMaker rejected
the request: retrying the same request cannot help, so the resource goes Failed with AWS's
message) or `RetryableError` (throttling, 5xx, network: botocore's standard retries already backed
off; the caller retries later and says so in status)."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

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
        code, message = code_and_message(exc)
        http = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        if code in THROTTLING_CODES or http >= 500 or http == 429:
            return RetryableError(code, message, operation)
        return TerminalError(code, message, operation)
    if isinstance(exc, BotoCoreError):
        return RetryableError(type(exc).__name__, str(exc), operation)
    raise exc


def retry_reason(exc: Exception) -> str:
    """The condition reason for an error that will be retried."""
    if isinstance(exc, RetryableError):
        return "Throttled" if exc.throttled else "ServiceUnavailable"
    return "Error"


def describe(exc: Exception) -> str:
    """An error for status and Events: SageMaker's own words, or the error's type and text."""
    return str(exc) if isinstance(exc, SageMakerError) else f"{type(exc).__name__}: {exc}"


def code_and_message(exc: ClientError) -> tuple[str, str]:
    err = exc.response.get("Error", {})
    return err.get("Code", "Unknown"), err.get("Message", str(exc))


def not_found(exc: ClientError) -> bool:
    # SageMaker answers an unknown job, model, config or endpoint with a ValidationException
    # ("Requested resource not found", "Could not find endpoint ..."); Application Auto Scaling an
    # unknown scalable target or policy with ObjectNotFoundException.
    code, message = code_and_message(exc)
    return code == "ObjectNotFoundException" or code in ("ResourceNotFound", "ValidationException") and (
        "could not find" in message.lower() or "not found" in message.lower() or "does not exist" in message)


def already_exists(exc: ClientError) -> bool:
    code, message = code_and_message(exc)
    return code in ("ValidationException", "ResourceInUse") and (
        "already existing" in message or "already exists" in message)
