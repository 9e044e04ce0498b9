"""Pieces shared by both specs: field types with the same patterns and bounds as the CRDs."""

from __future__ import annotations

import re
from typing import Annotated, Dict, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from llama_operator.kinds import OWNER_TAG_PREFIX  # noqa: F401 (the spec models' rule)

S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
ROLE_ARN_PATTERN = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$"
INSTANCE_TYPE_PATTERN = r"^ml[.][a-z0-9-]+[.][a-z0-9]+$"

S3Uri = Annotated[str, Field(max_length=1024, pattern=S3_URI_PATTERN)]
RoleArn = Annotated[str, Field(max_length=2048, pattern=ROLE_ARN_PATTERN)]
InstanceType = Annotated[str, Field(max_length=64, pattern=INSTANCE_TYPE_PATTERN)]
Image = Annotated[str, Field(min_length=1, max_length=255)]
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
FinetuneName = Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)]  # a LlamaFinetune's name

TAGS_MESSAGE = ("tags: keys must be at most 128 characters and must not start with llamaops.dev/ "
                "(the operator's owner tags) or aws: (reserved); rename the tag")
ENV_MESSAGE = ("environment names must match [a-zA-Z_][a-zA-Z0-9_]* and be at most {} characters: rename "
               "the offending variable")


def _check_tags(tags: Dict[str, str]) -> Dict[str, str]:
    for key in tags:
        if len(key) > 128 or key.startswith(OWNER_TAG_PREFIX) or key.startswith("aws:"):
            raise ValueError(TAGS_MESSAGE)
    return tags


def _env_checker(max_name: int):
    pattern = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

    def check(env: Dict[str, str]) -> Dict[str, str]:
        for key in env:
            if len(key) > max_name or not pattern.match(key):
                raise ValueError(ENV_MESSAGE.format(max_name))
        return env
    return check


Tags = Annotated[Dict[str, Annotated[str, Field(max_length=256)]], Field(max_length=40),
                 AfterValidator(_check_tags)]


def environment_type(max_value: int, max_name: int):
    return Annotated[Dict[str, Annotated[str, Field(max_length=max_value)]], Field(max_length=48),
                     AfterValidator(_env_checker(max_name))]


class SpecModel(BaseModel):
    """camelCase on the wire (as in the CRDs), snake_case in Python; unknown fields are errors
    because the API server would silently prune them and a typo would be lost."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True,
                              frozen=True)

    def to_body(self) -> dict:
        """The spec as it would be stored, defaults filled, optional absent fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ResourceSpec(SpecModel):
    """The fields both kinds' specs have: the SageMaker execution role, an image instead of the
    default one, tags for what SageMaker creates, and what deletion does to it."""
    role_arn: RoleArn
    image: Optional[Image] = None
    tags: Tags = {}
    deletion_policy: Literal["Delete", "Retain"] = "Delete"
