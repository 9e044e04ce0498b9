"""Pydantic models of the two custom resources' specs, and the one check both kinds run on them
(`validate(LlamaFinetuneSpec, body['spec'])`)."""

from .endpoint import LlamaEndpointSpec
from .finetune import LlamaFinetuneSpec
from .validate import InvalidSpec, deletion_policy, stored_spec, validate

__all__ = ["InvalidSpec", "LlamaEndpointSpec", "LlamaFinetuneSpec", "deletion_policy", "stored_spec", "validate"]
