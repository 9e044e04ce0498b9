"""SageMaker's error shapes. botocore reads the code from `__type` (JSON protocol) or the
`x-amzn-ErrorType` header (REST-JSON, the runtime), so both are always sent."""

from __future__ import annotations


class AwsError(Exception):
    status = 400
    code = "ValidationException"

    def __init__(self, message: str, *, extra: dict | None = None):
        super().__init__(message)
        self.message = message
        self.extra = extra or {}

    def body(self) -> dict:
        return {"__type": self.code, "message": self.message, "Message": self.message, **self.extra}


class ValidationError(AwsError):
    code = "ValidationException"


class RuntimeValidationError(AwsError):
    """SageMaker Runtime's (InvokeEndpoint's) validation error: its service model names the code
    ValidationError, where SageMaker's control plane says ValidationException."""
    code = "ValidationError"


class ResourceNotFound(AwsError):
    code = "ResourceNotFound"


class ResourceInUse(AwsError):
    code = "ResourceInUse"


class ResourceLimitExceeded(AwsError):
    code = "ResourceLimitExceeded"


class Throttling(AwsError):
    code = "ThrottlingException"


class UnknownOperation(AwsError):
    code = "UnknownOperationException"


class ModelError(AwsError):
    status = 424
    code = "ModelError"


class InternalFailure(AwsError):
    status = 500
    code = "InternalFailure"


# Application Auto Scaling's (the same JSON 1.1 error shape) ---------------------------------------
class ObjectNotFound(AwsError):
    code = "ObjectNotFoundException"


class InvalidNextToken(AwsError):
    code = "InvalidNextTokenException"


class LimitExceeded(AwsError):
    code = "LimitExceededException"
