"""Validation of one generation request in LMI's JSON shape (`inputs` + `parameters`).

Pure functions: a bad request is refused here, before it can join a batch, with a `RequestError`
that names the offending field and says what would be accepted."""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from typing import Any

# an adapter's name, as the CRD's model.adapters[].name (lmi.py, which loads alone, keeps a copy)
ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# an adapter registered at run time (POST /adapters): SageMaker names it after its adapter inference
# component, whose name may hold capitals and ends with a letter or digit
REGISTERED_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")
# SageMaker routes an invocation of an adapter inference component with this header (its name)
ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"

# LMI and TGI clients send these; we honour them all (see README for the meaning of each).
SUPPORTED_PARAMETERS = ("max_new_tokens", "temperature", "top_p", "do_sample", "stop",
                        "stop_sequences", "ignore_eos", "return_full_text", "details", "adapter")


class RequestError(ValueError):
    """A client error: `field` is the JSON path of the bad value, `status` the HTTP code."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def to_json(self) -> dict:
        return {"code": self.status, "error": str(self), "field": self.field}


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    do_sample: bool = False
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    return_full_text: bool = False
    details: bool = False
    adapter: str | None = None      # a loaded LoRA adapter's name; "": the base model; None: the default
    # LMI's top-level "adapters" list: one adapter per prompt (None: the base model)
    prompt_adapters: tuple[str | None, ...] = ()
    # where the request named its adapter, so an error found later (it was unregistered while the
    # request waited) names what the client sent
    adapter_field: str = field(default="parameters.adapter", compare=False)

    @property
    def greedy(self) -> bool:
        return not self.do_sample

    def for_prompt(self, i: int) -> GenerationParams:
        """The parameters of the request's i-th prompt (its own adapter when the list gave one)."""
        if not self.prompt_adapters:
            return self
        return replace(self, adapter=self.prompt_adapters[i], prompt_adapters=(), adapter_field=f"adapters[{i}]")


def check_adapter(field_name: str, name: Any, loaded: Collection[str] | None) -> str | None:
    """An adapter name as sent, checked against the loaded ones when they are known: null (or
    absent) is the endpoint's default adapter, "" the base model."""
    if name is None or name == "":
        return name
    if not isinstance(name, str):
        raise RequestError(field_name, f"must be an adapter name (a string), got {name!r}")
    if loaded is not None and name not in loaded:
        have = f"loaded: {', '.join(sorted(loaded))}" if loaded else "this endpoint has no adapters loaded"
        raise RequestError(field_name, f"unknown adapter {name!r}; {have}")
    return name


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"parameters.{name}", f"must be a finite number, got {value!r}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"parameters.{name}", f"must be true or false, got {value!r}")
    return value


