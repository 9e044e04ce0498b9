"""One question to a demo endpoint, answered the way a chat client asks."""

from __future__ import annotations

import json


def sampled_answer(runtime, endpoint: str, prompt: str, max_new_tokens: int, adapter: str | None = None,
                   component: str | None = None) -> str:
    """A sampled answer (greedy decoding of a model this small gives every question the same
    reply). The tiny model sometimes samples the end of the text first; it is then asked once more
    to write the whole length (`ignore_eos`), so the demo never shows an empty answer."""
    text = ""
    for ignore_eos in (False, True):
        params = {"max_new_tokens": max_new_tokens, "do_sample": True, "temperature": 0.8, "top_p": 0.9,
                  "ignore_eos": ignore_eos}
        if adapter is not None:
            params["adapter"] = adapter
        target = {"InferenceComponentName": component} if component else {}
        out = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/json", Accept="application/json",
                                      Body=json.dumps({"inputs": prompt, "parameters": params}), **target)
        result = json.loads(out["Body"].read())
        text = (result[0] if isinstance(result, list) else result).get("generated_text", "")
        if text.strip():
            break
    return text
