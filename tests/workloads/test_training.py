"""End-to-end training jobs on the CPU: train_entry.py under torchrun, 2 processes over gloo, a tiny
Llama on 400 DailyDialog conversations, ~30 steps each."""
from __future__ import annotations

import json

import pytest

from .conftest import DONE_LINE, LOSS_LINE, run_job, short_run_hps


def assert_learned(job):
    assert job.rc == 0, job.output[-4000:]
    losses = job.losses
    assert len(losses) == 6, job.output[-2000:]
    # random init on a ~500-token vocabulary starts near ln(500) = 6.2; a few dozen steps must cut it
    assert losses[-1] < losses[0] - 0.5, losses
    assert DONE_LINE.search(job.output), job.output[-2000:]


def assert_generates(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (model_dir / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tok("<s>[INST] Hello, how are you? [/INST]", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    new = out[0, prompt["input_ids"].shape[1]:]
    assert len(new) > 0
    assert isinstance(tok.decode(new, skip_special_tokens=True), str)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_zero_trains_and_saves_loadable_model(tmp_path, tiny_base, chat_channels, prepared_channels,
                                                        stage):
    # ZeRO-1 reads data already prepared; ZeRO-2 prepares raw chat JSONL inside the job
    channels = prepared_channels if stage == 1 else chat_channels
    extra = {"add_special_tokens": "<|tool|>,<|end_tool|>", "per_device_batch_size": 1,
             "gradient_accumulation_steps": 2} if stage == 2 else {}
    job = run_job(tmp_path, short_run_hps(tiny_base, tmp_path, method="deepspeed", zero_stage=stage, **extra),
                  channels)
    assert ("[train] prepared train:" in job.output) == (stage == 2)
    assert_learned(job)
    if extra:  # the new tokens travel with the saved model: tokenizer and both embedding matrices
        from transformers import AutoConfig, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(job.model_dir)
        base = AutoConfig.from_pretrained(tiny_base)
        assert AutoConfig.from_pretrained(job.model_dir).vocab_size == base.vocab_size + 2 == len(tok)
        assert tok.convert_tokens_to_ids("<|end_tool|>") == base.vocab_size + 1
    assert f"method=deepspeed zero_stage={stage} world_size=2" in job.output
    summary = json.loads((job.model_dir / "training_summary.json").read_text())
    assert summary["steps"] == 30 and summary["world_size"] == 2
    assert summary["eval_loss"] is not None and summary["eval_loss"] < 6.0
    assert_generates(job.model_dir)
    if stage == 1:  # a restarted job (spot interruption) continues from the checkpoint directory
        again = run_job(tmp_path, short_run_hps(tiny_base, tmp_path, method="deepspeed", zero_stage=1,
                                                max_steps=40), channels)
        assert again.rc == 0, again.output[-3000:]
        assert "at step 30" in again.output
        assert [int(m.group(1)) for m in LOSS_LINE.finditer(again.output)] == [35, 40]
        assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-40"]


@pytest.mark.timeout(400)
def test_deepspeed_zero3_round_trips_base_model_and_output_through_s3(tmp_path, tiny_base, chat_channels,
                                                                        s3, s3_endpoint):
    s3.create_bucket(Bucket="models")
    for f in tiny_base.iterdir():
        s3.upload_file(str(f), "models", f"base/tiny/{f.name}")
    hps = short_run_hps("s3://models/base/tiny/", tmp_path, method="deepspeed", zero_stage=3,
                        output_s3_uri="s3://models/finetuned/run-1/", add_special_tokens="<|tool|>",
                        new_token_init="mean")
    job = run_job(tmp_path, hps, chat_channels, extra_env={"AWS_ENDPOINT_URL_S3": s3_endpoint})
    assert_learned(job)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="finetuned/run-1/")["Contents"]}
    for name in ("model.safetensors", "config.json", "tokenizer.json", "training_summary.json"):
        assert f"finetuned/run-1/{name}" in keys, keys
    # SageMaker tars SM_MODEL_DIR: only the summary goes there when the model is pushed to S3
    assert sorted(p.name for p in job.model_dir.iterdir()) == ["training_summary.json"]
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    for key in keys:
        s3.download_file("models", key, str(pulled / key.rsplit("/", 1)[1]))
    import safetensors.torch

    weights = safetensors.torch.load_file(str(pulled / "model.safetensors"))
    # ZeRO-3 partitions parameters; the pushed file must hold them whole and in 16 bit
    import torch
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(pulled)
    emb = weights["model.embed_tokens.weight"]
    assert emb.shape == (cfg.vocab_size, cfg.hidden_size) and emb.dtype == torch.bfloat16
    # the added token's rows were initialised (mean of the others) on partitioned parameters,
    # then trained: they must be finite and not left at zero
    assert cfg.vocab_size == AutoConfig.from_pretrained(tiny_base).vocab_size + 1
    assert torch.isfinite(emb[-1].float()).all() and emb[-1].float().abs().sum() > 0
    assert_generates(pulled)


@pytest.mark.timeout(300)
def test_smp_falls_back_to_fsdp_trains_and_resumes(tmp_path, tiny_base, chat_channels):
    opts = {"method": "smp", "gradient_checkpointing": "true", "per_device_batch_size": 1,
            "gradient_accumulation_steps": 2}
    job = run_job(tmp_path, short_run_hps(tiny_base, tmp_path, **opts), chat_channels)
    assert_learned(job)
    assert "method=smp world_size=2" in job.output
    # each optimizer step consumed 2 micro-batches of 1 row: 60 rows of this rank's share
    import re

    rows = int(re.search(r"rows_per_rank=(\d+)", job.output).group(1))
    last_epoch = float(list(LOSS_LINE.finditer(job.output))[-1].group(3))
    assert abs(last_epoch - 60 / rows) < 0.006, (last_epoch, rows)
    assert_generates(job.model_dir)
    # a restarted job (spot interruption) continues from the checkpoint directory
    again = run_job(tmp_path, short_run_hps(tiny_base, tmp_path, **dict(opts, max_steps=40)), chat_channels)
    assert again.rc == 0, again.output[-3000:]
    assert "resumed from" in again.output and "at step 30" in again.output
    steps = [int(m.group(1)) for m in LOSS_LINE.finditer(again.output)]
    assert steps == [35, 40]
    assert again.losses[-1] < job.losses[0] - 0.5
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-40"]
    # the Hugging Face Trainer ran the steps: its state is saved with the checkpoint and resumed from it
    trainer_state = json.loads((tmp_path / "checkpoints" / "step-40" / "trainer_state.json").read_text())
    assert trainer_state["global_step"] == 40


@pytest.mark.timeout(300)
def test_smp_on_its_own_loop_trains_and_resumes(tmp_path, tiny_base, chat_channels):
    """smp_loop=own: what a transformers older than 5.19 gets (its Trainer would wrap the sharded
    model in DDP), here forced."""
    opts = {"method": "smp", "smp_loop": "own", "per_device_batch_size": 1, "gradient_accumulation_steps": 2}
    job = run_job(tmp_path, short_run_hps(tiny_base, tmp_path, **opts), chat_channels)
    assert_learned(job)
    assert "method smp runs the job's own loop: smp_loop=own" in job.output
    assert_generates(job.model_dir)
    again = run_job(tmp_path, short_run_hps(tiny_base, tmp_path, **dict(opts, max_steps=40)), chat_channels)
    assert again.rc == 0, again.output[-3000:]
    assert "at step 30" in again.output
    assert [int(m.group(1)) for m in LOSS_LINE.finditer(again.output)] == [35, 40]
    assert not (tmp_path / "checkpoints" / "step-40" / "trainer_state.json").exists()  # no Trainer ran


@pytest.mark.timeout(200)
def test_missing_s3_base_model_fails_the_job_with_a_clear_reason(tmp_path, chat_channels, s3, s3_endpoint):
    s3.create_bucket(Bucket="empty-models")
    hps = short_run_hps("s3://empty-models/nothing-here/", tmp_path, method="smp")
    job = run_job(tmp_path, hps, chat_channels, extra_env={"AWS_ENDPOINT_URL_S3": s3_endpoint})
    assert job.rc != 0
    failure = job.failure.strip()
    assert failure.startswith("training failed on rank 0: S3SyncError: ") and "\n" not in failure
    assert "nothing-here" in failure
