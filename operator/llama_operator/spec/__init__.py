"""Pydantic models of the two custom resources' specs (`Model.model_validate(body['spec'])`)."""

from .endpoint import LlamaEndpointSpec
from .finetune import LlamaFinetuneSpec

__all__ = ["LlamaEndpointSpec", "LlamaFinetuneSpec"]
