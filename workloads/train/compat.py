"""What differs between the torch and transformers versions of the images the job runs in
(docs/images.md): the SMP image has torch 2.5.1 and transformers 4.44.2, the PyTorch DLC with
the source's requirements.txt has torch 2.8 and transformers 5."""
from __future__ import annotations


def _version(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def transformers_version() -> tuple[int, ...]:
    import transformers

    return _version(transformers.__version__)


def dtype_kwargs(dtype) -> dict:
    """`from_pretrained`'s dtype argument: `dtype=` from transformers 4.56, `torch_dtype=` before."""
    return {"dtype": dtype} if transformers_version() >= (4, 56) else {"torch_dtype": dtype}


def set_config_dtype(config, dtype) -> None:
    """The dtype a saved config.json records: `dtype` from transformers 4.56, `torch_dtype` before
    (where a torch.dtype under any other name breaks the config's JSON)."""
    setattr(config, "dtype" if transformers_version() >= (4, 56) else "torch_dtype", dtype)


def fsdp2():
    """(fully_shard, MixedPrecisionPolicy): public in torch.distributed.fsdp from torch 2.6, in
    torch.distributed._composable.fsdp before (torch 2.5.1 in the SMP image)."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    return fully_shard, MixedPrecisionPolicy
