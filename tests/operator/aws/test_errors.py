"""SageMaker's errors as both kinds read them: retried or terminal, and what status says."""

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from llama_operator.aws.errors import (RetryableError, TerminalError, already_exists, classify, describe, not_found,
                                       retry_reason)


def client_error(code: str, message: str = "m", http: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": http}},
                       "DescribeEndpoint")


@pytest.mark.parametrize("exc,kind,reason", [
    (client_error("ThrottlingException"), RetryableError, "Throttled"),
    (client_error("InternalFailure", http=500), RetryableError, "ServiceUnavailable"),
    (client_error("Whatever", http=429), RetryableError, "ServiceUnavailable"),
    (EndpointConnectionError(endpoint_url="https://sagemaker"), RetryableError, "ServiceUnavailable"),
    (client_error("ValidationException"), TerminalError, None),
    (client_error("AccessDeniedException"), TerminalError, None),
])
def test_errors_are_retried_or_terminal(exc, kind, reason):
    got = classify(exc, "DescribeEndpoint")
    assert isinstance(got, kind) and got.operation == "DescribeEndpoint"
    if reason:
        assert retry_reason(got) == reason


def test_what_status_says_of_an_error():
    assert describe(classify(client_error("ValidationException", "bad role"), "CreateModel")) == \
        "CreateModel: ValidationException: bad role"
    assert describe(OSError("disk full")) == "OSError: disk full"
    assert retry_reason(OSError("disk full")) == "Error"


@pytest.mark.parametrize("message", ["Could not find endpoint \"x\".", "Requested resource not found.",
                                     "Endpoint x does not exist"])
def test_sagemaker_spellings_of_not_found(message):
    assert not_found(client_error("ValidationException", message))
    assert not not_found(client_error("ValidationException", "RoleArn is invalid"))


def test_already_exists_is_read_from_the_message():
    assert already_exists(client_error("ValidationException", "Cannot create already existing model \"m\"."))
    assert not already_exists(client_error("ValidationException", "Cannot create model"))
