"""peft=qlora through the job's own loading code: the base in 4-bit NF4 (bitsandbytes), LoRA on it,
a few optimizer steps, the adapter saved and reloaded. bitsandbytes' 4-bit kernels run on CUDA only,
so this runs on a GPU machine (`python3 -m pytest tests/workloads/test_qlora_gpu.py`), never in CI.
The first test steps a plain AdamW loop over the adapter; the second runs the whole job under
DeepSpeed ZeRO-2 (it needs deepspeed installed)."""
from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="qlora needs a CUDA GPU")


TEXT = ["The weather is lovely today, shall we walk to the park?",
        "I would like a cup of tea with milk, please."]


@pytest.fixture
def base(tmp_path):
    """A tiny random Llama whose tokenizer is trained on TEXT (the GPU machine has no datasets)."""
    from llama_operator.local.demo.tinymodel import train_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(TEXT * 20, vocab_size=300)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    out = tmp_path / "base"
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _batch(tokenizer, device):
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    enc = tokenizer(TEXT * 2, return_tensors="pt", padding=True)
    ids = enc["input_ids"].to(device)
    labels = ids.masked_fill(enc["attention_mask"].to(device) == 0, -100)
    return {"input_ids": ids, "attention_mask": enc["attention_mask"].to(device), "labels": labels}


def test_qlora_loads_4bit_trains_the_adapter_and_reloads_it(base, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from train import peft_setup
    from train.hparams import validate
    from train.job import load_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    hp, _ = validate({"method": "deepspeed", "zero_stage": "2", "base_model": str(base), "peft": "qlora",
                      "attn_implementation": "sdpa"})
    peft_setup.check_qlora_device()
    device = torch.device("cuda", 0)
    torch.cuda.reset_peak_memory_stats(device)
    model, tokenizer, _, _ = load_model(hp, base, device)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 7 * model.config.num_hidden_layers, "every adapted projection is 4-bit"
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained), "only the adapters train"

    batch = _batch(tokenizer, device)
    opt = torch.optim.AdamW(trained.values(), lr=3e-3)
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        trained_logits = model(**batch).logits.float()

    adapter = peft_setup.adapter_state(model, model.state_dict())
    assert adapter and all("lora_" in k for k in adapter)
    size = peft_setup.save_adapter(model, adapter, tmp_path / "adapter", str(base))
    assert size < 0.5 * (base / "model.safetensors").stat().st_size  # r=16 on a 128-wide model: not tiny

    # A user's reload: the base in 4-bit again, plus the saved adapter -> the trained model's logits.
    base4 = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.bfloat16, device_map={"": 0},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16))
    reloaded = PeftModel.from_pretrained(base4, str(tmp_path / "adapter")).eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        again = reloaded(**batch).logits.float()
    assert torch.allclose(again, trained_logits, atol=2e-2, rtol=2e-2), (again - trained_logits).abs().max()

    # Merged into the full-precision base (what merge_adapter pushes): it learned the batch too.
    merged = peft_setup.merged_model(base, tmp_path / "adapter", model.config.vocab_size, torch.float32)
    with torch.no_grad():
        merged_loss = merged(**{k: v.cpu() for k, v in batch.items()}).loss.item()
    assert merged_loss < 0.8 * losses[0], (merged_loss, losses[0])
    print(f"qlora: loss {losses[0]:.3f} -> {losses[-1]:.3f}, merged fp32 {merged_loss:.3f}, adapter {size} B, "
          f"peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


def test_qlora_job_under_deepspeed_zero2_trains_and_writes_the_adapter(base, tmp_path):
    """The whole job as SageMaker runs it (train_entry.py under torchrun, one GPU), method deepspeed
    with ZeRO-2 and peft=qlora: the loss falls and the adapter is written."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("deepspeed")
    from .conftest import run_job, short_run_hps

    train = tmp_path / "train"
    train.mkdir()
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in zip(TEXT * 16, reversed(TEXT * 16))]
    (train / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    hps = short_run_hps(base, tmp_path, method="deepspeed", zero_stage=2, peft="qlora", data_format="chat_jsonl",
                        max_steps=30, max_seq_length=64, precision="bf16")
    job = run_job(tmp_path, hps, {"train": train}, nproc=1, timeout=400)
    assert job.rc == 0, job.output[-4000:]
    assert job.losses and job.losses[-1] < job.losses[0], job.losses
    adapter = job.model_dir / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    print(f"qlora deepspeed zero-2: losses {job.losses[0]:.3f} -> {job.losses[-1]:.3f}")
