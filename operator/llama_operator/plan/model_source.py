"""Which model a LlamaEndpoint serves: `model.s3Uri` as given, or the model its `fromFinetune`
LlamaFinetune produced, once it has."""

from __future__ import annotations

from typing import Any, Mapping


def resolve_model(spec: Mapping[str, Any], namespace: str, finetunes) -> tuple[str | None, str, str]:
    """(model S3 URI or None, reason, message). `finetunes`: the kopf index of LlamaFinetunes by
    (namespace, name). None means not available: yet (WaitingForModel) or, with reason
    FinetuneFailed, not without the user's help."""
    model = spec.get("model") or {}
    if model.get("s3Uri"):
        return model["s3Uri"], "ModelGiven", f"model from {model['s3Uri']}"
    source = model.get("fromFinetune")
    found = list(finetunes.get((namespace, source), [])) if finetunes is not None and source else []
    if not found:
        return None, "FinetuneNotFound", (f"waiting for LlamaFinetune {source} in namespace {namespace}: "
                                          "it does not exist (yet); create it, or fix spec.model.fromFinetune")
    ft = found[0]
    phase = ft.get("phase") or "Pending"
    if phase == "Completed":
        if not ft.get("modelS3Uri"):
            return None, "FinetuneHasNoModel", f"LlamaFinetune {source} completed but reports no status.modelS3Uri"
        return ft["modelS3Uri"], "FinetuneCompleted", f"model from LlamaFinetune {source}: {ft['modelS3Uri']}"
    if phase in ("Failed", "Stopped"):
        why = f": {ft['failureReason']}" if ft.get("failureReason") else ""
        return None, "FinetuneFailed", (f"LlamaFinetune {source} is {phase}{why}; re-create it, or point "
                                        "spec.model at another model")
    return None, "FinetuneNotCompleted", f"waiting for LlamaFinetune {source} to complete (it is {phase})"


def finetune_entry(namespace, name, status, **_):
    """The kopf index function: LlamaFinetunes by (namespace, name), with what an endpoint's
    `fromFinetune` needs."""
    status = status or {}
    return {(namespace, name): {"phase": status.get("phase"), "modelS3Uri": status.get("modelS3Uri"),
                                "failureReason": status.get("failureReason")}}
