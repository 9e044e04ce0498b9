"""Bad hyperparameters fail the job at start with one line naming the parameter, on stderr and in
SageMaker's failure file."""
from __future__ import annotations

import subprocess
import sys

import pytest

from train.hparams import HyperparameterError, parse_argv, validate

from .conftest import WORKLOADS, job_env


@pytest.mark.parametrize("hps, expected", [
    ({"method": "megatron"}, "invalid hyperparameter method=megatron: must be deepspeed or smp"),
    ({"method": "deepspeed", "zero_stage": "4"}, "invalid hyperparameter zero_stage=4: must be 1, 2 or 3"),
    ({"method": "smp", "learning_rate": "-1e-5"}, "invalid hyperparameter learning_rate=-1e-5: must be a number > 0"),
])
def test_bad_hyperparameter_fails_at_start_with_one_line(tmp_path, tiny_base, chat_channels, hps, expected):
    args = [a for k, v in {"base_model": str(tiny_base), **hps}.items() for a in (f"--{k}", v)]
    proc = subprocess.run([sys.executable, str(WORKLOADS / "train_entry.py"), *args], cwd=tmp_path,
                          env=job_env(tmp_path, chat_channels), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == expected
    assert (tmp_path / "output" / "failure").read_text().strip() == expected


def test_missing_train_channel_fails_at_start(tmp_path, tiny_base, chat_channels):
    channels = {"validation": chat_channels["validation"]}
    proc = subprocess.run([sys.executable, str(WORKLOADS / "train_entry.py"), "--method", "deepspeed",
                           "--base_model", str(tiny_base)], cwd=tmp_path, env=job_env(tmp_path, channels),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    failure = (tmp_path / "output" / "failure").read_text().strip()
    assert failure == ("invalid hyperparameter train channel=missing: give the job a 'train' input channel "
                       "(SM_CHANNEL_TRAIN)")
    assert proc.stderr.strip().splitlines()[-1] == failure


def test_arguments_parse_as_the_toolkit_passes_them():
    assert parse_argv(["--method", "smp", "--packing=false", "--add_special_tokens", "", "--epochs", "2"]) == {
        "method": "smp", "packing": "false", "add_special_tokens": "", "epochs": "2"}


def test_defaults_follow_the_contract():
    hp, unknown = validate({"method": "deepspeed", "base_model": "s3://b/p/", "sagemaker_program": "x",
                            "learning_rat": "1"})
    assert (hp.zero_stage, hp.learning_rate, hp.precision, hp.packing, hp.lr_scheduler) == (3, 2e-5, "bf16", True, "cosine")
    assert (hp.warmup_ratio, hp.max_seq_length, hp.new_token_init, hp.add_special_tokens) == (0.03, 2048, "normal", ())
    assert unknown == ["learning_rat"]


@pytest.mark.parametrize("name, value", [
    ("warmup_ratio", "1"), ("max_seq_length", "8"), ("per_device_batch_size", "0"), ("packing", "maybe"),
    ("precision", "fp8"), ("output_s3_uri", "/local"), ("max_steps", "0"), ("epochs", "nan"),
    ("add_special_tokens", "<a>,<a>"), ("weight_decay", "-0.1"), ("lr_scheduler", "step"),
    ("torch_compile", "reduce-overhead"),
])
def test_each_bad_value_names_its_parameter(name, value):
    with pytest.raises(HyperparameterError) as err:
        validate({"method": "deepspeed", "base_model": "/m", name: value})
    assert str(err.value).startswith(f"invalid hyperparameter {name}={value}: ")
    assert "\n" not in str(err.value)


def test_arguments_as_the_sagemaker_training_toolkit_renders_them():
    """The toolkit JSON-decodes each hyperparameter (so "true" arrives as True, "3" as 3) and
    renders them with its own mapping; the result must validate to the same values."""
    from sagemaker_training import mapping

    decoded = {"method": "deepspeed", "base_model": "s3://b/p/", "zero_stage": 2, "packing": True,
               "gradient_checkpointing": False, "output_s3_uri": "", "learning_rate": 1e-4,
               "add_special_tokens": "<a>,<b>", "epochs": 2, "max_steps": -1}
    hp, unknown = validate(parse_argv(mapping.to_cmd_args(decoded)))
    assert unknown == []
    assert (hp.zero_stage, hp.packing, hp.gradient_checkpointing, hp.output_s3_uri) == (2, True, False, "")
    assert (hp.learning_rate, hp.add_special_tokens, hp.epochs, hp.max_steps) == (1e-4, ("<a>", "<b>"), 2.0, -1)


@pytest.mark.parametrize("hps, expected", [
    ({"method": "deepspeed", "zero_stage": "1"}, {"fused_kernels": True, "compile": True}),
    ({"method": "smp"}, {"fused_kernels": True, "compile": True}),
    # ZeRO-3 shards lm_head: the fused loss would read an empty shard, and hooks break compiled graphs
    ({"method": "deepspeed", "zero_stage": "3"}, {"fused_kernels": False, "compile": False}),
    ({"method": "deepspeed", "zero_stage": "2", "gradient_checkpointing": "true"}, {"fused_kernels": True, "compile": False}),
    ({"method": "deepspeed", "zero_stage": "3", "torch_compile": "on"}, {"fused_kernels": False, "compile": True}),
    ({"method": "deepspeed", "zero_stage": "2", "torch_compile": "max-autotune-no-cudagraphs"},
     {"fused_kernels": True, "compile": "max-autotune-no-cudagraphs"}),
    ({"method": "smp", "torch_compile": "off"}, {"fused_kernels": True, "compile": False}),
])
def test_gpu_fast_path_follows_the_method(hps, expected):
    from train.job import fast_path_options

    hp, _ = validate({"base_model": "/m", **hps})
    assert fast_path_options(hp) == expected
