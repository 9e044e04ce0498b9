"""Owner tags: how the operator recognises (and adopts or cleans up) what it created."""

from __future__ import annotations

from typing import Mapping

KIND, NAMESPACE, NAME, UID = ("llamaops.dev/kind", "llamaops.dev/namespace", "llamaops.dev/name",
                              "llamaops.dev/uid")


def owner_tags(kind: str, namespace: str, name: str, uid: str,
               user_tags: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """SageMaker Tags: the user's, then the owner tags (which the CRD forbids users to set)."""
    tags = dict(user_tags or {})
    tags.update({KIND: kind, NAMESPACE: namespace, NAME: name, UID: uid})
    return [{"Key": k, "Value": v} for k, v in tags.items()]
