"""`llama-operator demo --scaling`, its last part: the fine-tuned model as an inference component
that scales to zero (`manifests/examples/endpoint-components-local.yaml`, model.s3Uri pointed at
the fine-tune's status.modelS3Uri). It answers a question; idle, its copy and then its instance go
away; the next request fails for want of capacity, and a retry a few seconds later is answered by
the copy that failure brought back. The endpoint is deleted again before it returns, and nothing of
it may be left: no component, scalable target or alarm. After `--lora`, the LoRA fine-tunes'
adapters ride along as adapter inference components (model.adapters), each answering by its own
component name, and coming back with the copy that wakes."""

from __future__ import annotations

import time

import yaml

from llama_operator import paths
from llama_operator.local.demo.answers import sampled_answer
from llama_operator.local.demo.scaling import Watch, _table, delete_resource

EXAMPLE = "endpoint-components-local.yaml"
TO_ZERO_SECONDS = 120        # idle until no copy and no instance is left (15 periods, then the pool empties)
WAKE_SECONDS = 120           # retry the first request after that for at most this long


def run(kube, stack, namespace: str, model_uri: str, prompt: str, max_new_tokens: int, timeout: float, say,
        operator=None, adapters: dict[str, str] | None = None) -> tuple[bool, dict]:
    """(whether the component served, went to zero, woke on a request and was deleted leaving
    nothing; its last status). `adapters`: {name: s3:// prefix} of LoRA adapters of model_uri."""
    started = time.monotonic()
    doc = yaml.safe_load((paths.manifests_dir() / "examples" / EXAMPLE).read_text())
    doc["spec"]["model"] = {"s3Uri": model_uri}
    if adapters:
        doc["spec"]["model"]["adapters"] = [{"name": n, "s3Uri": u} for n, u in sorted(adapters.items())]
    name = doc["metadata"]["name"]
    watch = Watch(kube, namespace, name, say)
    kube.apply(doc)
    ok = False
    try:
        ok = _exercise(watch, stack, doc, prompt, max_new_tokens, timeout, say, operator)
    finally:
        status = watch.status()
        deleted = _delete(kube, stack, namespace, name, status, say)
        say(f"scale-to-zero part {'finished' if ok and deleted else 'FAILED'} in {time.monotonic() - started:.0f}s")
    return ok and deleted, status


def _serving(st: dict) -> bool:
    ic = st.get("inferenceComponent") or {}
    return st.get("phase") == "InService" and ic.get("status") == "InService" and \
        (ic.get("copies") or {}).get("current", 0) > 0


def _exercise(watch: Watch, stack, doc: dict, prompt: str, max_new_tokens: int, timeout: float, say,
              operator) -> bool:
    name = doc["metadata"]["name"]
    stopped = (lambda: operator.poll() is not None) if operator is not None else None
    say(f"applied LlamaEndpoint/{name}: an inference component on a managed instance pool, 0 to "
        f"{doc['spec']['scaling']['maxInstances']} instance(s)")
    st = watch.until(lambda s: _serving(s) and (s.get("scaling") or {}).get("appliedHash"), timeout, stopped)
    if st is None:
        say(f"the component endpoint did not get ready: {watch.phase} {watch.status().get('failureReason') or ''}")
        return False
    print(_table(watch.last, wide=True), flush=True)
    endpoint, component = st["endpointName"], st["inferenceComponent"]["name"]
    runtime, sm = stack.client("sagemaker-runtime"), stack.client("sagemaker")
    answer = sampled_answer(runtime, endpoint, prompt, max_new_tokens, component=component)
    print(f"  Q: {prompt.strip()[-90:]}\n  A: {answer.strip()[:120] or '<empty>'}", flush=True)
    rows = (st.get("inferenceComponent") or {}).get("adapters") or []
    for row in rows:  # each adapter by its own component: the model's copy runs it
        said = sampled_answer(runtime, endpoint, prompt, max_new_tokens, component=row["component"])
        print(f"  A [adapter component {row['component']}]: {said.strip()[:100] or '<empty>'}", flush=True)
        answer = answer if said.strip() else ""
    if rows:
        say(f"adapter components answered: {', '.join(r['name'] for r in rows)} (on the model's one copy)")

    quiet = time.monotonic()
    say("idle now: waiting for the copy, then the instance, to go")
    st = watch.until(lambda s: (s.get("inferenceComponent") or {}).get("copies") == {"current": 0, "desired": 0}
                     and (s.get("instances") or {}).get("current") == 0, TO_ZERO_SECONDS, stopped)
    if st is None:
        say(f"the idle component did not scale to zero in {TO_ZERO_SECONDS}s")
        return False
    say(f"scaled to zero: 1 -> 0 copies, 0 instances, {time.monotonic() - quiet:.0f}s after the last request")
    print(_table(watch.last, wide=True), flush=True)

    first = time.monotonic()
    tries, error, woken = 0, "", ""
    while time.monotonic() - first < WAKE_SECONDS and not woken:
        tries += 1
        try:
            woken = sampled_answer(runtime, endpoint, prompt, max_new_tokens, component=component) or " "
        except sm.exceptions.ClientError as exc:
            error = error or str(exc)
            time.sleep(1)
        watch.poll()
    if not woken:
        say(f"no answer {WAKE_SECONDS}s after the first request to the idle endpoint (last error: {error[:200]})")
        return False
    say(f"the first request found no capacity: {error[:160]}")
    say(f"woke from zero: answered {time.monotonic() - first:.0f}s after the first request ({tries} tries)")
    print(f"  A: {woken.strip()[:120] or '<empty>'}", flush=True)
    if rows:  # the woken copy loaded the adapters before it took traffic
        said = sampled_answer(runtime, endpoint, prompt, max_new_tokens, component=rows[0]["component"])
        say(f"adapter {rows[0]['name']} answered on the woken copy: {said.strip()[:80] or '<empty>'}")
        woken = woken if said.strip() else ""
    watch.until(lambda s: watch.messages.get("ScaledOut"), 15)
    missing = [r for r in ("ScaledIn", "ScaledOut") if not watch.messages.get(r)]
    if missing:
        say("no Event posted for: " + ", ".join(missing))
    return bool(answer.strip()) and bool(woken.strip()) and not missing


def _delete(kube, stack, namespace: str, name: str, status: dict, say) -> bool:
    if not delete_resource(kube, namespace, name, say):
        return False
    left = []
    endpoint = status.get("endpointName")
    if endpoint:
        left += [c["InferenceComponentName"] for c in stack.client("sagemaker").list_inference_components(
            EndpointNameEquals=endpoint)["InferenceComponents"]]
    resource = (status.get("scaling") or {}).get("resourceId")
    if resource:
        left += [t["ResourceId"] for t in stack.client("application-autoscaling").describe_scalable_targets(
            ServiceNamespace="sagemaker", ResourceIds=[resource])["ScalableTargets"]]
    component = (status.get("inferenceComponent") or {}).get("name")
    if component:
        left += [a["AlarmName"] for a in stack.client("cloudwatch").describe_alarms(
            AlarmNamePrefix=f"llama-operator-{component}")["MetricAlarms"]]
    say(f"deleted LlamaEndpoint/{name}; inference components, scalable targets and alarms left: "
        + (", ".join(left) or "none"))
    return not left
