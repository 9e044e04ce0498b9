"""`llama-operator demo --lora`: after the main demo's fine-tune, two LoRA fine-tunes on top of the
model it produced (`manifests/examples/finetune-lora-local.yaml`, baseModel pointed at its
status.modelS3Uri as a user would copy it), then one endpoint serving that model with both adapters
(`endpoint-adapters-local.yaml`), and one question answered through each adapter and through the
base alone. Everything it applied is deleted again before it returns."""

from __future__ import annotations

import time

import yaml

from llama_operator import paths
from llama_operator.local.demo.answers import sampled_answer

EXAMPLES = ("finetune-lora-local.yaml", "endpoint-adapters-local.yaml")


def _docs() -> list[dict]:
    examples = paths.manifests_dir() / "examples"
    return [d for f in EXAMPLES for d in yaml.safe_load_all((examples / f).read_text()) if d]


def _plural(doc: dict) -> str:
    return "llamafinetunes" if doc["kind"] == "LlamaFinetune" else "llamaendpoints"


def _phase(kube, namespace: str, doc: dict) -> str | None:
    return ((kube.get(_plural(doc), namespace, doc["metadata"]["name"]) or {}).get("status") or {}).get("phase")


def run(kube, stack, namespace: str, base_uri: str, question: str, prompt: str, max_new_tokens: int,
        timeout: float, say) -> tuple[bool, dict, dict[str, str]]:
    """(whether both adapters trained and the endpoint answered through each, the endpoint's last
    status, for the caller's check that nothing of it is left in SageMaker, and the adapters the
    fine-tunes wrote: {fine-tune name: adapter s3:// prefix}, which outlive the resources)."""
    docs = _docs()
    for doc in docs:
        if doc["kind"] == "LlamaFinetune":
            doc["spec"]["baseModel"]["s3Uri"] = base_uri
        kube.apply(doc)
        say(f"applied {doc['kind']}/{doc['metadata']['name']}")
    finetunes = [d for d in docs if d["kind"] == "LlamaFinetune"]
    endpoint = next(d for d in docs if d["kind"] == "LlamaEndpoint")
    ok, deadline, seen = False, time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        for doc in docs:
            phase = _phase(kube, namespace, doc)
            if phase and seen.get(doc["metadata"]["name"]) != phase:
                seen[doc["metadata"]["name"]] = phase
                say(f"{doc['kind']}/{doc['metadata']['name']}: {phase}")
        if any(seen.get(d["metadata"]["name"]) in ("Failed", "Stopped") for d in docs):
            break
        if seen.get(endpoint["metadata"]["name"]) == "InService":
            ok = True
            break
        time.sleep(1)
    ep_status = (kube.get("llamaendpoints", namespace, endpoint["metadata"]["name"]) or {}).get("status") or {}
    if ok:
        runtime = stack.client("sagemaker-runtime")
        say(f"adapters served on one base: {', '.join(ep_status.get('adapters', []))}")
        print(f"  Q: {question[:90]}")
        for label, adapter in (("tiny-llama-lora-a (default)", None), ("b", "b"), ("base model", "")):
            answer = sampled_answer(runtime, ep_status["endpointName"], prompt, max_new_tokens, adapter).strip()
            print(f"  A [{label}]: {answer[:120] or '<empty>'}")
            ok = ok and bool(answer)
    else:
        say("the LoRA fine-tunes or the adapter endpoint did not get ready: "
            + ", ".join(f"{n} {p}" for n, p in seen.items()))
    adapters = {}
    for doc in finetunes:
        st = (kube.get("llamafinetunes", namespace, doc["metadata"]["name"]) or {}).get("status") or {}
        if st.get("adapterS3Uri"):
            adapters[doc["metadata"]["name"]] = st["adapterS3Uri"]
    for doc in [endpoint, *finetunes]:
        kube.delete(_plural(doc), namespace, doc["metadata"]["name"])
    gone_by = time.monotonic() + 120
    while time.monotonic() < gone_by and any(kube.get(_plural(d), namespace, d["metadata"]["name"]) for d in docs):
        time.sleep(1)
    return ok, ep_status, adapters
