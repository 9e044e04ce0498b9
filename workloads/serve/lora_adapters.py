"""LoRA adapters, as PEFT saves them, on the batching engine's fused weights (several at once).

An adapter directory holds `adapter_config.json` and `adapter_model.safetensors` (keys like
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`). PEFT itself is not needed: the
engine does its own per-layer math, so adapters are read with safetensors and the JSON config.

`LoraBank` keeps up to `max_loras` adapters stacked per layer and per fused projection group
(q/k/v, o, gate/up, down), every adapter padded to `max_rank`, its scale folded into B:
  a: [max_loras * G * max_rank, in]   (G = projections in the group; row block i*G+j is adapter
                                       i's A for the group's j-th projection)
  b: [max_loras * G * max_rank, out]  (B transposed, block-diagonal over the group's outputs)
so one step applies every adapter with two matmuls per group and a per-row 0/1 selection (see
fused_layers.project). The engine makes each `a` the last rows of its group's base matrix
(FusedLayer.fold), so the first of those matmuls is the base projection itself. The buffers never
change shape or address (adding an adapter copies into them, removing one zeroes its block), which
keeps captured CUDA graphs valid."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from request_params import ADAPTER_NAME, REGISTERED_ADAPTER_NAME

# The projections an adapter may target, by the fused group that carries them.
GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gu": ("gate_proj", "up_proj"),
          "down": ("down_proj",)}
TARGETS = tuple(m for members in GROUPS.values() for m in members)
GROUP_OF = {m: (g, j) for g, members in GROUPS.items() for j, m in enumerate(members)}
KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


class AdapterError(ValueError):
    """An adapter that cannot be served; names the adapter and the offending field."""

    def __init__(self, adapter: str, field: str, message: str):
        super().__init__(f"adapter {adapter!r}: {field}: {message}")
        self.adapter, self.field = adapter, field


class AdapterExistsError(AdapterError):
    """An adapter of that name is already loaded (HTTP 409 at registration)."""


class AdapterNotFoundError(AdapterError):
    """No adapter of that name is loaded (HTTP 404 at unregistration)."""


@dataclass
class LoraAdapter:
    name: str
    rank: int
    scale: float
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]   # (layer, module) -> (A [r, in], B [out, r])

    @property
    def targets(self) -> set[str]:
        return {m for _, m in self.weights}


def check_name(name) -> str:
    """A configured adapter's name (the CRD's rule) or one registered at run time (a SageMaker
    inference component's, which may hold capitals)."""
    if not isinstance(name, str) or not (ADAPTER_NAME.match(name) or REGISTERED_ADAPTER_NAME.match(name)):
        raise AdapterError(str(name), "name", "use 1-63 letters, digits, '-' or '_', starting with a letter or "
                                              "digit")
    return name


def base_shapes(model) -> dict[str, tuple[int, int]]:
    """module -> (in_features, out_features) of the base model's projections."""
    layer = model.model.layers[0]
    mods = {**{m: getattr(layer.self_attn, m) for m in GROUPS["qkv"] + GROUPS["o"]},
            **{m: getattr(layer.mlp, m) for m in GROUPS["gu"] + GROUPS["down"]}}
    return {m: (mod.weight.shape[1], mod.weight.shape[0]) for m, mod in mods.items()}


def _config(name: str, path: Path, max_rank: int) -> tuple[int, float]:
    """(rank, scale) from adapter_config.json, refusing what the engine's math does not do."""
    try:
        cfg = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise AdapterError(name, CONFIG_FILE, f"not found in {path} (a PEFT adapter directory has it)") from None
    except ValueError as err:
        raise AdapterError(name, CONFIG_FILE, f"not valid JSON ({err})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(name, "peft_type", f"{cfg['peft_type']!r}: only LORA adapters are served")
    refused = {"use_dora": "DoRA is not supported", "fan_in_fan_out": "Llama's projections are Linear, not Conv1D",
               "lora_bias": "LoRA biases are not supported", "modules_to_save": "whole replaced modules are not "
               "supported", "rank_pattern": "per-module ranks are not supported", "alpha_pattern": "per-module "
               "alphas are not supported", "layer_replication": "layer replication is not supported"}
    for key, why in refused.items():
        if cfg.get(key):
            raise AdapterError(name, key, f"{cfg[key]!r}: {why}")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(name, "bias", f"{cfg['bias']!r}: only 'none' is supported")
    targets = cfg.get("target_modules")
    if isinstance(targets, (list, tuple)):
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            raise AdapterError(name, "target_modules", f"{unknown[0]!r} is not a projection this engine adapts; "
                                                       f"known: {', '.join(TARGETS)}")
    rank, alpha = cfg.get("r"), cfg.get("lora_alpha", cfg.get("r"))
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterError(name, "r", f"must be a positive integer, got {rank!r}")
    if rank > max_rank:
        raise AdapterError(name, "r", f"{rank} is above this engine's max_lora_rank ({max_rank})")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise AdapterError(name, "lora_alpha", f"must be a number, got {alpha!r}")
    return rank, alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)


def read_adapter(name: str, path, *, max_rank: int, shapes: dict[str, tuple[int, int]], n_layers: int) -> LoraAdapter:
    """Read and check one adapter directory against the base model's shapes."""
    check_name(name)
    path = Path(path)
    rank, scale = _config(name, path, max_rank)
    if not (path / WEIGHTS_FILE).is_file():
        raise AdapterError(name, WEIGHTS_FILE, f"not found in {path} (save the adapter with safetensors)")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except Exception as err:  # noqa: BLE001 -- safetensors' error types vary by version; unusable either way
        raise AdapterError(name, WEIGHTS_FILE, f"cannot be read ({err}); save the adapter again") from None
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = KEY.match(key)
        if not m:
            raise AdapterError(name, "target_modules", f"weight {key!r} is not a LoRA A/B of a decoder layer "
                                                       f"projection ({', '.join(TARGETS)})")
        layer, module, which = int(m.group(1)), m.group(2), m.group(3)
        if module not in GROUP_OF:
            raise AdapterError(name, "target_modules", f"{module!r} (weight {key}) is not a projection this "
                                                       f"engine adapts; known: {', '.join(TARGETS)}")
        if layer >= n_layers:
            raise AdapterError(name, "base model", f"weight {key} is for layer {layer}; the base has {n_layers}")
        parts.setdefault((layer, module), {})[which] = tensor
    if not parts:
        raise AdapterError(name, WEIGHTS_FILE, "holds no LoRA weights")
    weights = {}
    for (layer, module), ab in sorted(parts.items()):
        where = f"layers.{layer}.{module}"
        if set(ab) != {"A", "B"}:
            raise AdapterError(name, WEIGHTS_FILE, f"{where} has lora_{''.join(ab)} without its pair")
        a, b = ab["A"], ab["B"]
        fan_in, fan_out = shapes[module]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != fan_in or b.shape[0] != fan_out:
            raise AdapterError(name, "base model", f"{where}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do "
                                                   f"not fit the base's {fan_out}x{fan_in} projection (another "
                                                   "base model?)")
        if a.shape[0] != rank or b.shape[1] != rank:
            raise AdapterError(name, "r", f"{where} has rank {a.shape[0]}/{b.shape[1]}, the config says {rank}")
        weights[(layer, module)] = (a, b)
    return LoraAdapter(name, rank, scale, weights)


class LoraBank:
    """Stacked adapter weights per layer (see the module doc); adapter i (0-based) is index i + 1,
    index 0 meaning the base model."""

    def __init__(self, shapes: dict[str, tuple[int, int]], n_layers: int, groups, max_loras: int, max_rank: int,
                 dtype: torch.dtype, device: torch.device):
        if max_loras < 1 or max_rank < 1:
            raise ValueError(f"max_loras and max_lora_rank must be >= 1, got {max_loras}, {max_rank}")
        self.shapes, self.n_layers, self.max_loras, self.max_rank = shapes, n_layers, max_loras, max_rank
        self.groups = tuple(g for g in GROUPS if g in set(groups))
        self.names: dict[str, int] = {}
        self.layers: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
        for _ in range(n_layers):
            bufs = {}
            for g in self.groups:
                members = GROUPS[g]
                rows = max_loras * len(members) * max_rank
                fan_in = shapes[members[0]][0]
                fan_out = sum(shapes[m][1] for m in members)
                bufs[g] = (torch.zeros(rows, fan_in, dtype=dtype, device=device),
                           torch.zeros(rows, fan_out, dtype=dtype, device=device))
            self.layers.append(bufs)

    def free_slots(self) -> list[int]:
        """The adapter indices no adapter holds, lowest first."""
        taken = set(self.names.values())
        return [i for i in range(1, self.max_loras + 1) if i not in taken]

    def add(self, adapter: LoraAdapter) -> int:
        """Copy the adapter into the lowest free block (in place); returns its index."""
        if adapter.name in self.names:
            raise AdapterExistsError(adapter.name, "name", "already loaded; remove it first")
        free = self.free_slots()
        if not free:
            raise AdapterError(adapter.name, "max_loras", f"all {self.max_loras} adapter slots are taken "
                                                          f"({', '.join(self.names)}); remove one first")
        outside = sorted(m for m in adapter.targets if GROUP_OF[m][0] not in self.groups)
        if outside:
            raise AdapterError(adapter.name, "target_modules", f"{outside[0]!r}: this engine was built for "
                               f"{', '.join(m for g in self.groups for m in GROUPS[g])} (pass lora_targets)")
        if adapter.rank > self.max_rank:
            raise AdapterError(adapter.name, "r", f"{adapter.rank} is above max_lora_rank ({self.max_rank})")
        index = free[0]
        # A block an earlier adapter held is zero (remove), but clearing it again costs little and
        # guarantees nothing of another adapter's rows or projections survives.
        self._clear(index)
        for (layer, module), (a, b) in adapter.weights.items():
            g, j = GROUP_OF[module]
            members = GROUPS[g]
            start = ((index - 1) * len(members) + j) * self.max_rank
            col = sum(self.shapes[m][1] for m in members[:j])
            buf_a, buf_b = self.layers[layer][g]
            buf_a[start:start + adapter.rank].copy_(a)
            buf_b[start:start + adapter.rank, col:col + b.shape[0]].copy_((b.float() * adapter.scale).t())
        self.names[adapter.name] = index
        return index

    def remove(self, name: str) -> int:
        """Zero the adapter's A and B blocks (in place) and free its index, which it returns; the
        other adapters keep theirs (captured graphs and admitted rows read them as they are)."""
        if name not in self.names:
            loaded = ", ".join(self.names) or "none"
            raise AdapterNotFoundError(name, "name", f"not loaded (loaded: {loaded})")
        index = self.names.pop(name)
        self._clear(index)
        return index

    def _clear(self, index: int) -> None:
        """Zero adapter `index`'s rows of every stacked A and B."""
        for bufs in self.layers:
            for g, (buf_a, buf_b) in bufs.items():
                rows = len(GROUPS[g]) * self.max_rank
                start = (index - 1) * rows
                buf_a[start:start + rows].zero_()
                buf_b[start:start + rows].zero_()


def write_random_adapter(model, path, rank: int, seed: int, b_std: float = 0.01) -> Path:
    """A PEFT-format adapter of `rank` on every projection with random A and B, for benchmarks and
    GPU checks where PEFT may be absent."""
    from safetensors.torch import save_file

    g, tensors = torch.Generator().manual_seed(seed), {}
    for name, mod in model.model.layers.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS:  # "0.self_attn.q_proj"
            fan_out, fan_in = mod.weight.shape
            key = f"base_model.model.model.layers.{name}.lora_"
            tensors[key + "A.weight"] = torch.randn(rank, fan_in, generator=g) / fan_in ** 0.5
            tensors[key + "B.weight"] = torch.randn(fan_out, rank, generator=g) * b_std
    path = Path(path)
    path.mkdir(parents=True)
    save_file(tensors, str(path / WEIGHTS_FILE))
    (path / CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
                                                "target_modules": list(TARGETS), "bias": "none"}))
    return path
