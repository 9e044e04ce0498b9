"""Jobs and endpoints run in the environment of the image they name (llama_operator/plan/image_profiles.json),
not in the service's own: a package the image lacks is missing here too, and an image with no
profile is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from sagemaker_helpers import BUCKET, TRAINING_IMAGE, source_tar, training_request, unique, wait_job
from llama_operator import paths
from llama_operator.artifacts import training_source
from llama_operator.plan import images
from llama_operator.local.sagemaker import imageenv

PROFILES = imageenv.load_profiles()


def test_every_default_image_has_a_profile_with_its_sources():
    for uri in (images.training_image_uri("us-east-1", "deepspeed"), images.training_image_uri("us-east-1", "smp"),
                images.lmi_image_uri("us-east-1")):
        profile = imageenv.profile_for(uri, PROFILES)
        assert profile.packages["torch"], uri
        for package, version in profile.packages.items():
            if version not in (None, "unknown"):
                assert profile.raw["sources"].get(package, "").startswith("https://"), (profile.name, package)


def test_an_image_without_a_profile_is_refused_naming_the_image():
    with pytest.raises(imageenv.UnknownImage, match=r"no profile for image '123.dkr.ecr.us-east-1.amazonaws.com/x/my-own:1'.*--image-profiles"):
        imageenv.profile_for("123.dkr.ecr.us-east-1.amazonaws.com/x/my-own:1", PROFILES)
    assert imageenv.split_image("1.dkr.ecr.r.amazonaws.com/pytorch-training:2.8.0-gpu-py312") == \
        ("pytorch-training", "2.8.0-gpu-py312")


def test_the_environment_installs_the_images_versions_and_says_what_differs():
    smp = imageenv.profile_for(images.training_image_uri("us-east-1", "smp"), PROFILES)
    reqs, diffs = imageenv.install_plan(smp)
    assert f"transformers=={smp.packages['transformers']}" in reqs
    assert not any(r.startswith(("deepspeed", "vllm", "flash-attn")) for r in reqs)
    assert any("torch.sagemaker" in d for d in diffs)
    dlc = imageenv.profile_for(images.training_image_uri("us-east-1", "deepspeed"), PROFILES)
    reqs, _ = imageenv.install_plan(dlc)
    assert "torch==2.8.0" in reqs and not any(r.startswith("transformers") for r in reqs)


def test_create_training_job_refuses_an_image_it_has_no_profile_for(sm, s3):
    source = source_tar(s3, {"train.py": "print('hi')\n"}, f"src/{unique('np')}.tar.gz")
    req = training_request(unique("noprofile"), source)
    req["AlgorithmSpecification"]["TrainingImage"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mine:1"
    with pytest.raises(ClientError) as err:
        sm.create_training_job(**req)
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "TrainingImage" in str(err.value) and "mine:1" in str(err.value)


def test_a_job_runs_in_its_images_python_not_the_services(sm, s3, stack):
    script = ("import json, sys, importlib.util\n"
              "print('REPORT=' + json.dumps({'exe': sys.executable,"
              " 'transformers': importlib.util.find_spec('transformers') is not None}, separators=(',', ':')))\n")
    source = source_tar(s3, {"train.py": script}, f"src/{unique('which')}.tar.gz")
    name = unique("which")
    sm.create_training_job(**training_request(name, source))
    d = wait_job(sm, name, timeout=300)
    assert d["TrainingJobStatus"] == "Completed", d.get("FailureReason")
    report = _report(stack, name)
    assert Path(report["exe"]).parent.parent.name.startswith("pytorch-training-2.8.0-")
    assert report["transformers"] is False  # the PyTorch training image has no transformers


def test_deepspeed_job_without_its_requirements_fails_naming_the_missing_package(sm, s3, tmp_path):
    """The real training source, packed as the operator packs it but without requirements.txt: in the
    PyTorch training image the job dies at import, as it would on AWS."""
    body = training_source.pack(paths.workloads_dir())  # no requirements.txt at the root
    key = f"src/{unique('noreq')}.tar.gz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    name = unique("noreq")
    data = f"data/{name}/train.jsonl"
    s3.put_object(Bucket=BUCKET, Key=data, Body=b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    req = training_request(name, f"s3://{BUCKET}/{key}", entry="train_entry.py",
                           hyperparameters={"method": "deepspeed", "base_model": f"s3://{BUCKET}/none/",
                                            "sagemaker_torch_distributed_enabled": True},
                           InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
                               "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/{name}/"}}}])
    req["AlgorithmSpecification"]["TrainingImage"] = TRAINING_IMAGE
    sm.create_training_job(**req)
    d = wait_job(sm, name, timeout=300)
    assert d["TrainingJobStatus"] == "Failed"
    reason = d["FailureReason"]
    lacking = [line.split("==")[0] for line in
               (paths.workloads_dir() / "requirements" / "deepspeed.txt").read_text().splitlines()
               if line and not line.startswith("#")]
    named = [p for p in lacking if f"No module named '{p.replace('-', '_')}" in reason or f"{p} not found" in reason]
    assert named, (reason, lacking)


def _report(stack, name: str) -> dict:
    text = (stack.state_dir / "training-jobs" / name / "logs" / "algo-1.log").read_text(errors="replace")
    line = next(ln for ln in text.splitlines() if ln.startswith("REPORT="))
    return json.loads(line[len("REPORT="):])


def test_lmi_front_end_reads_serving_properties_then_option_variables(tmp_path):
    from llama_operator.local.sagemaker.container import lmi_frontend

    (tmp_path / "serving.properties").write_text(
        "engine=Python\noption.entryPoint=model.py\noption.model_id=s3://b/m/\nbatch_size=4\n"
        "option.max_rolling_batch_size=8\n")
    props = lmi_frontend.configuration(tmp_path, {"OPTION_MAX_ROLLING_BATCH_SIZE": "16", "OPTION_DTYPE": "fp32",
                                                  "PATH": "/bin"})
    assert props["option.max_rolling_batch_size"] == "16"  # the container variable wins, as in LMI
    assert props["option.dtype"] == "fp32" and props["batch_size"] == "4"
    assert lmi_frontend.configuration(tmp_path, {"OPTION_ENTRYPOINT": "other.py"})["option.entryPoint"] == "other.py"
    handed = lmi_frontend.handler_properties(props, tmp_path)
    assert handed["entryPoint"] == "model.py" and handed["model_dir"] == str(tmp_path)
    assert "option.dtype" not in handed and handed["dtype"] == "fp32"


def test_lmi_front_end_gives_a_batch_one_status_and_each_request_its_own_body(monkeypatch):
    from llama_operator.local.sagemaker.container import djl_python, lmi_frontend

    def handle(inputs):
        out = djl_python.Output()
        for i, item in enumerate(inputs.get_batches()):
            body = item.get_as_json()
            out.add_as_json({"echo": body["n"]} if "n" in body else {"code": 400, "error": "n missing"},
                            batch_index=i)
        return out

    monkeypatch.setitem(sys.modules, "djl_python", djl_python)  # as the image's environment has it
    batcher = lmi_frontend.Batcher(handle, {}, batch_size=4, max_delay_ms=200)
    futures = [batcher.submit(json.dumps(b).encode(), "application/json") for b in ({"n": 1}, {}, {"n": 3})]
    answers = [f.result(10) for f in futures]
    assert [json.loads(a[2]) for a in answers] == [{"echo": 1}, {"code": 400, "error": "n missing"}, {"echo": 3}]
    assert {a[0] for a in answers} == {200}  # DJL applies the batch's one code to every request
