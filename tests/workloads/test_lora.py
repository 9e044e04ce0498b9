"""LoRA through PEFT: end-to-end jobs on the CPU (train_entry.py under torchrun, 2 processes) under
DeepSpeed ZeRO-2, ZeRO-3 and smp (FSDP), checked against the base model reloaded with the saved
adapter; plus the new hyperparameters and the fast path's LoRA-awareness."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from train.hparams import LLAMA_PROJECTIONS, HyperparameterError, validate

from .conftest import WORKLOADS, LOSS_LINE, job_env, run_job, short_run_hps

PROBE = "LLAMA_TRAIN_LOGITS_PROBE"


@pytest.fixture(scope="module")
def lora_base(tiny_base, tmp_path_factory):
    """The tiny base with a 10x lm_head. Freshly initialised (std 0.02) behind a frozen final norm,
    its logits span about 0.2, so no adapter on the projections could move the loss; a trained
    model's span tens."""
    import shutil

    import safetensors.torch

    out = tmp_path_factory.mktemp("lora-base") / "tiny-llama"
    shutil.copytree(tiny_base, out)
    weights = safetensors.torch.load_file(str(out / "model.safetensors"))
    weights["lm_head.weight"] = weights["lm_head.weight"] * 10
    safetensors.torch.save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def lora_hps(base, tmp_path, **overrides):
    # LoRA trains ~10% of this tiny model's weights: a higher rate than the full fine-tune's
    return short_run_hps(base, tmp_path, peft="lora", lora_r=8, learning_rate=1e-2, **overrides)


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def base_with_adapter(lora_base, adapter_dir, vocab: int):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(lora_base, dtype=torch.float32)
    base.resize_token_embeddings(vocab, mean_resizing=False)  # rows of new tokens come from the adapter
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def check_adapter(job, lora_base, adapter_dir, probe, *, tol: float | None,
                  first_loss: float | None = None) -> dict:
    """Loss fell, only the (small) adapter was saved, and base + adapter reproduce the trained
    model's logits while the base alone does not."""
    import safetensors.torch
    import torch

    assert job.rc == 0, job.output[-4000:]
    losses = job.losses
    first = first_loss if first_loss is not None else losses[0]  # a resumed job: the first job's
    assert len(losses) >= 2 and losses[-1] < first - 0.5, (first, losses)
    files = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "training_summary.json"} <= files
    assert not any(n.startswith("model") for n in files), files
    summary = json.loads((adapter_dir / "training_summary.json").read_text())
    base_bytes = (lora_base / "model.safetensors").stat().st_size
    assert summary["adapter_bytes"] == (adapter_dir / "adapter_model.safetensors").stat().st_size
    assert summary["adapter_bytes"] < base_bytes / 4, (summary["adapter_bytes"], base_bytes)
    weights = safetensors.torch.load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert weights and all("lora_" in k or "trainable_tokens" in k for k in weights), list(weights)
    assert summary["trainable_parameters"] == sum(w.numel() for w in weights.values())
    trained = torch.load(probe)
    ids, want = trained["input_ids"], trained["logits"]
    model = base_with_adapter(lora_base, adapter_dir, want.shape[-1])
    got = logits(model, ids)
    with model.disable_adapter():
        plain = logits(model, ids)
    moved = (plain - want).abs()
    if tol:  # fp32 training: the same numbers up to summation order
        # a real check: the adapter moves the logits far more than the tolerance allowed here
        assert moved.max() > 1000 * tol, moved.max()
        assert (got - want).abs().max() < tol, (got - want).abs().max()
    else:  # bf16 training, where near-tied attention scores can round either way at single tokens
        assert (got - want).abs().mean() < 0.05 * moved.mean(), ((got - want).abs().mean(), moved.mean())
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9
    return summary


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lora_zero2_bf16_with_new_tokens_saves_adapter_and_resumes(tmp_path, lora_base, chat_channels):
    hps = lora_hps(lora_base, tmp_path, method="deepspeed", zero_stage=2, save_steps=20,
                   add_special_tokens="<|tool|>,<|end_tool|>")
    job = run_job(tmp_path, hps, chat_channels, extra_env={PROBE: str(tmp_path / "probe.pt")})
    summary = check_adapter(job, lora_base, job.model_dir / "adapter", tmp_path / "probe.pt", tol=None)
    assert summary["outputs"] == ["adapter"] and summary["peft"] == "lora"
    assert sorted(p.name for p in job.model_dir.iterdir()) == ["adapter", "training_summary.json"]
    config = json.loads((job.model_dir / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(lora_base) and config["r"] == 8
    assert sorted(config["target_modules"]) == sorted(LLAMA_PROJECTIONS)
    # the frozen base stays out of the checkpoint: it is the base_model's, loaded afresh on restart
    ckpt = sum(f.stat().st_size for f in (tmp_path / "checkpoints" / "step-30").rglob("*model_states.pt"))
    assert ckpt < (lora_base / "model.safetensors").stat().st_size / 2
    again = run_job(tmp_path, dict(hps, max_steps=40), chat_channels)
    assert again.rc == 0, again.output[-3000:]
    assert "at step 30" in again.output
    assert [int(m.group(1)) for m in LOSS_LINE.finditer(again.output)] == [35, 40]
    assert again.losses[-1] < job.losses[0] - 0.5  # adapter and optimizer came back, not a fresh adapter


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lora_zero3_merges_and_pushes_adapter_and_model_to_s3(tmp_path, lora_base, chat_channels, s3,
                                                               s3_endpoint):
    import torch
    from transformers import AutoModelForCausalLM

    s3.create_bucket(Bucket="lora")
    hps = lora_hps(lora_base, tmp_path, method="deepspeed", zero_stage=3, precision="fp32", merge_adapter="true",
                   output_s3_uri="s3://lora/run/model/", adapter_s3_uri="s3://lora/run/adapter/")
    job = run_job(tmp_path, hps, chat_channels,
                  extra_env={PROBE: str(tmp_path / "probe.pt"), "AWS_ENDPOINT_URL_S3": s3_endpoint})
    assert job.rc == 0, job.output[-4000:]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="lora", Prefix="run/")["Contents"]}
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "training_summary.json"):
        assert f"run/adapter/{name}" in keys, keys
    for name in ("model.safetensors", "config.json", "tokenizer.json", "training_summary.json"):
        assert f"run/model/{name}" in keys, keys
    assert sorted(p.name for p in job.model_dir.iterdir()) == ["training_summary.json"]
    pulled = {}
    for part in ("adapter", "model"):
        pulled[part] = tmp_path / "pulled" / part
        pulled[part].mkdir(parents=True)
        for key in keys:
            if key.startswith(f"run/{part}/"):
                s3.download_file("lora", key, str(pulled[part] / key.rsplit("/", 1)[1]))
    summary = check_adapter(job, lora_base, pulled["adapter"], tmp_path / "probe.pt", tol=1e-4)
    assert summary["outputs"] == ["adapter", "model"]
    config = json.loads((pulled["adapter"] / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(lora_base)
    ids = torch.load(tmp_path / "probe.pt")["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(pulled["model"], dtype=torch.float32).eval()
    reference = base_with_adapter(lora_base, pulled["adapter"], merged.config.vocab_size)
    assert (logits(merged, ids) - logits(reference, ids)).abs().max() < 1e-4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lora_smp_trainer_then_own_loop_resumes_the_adapter(tmp_path, lora_base, chat_channels):
    hps = lora_hps(lora_base, tmp_path, method="smp", precision="fp32", per_device_batch_size=1,
                   gradient_accumulation_steps=2, add_special_tokens="<|tool|>")
    job = run_job(tmp_path, hps, chat_channels, extra_env={PROBE: str(tmp_path / "probe.pt")})
    assert "runs the job's own loop" not in job.output  # the Trainer ran it
    summary = check_adapter(job, lora_base, job.model_dir / "adapter", tmp_path / "probe.pt", tol=1e-4)
    assert summary["outputs"] == ["adapter"] and summary["method"] == "smp"
    # the restart runs the job's own loop from the Trainer's checkpoint: same adapter, same optimizer
    again = run_job(tmp_path, dict(hps, max_steps=40, smp_loop="own"), chat_channels,
                    extra_env={PROBE: str(tmp_path / "probe2.pt")})
    assert "at step 30" in again.output, again.output[-3000:]
    assert [int(m.group(1)) for m in LOSS_LINE.finditer(again.output)] == [35, 40]
    check_adapter(again, lora_base, again.model_dir / "adapter", tmp_path / "probe2.pt", tol=1e-4,
                  first_loss=job.losses[0])


# --------------------------------------------------------------------------- hyperparameters


def test_peft_defaults():
    hp, unknown = validate({"method": "deepspeed", "base_model": "s3://b/p/"})
    assert (hp.peft, hp.lora_r, hp.lora_alpha, hp.lora_dropout) == ("none", 16, 32, 0.0)
    assert hp.lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert (hp.merge_adapter, hp.adapter_s3_uri, unknown) == (False, "", [])
    hp, _ = validate({"method": "smp", "base_model": "/m", "peft": "LoRA", "lora_r": "64", "lora_alpha": "128",
                      "lora_dropout": "0", "lora_target_modules": " q_proj, v_proj ", "merge_adapter": "true",
                      "adapter_s3_uri": "s3://b/job/adapter/"})
    assert (hp.peft, hp.lora_r, hp.lora_alpha, hp.lora_dropout) == ("lora", 64, 128, 0.0)
    assert (hp.lora_target_modules, hp.merge_adapter, hp.adapter_s3_uri) == (("q_proj", "v_proj"), True,
                                                                          "s3://b/job/adapter/")


@pytest.mark.parametrize("name, value", [
    ("peft", "dora"), ("lora_r", "0"), ("lora_r", "257"), ("lora_r", "8.5"), ("lora_alpha", "0"),
    ("lora_dropout", "1"), ("lora_dropout", "-0.1"), ("lora_target_modules", ""),
    ("lora_target_modules", "q_proj,q_proj"), ("lora_target_modules", "q proj"), ("merge_adapter", "maybe"),
    ("adapter_s3_uri", "/local/adapter"),
])
def test_each_bad_peft_value_names_its_parameter(name, value):
    with pytest.raises(HyperparameterError) as err:
        validate({"method": "deepspeed", "base_model": "/m", "peft": "lora", name: value})
    assert str(err.value).startswith(f"invalid hyperparameter {name}={value}: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("hps, expected", [
    ({"method": "smp", "peft": "qlora"}, "invalid hyperparameter peft=qlora: qlora is not supported with method smp"),
    ({"method": "deepspeed", "peft": "qlora"},
     "invalid hyperparameter peft=qlora: qlora is not supported with zero_stage 3"),
    ({"method": "deepspeed", "merge_adapter": "true"},
     "invalid hyperparameter merge_adapter=true: applies only with peft=lora or qlora"),
])
def test_unsupported_peft_combinations_are_refused(hps, expected):
    with pytest.raises(HyperparameterError) as err:
        validate({"base_model": "/m", **hps})
    assert str(err.value).startswith(expected)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU refusal")
def test_qlora_on_a_cpu_fails_at_start_naming_peft(tmp_path, lora_base, chat_channels):
    args = ["--method", "deepspeed", "--zero_stage", "2", "--peft", "qlora", "--base_model", str(lora_base)]
    proc = subprocess.run([sys.executable, str(WORKLOADS / "train_entry.py"), *args], cwd=tmp_path,
                          env=job_env(tmp_path, chat_channels), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("invalid hyperparameter peft=qlora: qlora needs a CUDA GPU: ")
    assert "use peft=lora or a GPU instance type" in line
    assert (tmp_path / "output" / "failure").read_text().strip() == line


# --------------------------------------------------------------------------- fast path, sharding


def _tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))


def test_fused_kernels_keep_lora_in_the_path():
    """Liger's SwiGLU calls the (adapted) projections as modules, so it stays; its fused linear
    cross-entropy reads lm_head.weight directly, so it is off whenever anything wraps lm_head."""
    from peft import LoraConfig, get_peft_model

    from train import fastpath

    plain = fastpath.liger_options(_tiny_llama())
    assert plain["fused_linear_cross_entropy"] and plain["swiglu"]
    lora = get_peft_model(_tiny_llama(), LoraConfig(r=4, target_modules=list(LLAMA_PROJECTIONS)))
    base = fastpath.unwrap(lora)
    assert base is lora.get_base_model() and type(base.model.layers[0].mlp.gate_proj).__name__ == "Linear"
    assert hasattr(base.model.layers[0].mlp.gate_proj, "lora_A")  # the module liger's SwiGLU calls
    assert fastpath.liger_options(base) == plain  # lm_head untouched: the fused loss is exact
    tokens = get_peft_model(_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"],
                                                      trainable_token_indices={"embed_tokens": [62, 63],
                                                                               "lm_head": [62, 63]}))
    assert not fastpath.liger_options(fastpath.unwrap(tokens))["fused_linear_cross_entropy"]
    head = get_peft_model(_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    assert not fastpath.liger_options(fastpath.unwrap(head))["fused_linear_cross_entropy"]
    assert fastpath.liger_options(base, compile=True)["swiglu"] is False  # inductor fuses in compiled layers


def test_fsdp_shards_each_decoder_layer_under_peft_and_optimizes_only_adapters():
    from peft import LoraConfig, get_peft_model

    from train.backends import _decoder_layers, _optimizer

    model = get_peft_model(_tiny_llama(), LoraConfig(r=4, target_modules=list(LLAMA_PROJECTIONS)))
    assert len(_decoder_layers(model)) == 2
    hp, _ = validate({"method": "smp", "base_model": "/m", "peft": "lora"})
    import torch

    opt = _optimizer(model, hp, torch.device("cpu"))
    params = [p for g in opt.param_groups for p in g["params"]]
    trained = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == len(trained) and all(p.requires_grad for p in params)
