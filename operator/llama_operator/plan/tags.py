"""Owner tags: how the operator recognises (and adopts or cleans up) what it created."""

from __future__ import annotations

from typing import Mapping

from llama_operator.kinds import KIND_TAG, NAME_TAG, NAMESPACE_TAG, UID_TAG


def owner_tags(kind: str, namespace: str, name: str, uid: str,
               user_tags: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """SageMaker Tags: the user's, then the owner tags (which the CRD forbids users to set)."""
    tags = dict(user_tags or {})
    tags.update({KIND_TAG: kind, NAMESPACE_TAG: namespace, NAME_TAG: name, UID_TAG: uid})
    return [{"Key": k, "Value": v} for k, v in tags.items()]
