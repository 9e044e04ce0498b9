"""What a LlamaEndpoint serves: `model.s3Uri` as given, or what its `fromFinetune` LlamaFinetune
produced once it has (its model; for a LoRA fine-tune, its base model with its adapter), plus the
LoRA adapters of `model.adapters`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from llama_operator.paths import adapter_knob

# an adapter the endpoint cannot serve as specified
ADAPTER_REFUSALS = ("AdapterNotLoRA", "AdapterOfAnotherBase", "AdapterNameTaken")
# reasons that only a change of the spec (or of the fine-tunes it names) can lift: Failed
NEEDS_A_NEW_SPEC = ("FinetuneFailed", *ADAPTER_REFUSALS)


@dataclass(frozen=True)
class Resolved:
    """The base model's S3 prefix, the adapters by name, the adapter a request that names none
    runs with, and the rank the engine makes room for (model.maxAdapterRank or the default, and at
    least every fine-tune's own)."""
    model_s3_uri: str
    adapters: dict[str, str] = field(default_factory=dict)
    default_adapter: str | None = None
    max_adapter_rank: int = 0  # resolve_model sets it; 0 while no adapter is known


def _finetune(finetunes, namespace: str, source: str | None, where: str) -> tuple[dict | None, str, str]:
    """(index entry of a Completed LlamaFinetune, "", "") or (None, reason, message)."""
    found = list(finetunes.get((namespace, source), [])) if finetunes is not None and source else []
    if not found:
        return None, "FinetuneNotFound", (f"waiting for LlamaFinetune {source} in namespace {namespace}: "
                                          f"it does not exist (yet); create it, or fix spec.{where}")
    ft = found[0]
    phase = ft.get("phase") or "Pending"
    if phase in ("Failed", "Stopped"):
        why = f": {ft['failureReason']}" if ft.get("failureReason") else ""
        return None, "FinetuneFailed", (f"LlamaFinetune {source} is {phase}{why}; re-create it, or point "
                                        f"spec.{where} at another one")
    if phase != "Completed":
        return None, "FinetuneNotCompleted", f"waiting for LlamaFinetune {source} to complete (it is {phase})"
    return ft, "", ""


def _base(model: Mapping[str, Any], namespace: str, finetunes) -> tuple[Resolved | None, str, str]:
    if model.get("s3Uri"):
        return Resolved(model["s3Uri"]), "ModelGiven", f"model from {model['s3Uri']}"
    source = model.get("fromFinetune")
    ft, reason, message = _finetune(finetunes, namespace, source, "model.fromFinetune")
    if ft is None:
        return None, reason, message
    if ft.get("adapterS3Uri"):
        if not ft.get("baseModelS3Uri"):
            return None, "FinetuneHasNoModel", f"LlamaFinetune {source} reports an adapter but no base model"
        return (Resolved(ft["baseModelS3Uri"], {source: ft["adapterS3Uri"]}, source, ft.get("peftRank") or 0),
                "FinetuneCompleted", f"base model {ft['baseModelS3Uri']} with the adapter of LlamaFinetune {source}: "
                                     f"{ft['adapterS3Uri']}")
    if not ft.get("modelS3Uri"):
        return None, "FinetuneHasNoModel", f"LlamaFinetune {source} completed but reports no status.modelS3Uri"
    return Resolved(ft["modelS3Uri"]), "FinetuneCompleted", f"model from LlamaFinetune {source}: {ft['modelS3Uri']}"


def resolve_base_model(base: Mapping[str, Any], namespace: str, name: str, finetunes
                       ) -> tuple[str | None, str, str]:
    """A LlamaFinetune's baseModel as a model prefix: (uri, reason, message), uri None while the
    LlamaFinetune it names has not completed, or, with a reason in NEEDS_A_NEW_SPEC, never will."""
    if base.get("s3Uri"):
        return base["s3Uri"], "ModelGiven", f"base model {base['s3Uri']}"
    source = base.get("fromFinetune")
    if source == name:
        return None, "FinetuneFailed", "spec.baseModel.fromFinetune names this LlamaFinetune itself: name another one"
    ft, reason, message = _finetune(finetunes, namespace, source, "baseModel.fromFinetune")
    if ft is None:
        return None, reason, message
    if not ft.get("modelS3Uri"):
        return None, "FinetuneHasNoModel", (
            f"spec.baseModel.fromFinetune: LlamaFinetune {source} produced a LoRA adapter and no model; to train on "
            "it, re-create it with output.mergeAdapter: true, or start from baseModel.s3Uri")
    return ft["modelS3Uri"], "FinetuneCompleted", f"base model from LlamaFinetune {source}: {ft['modelS3Uri']}"


def resolve_model(spec: Mapping[str, Any], namespace: str, finetunes) -> tuple[Resolved | None, str, str]:
    """(what to serve or None, reason, message). `finetunes`: the kopf index of LlamaFinetunes by
    (namespace, name). None means not available: yet (WaitingForModel) or, with a reason in
    NEEDS_A_NEW_SPEC, not without the user's help."""
    model = spec.get("model") or {}
    resolved, reason, message = _base(model, namespace, finetunes)
    if resolved is None:
        return resolved, reason, message
    adapters, rank = dict(resolved.adapters), resolved.max_adapter_rank  # the highest rank known so far
    for i, entry in enumerate(model.get("adapters") or []):
        name, where = entry.get("name"), f"model.adapters[{i}]"
        if name in adapters:
            return None, "AdapterNameTaken", (f"spec.{where}.name {name!r} is the name of model.fromFinetune's own "
                                              "adapter: rename it")
        if entry.get("s3Uri"):
            adapters[name] = entry["s3Uri"]
            continue
        ft, why, said = _finetune(finetunes, namespace, entry.get("fromFinetune"), f"{where}.fromFinetune")
        if ft is None:
            return None, why, said
        if not ft.get("adapterS3Uri"):
            return None, "AdapterNotLoRA", (f"spec.{where}.fromFinetune: LlamaFinetune {entry['fromFinetune']} is a "
                                            "full fine-tune and has no adapter; serve its model with model.fromFinetune "
                                            "on an endpoint of its own, or name a LoRA fine-tune")
        if (ft.get("baseModelS3Uri") or "").rstrip("/") != resolved.model_s3_uri.rstrip("/"):
            return None, "AdapterOfAnotherBase", (
                f"spec.{where}.fromFinetune: LlamaFinetune {entry['fromFinetune']} adapted "
                f"{ft.get('baseModelS3Uri')}, but this endpoint serves {resolved.model_s3_uri}: an adapter "
                "works only on the base model it was trained on")
        adapters[name] = ft["adapterS3Uri"]
        rank = max(rank, ft.get("peftRank") or 0)
    if model.get("adapters"):
        message += f"; adapters: {', '.join(adapters)}"
    if adapters:  # the engine's bound: the spec's (or the default), raised to any fine-tune's known rank
        rank = max(model.get("maxAdapterRank") or adapter_knob("maxLoraRank")["default"], rank)
    return Resolved(resolved.model_s3_uri, adapters, resolved.default_adapter, rank), reason, message


def finetune_entry(namespace, name, status, spec=None, **_):
    """The kopf index function: LlamaFinetunes by (namespace, name), with what an endpoint's
    `fromFinetune` (or an adapter's) needs."""
    status, spec = status or {}, spec or {}
    method = spec.get("method") if isinstance(spec, Mapping) else None
    peft = method.get("peft") if isinstance(method, Mapping) else None
    base = spec.get("baseModel") if isinstance(spec, Mapping) else None
    return {(namespace, name): {"phase": status.get("phase"), "modelS3Uri": status.get("modelS3Uri"),
                                "adapterS3Uri": status.get("adapterS3Uri"),
                                # what the job started from (status: also a baseModel.fromFinetune)
                                "baseModelS3Uri": status.get("baseModelS3Uri") or (
                                    base.get("s3Uri") if isinstance(base, Mapping) else None),
                                "peftRank": peft.get("r") if isinstance(peft, Mapping) else None,
                                "failureReason": status.get("failureReason")}}