def parse_parameters(raw: Any, *, default_max_new_tokens: int = 64, max_new_tokens_limit: int | None = None,
                     adapters: Collection[str] | None = None) -> GenerationParams:
    """Turn the request's `parameters` object into `GenerationParams`, or raise `RequestError`.

    Sampling happens when `do_sample` is true, or when it is absent and `temperature` > 0
    (clients of LMI send `temperature: 0` to ask for greedy decoding)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RequestError("parameters", f"must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SUPPORTED_PARAMETERS))
    if unknown:
        raise RequestError(f"parameters.{unknown[0]}",
                           f"unsupported parameter; supported: {', '.join(SUPPORTED_PARAMETERS)}")

    max_new = raw.get("max_new_tokens", default_max_new_tokens)
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
        raise RequestError("parameters.max_new_tokens", f"must be a positive integer, got {max_new!r}")
    if max_new_tokens_limit is not None and max_new > max_new_tokens_limit:
        raise RequestError("parameters.max_new_tokens",
                           f"{max_new} is more than this endpoint allows ({max_new_tokens_limit})")

    temperature = _number("temperature", raw.get("temperature", 0.0))
    if temperature < 0:
        raise RequestError("parameters.temperature", f"must be >= 0, got {temperature}")
    top_p = _number("top_p", raw.get("top_p", 1.0))
    if not 0 < top_p <= 1:
        raise RequestError("parameters.top_p", f"must be in (0, 1], got {top_p}")
    if "do_sample" in raw:
        do_sample = _flag("do_sample", raw["do_sample"])
    else:
        do_sample = temperature > 0
    if do_sample and temperature == 0:
        temperature = 1.0  # HF's default when sampling without a temperature

    stop_key = "stop" if "stop" in raw else "stop_sequences"
    stop = raw.get(stop_key, ())
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(f"parameters.{stop_key}", "must be a non-empty string or a list of them")

    return GenerationParams(
        max_new_tokens=max_new, temperature=temperature, top_p=top_p, do_sample=do_sample,
        stop=tuple(stop), ignore_eos=_flag("ignore_eos", raw.get("ignore_eos", False)),
        return_full_text=_flag("return_full_text", raw.get("return_full_text", False)),
        details=_flag("details", raw.get("details", False)),
        adapter=check_adapter("parameters.adapter", raw.get("adapter"), adapters),
    )


def parse_inputs(raw: Any) -> list[str]:
    """`inputs` is one prompt or a list of prompts; each must be a non-empty string."""
    prompts = raw if isinstance(raw, list) else [raw]
    if isinstance(raw, list) and not raw:
        raise RequestError("inputs", "the list of prompts is empty")
    for i, prompt in enumerate(prompts):
        where = f"inputs[{i}]" if isinstance(raw, list) else "inputs"
        if not isinstance(prompt, str):
            raise RequestError(where, f"must be a string, got {type(prompt).__name__}")
        if not prompt:
            raise RequestError(where, "must not be empty")
    return prompts


def _top_level_adapters(raw: Any, prompts: list[str], params: GenerationParams,
                        loaded: Collection[str] | None) -> GenerationParams:
    """LMI's spelling (djl_python input_parser): "adapters" is one name for every prompt, or a list
    with one name per prompt; "" is the base model."""
    if params.adapter is not None:
        raise RequestError("adapters", "name the adapter once: parameters.adapter or adapters, not both")
    if not isinstance(raw, list):
        return replace(params, adapter=check_adapter("adapters", raw, loaded), adapter_field="adapters")
    if len(raw) != len(prompts):
        raise RequestError("adapters", f"has {len(raw)} entries for {len(prompts)} inputs; give one per input")
    names = tuple(check_adapter(f"adapters[{i}]", a, loaded) for i, a in enumerate(raw))
    return replace(params, prompt_adapters=names)


def parse_request(body: Any, *, adapters: Collection[str] | None = None, adapter_header: str | None = None,
                  **limits) -> tuple[list[str], GenerationParams, bool]:
    """Validate an /invocations body: returns (prompts, params, whether inputs was a list); prompt
    i runs with `params.for_prompt(i)`. `adapters`: the loaded adapter names, checked when given;
    `adapter_header`: the X-Amzn-SageMaker-Adapter-Identifier header, the adapter every prompt runs with."""
    if not isinstance(body, dict):
        raise RequestError("body", 'must be a JSON object like {"inputs": "...", "parameters": {...}}')
    if "inputs" not in body:
        raise RequestError("inputs", 'is required (the prompt text, or a list of prompts)')
    extra = sorted(set(body) - {"inputs", "parameters", "adapters"})
    if extra:
        raise RequestError(extra[0], 'unknown field; the body takes "inputs", "parameters" and "adapters"')
    prompts = parse_inputs(body["inputs"])
    params = parse_parameters(body.get("parameters"), adapters=adapters, **limits)
    if "adapters" in body:
        params = _top_level_adapters(body["adapters"], prompts, params, adapters)
    if adapter_header:
        params = _header_adapter(adapter_header, len(prompts), params, adapters)
    return prompts, params, isinstance(body["inputs"], list)


def _header_adapter(name: str, n_prompts: int, params: GenerationParams,
                    loaded: Collection[str] | None) -> GenerationParams:
    """SageMaker's adapter header picks the adapter of every prompt; a body that names another one
    is refused rather than one of them silently winning."""
    check_adapter(ADAPTER_HEADER, name, loaded)
    for prompt in (params.for_prompt(i) for i in range(n_prompts)):
        adapter = prompt.adapter
        if adapter is not None and adapter != name:
            raise RequestError(prompt.adapter_field, f"names adapter {adapter!r} but the {ADAPTER_HEADER} header names {name!r}; "
                                      "name it in one place, or the same in both")
    return replace(params, adapter=name, prompt_adapters=(), adapter_field=ADAPTER_HEADER)


@dataclass(frozen=True)
class AdapterRegistration:
    """A POST /adapters body (SageMaker's adapter inference component contract)."""
    name: str
    src: str
    preload: bool = True     # accepted as sent; this engine always loads an adapter at registration
    pin: bool = False        # accepted as sent; a loaded adapter stays on the GPU until unregistered
    alias: str | None = None


REGISTRATION_FIELDS = tuple(f.name for f in fields(AdapterRegistration))


def parse_adapter_registration(body: Any) -> AdapterRegistration:
    """Validate a registration body `{"name", "src", "preload"?, "pin"?, "alias"?}`. Other keys are
    ignored: the platform may send options meant for other engines, and refusing them would fail
    the inference component's creation over nothing."""
    if not isinstance(body, dict):
        raise RequestError("body", 'must be a JSON object like {"name": "my-adapter", "src": "/path/or/s3://..."}')
    name = body.get("name")
    if not isinstance(name, str) or not REGISTERED_ADAPTER_NAME.match(name):
        raise RequestError("name", f"{name!r}: give the adapter's name, 1-63 letters, digits, '-' or '_', starting "
                                   "and ending with a letter or digit")
    src = body.get("src")
    if not isinstance(src, str) or not src.strip():
        raise RequestError("src", f"{src!r}: give the adapter's directory (adapter_config.json + "
                                  "adapter_model.safetensors) or its s3:// prefix")
    alias = body.get("alias")
    if alias is not None and not isinstance(alias, str):
        raise RequestError("alias", f"must be a string, got {alias!r}")
    return AdapterRegistration(name, src.strip(), _option_flag(body, "preload", True),
                               _option_flag(body, "pin", False), alias)


def _option_flag(body: dict, key: str, default: bool) -> bool:
    """true/false, also as the strings djl-serving passes ("true", "false")."""
    value = body.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise RequestError(key, f"must be true or false, got {value!r}")
    return value
