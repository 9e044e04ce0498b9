"""Where the operator puts the training source, and the setting that says so."""

import hashlib

import pytest

from llama_operator.artifacts import endpoint_code, training_source
from llama_operator.settings import Settings

DIGEST = hashlib.sha256(b"workloads").hexdigest()


@pytest.mark.parametrize("prefix, expected", [
    # the stack's SourceS3Uri output and manifests/settings.yaml's value: one source/, at the root
    ("s3://llama-operator-111122223333/", f"s3://llama-operator-111122223333/source/{DIGEST}.tar.gz"),
    ("s3://llama-operator-111122223333", f"s3://llama-operator-111122223333/source/{DIGEST}.tar.gz"),
    ("s3://bucket/ops", f"s3://bucket/ops/source/{DIGEST}.tar.gz"),
    ("s3://bucket/ops/", f"s3://bucket/ops/source/{DIGEST}.tar.gz"),
    ("s3://bucket/team/ops//", f"s3://bucket/team/ops/source/{DIGEST}.tar.gz"),
])
def test_source_uri_has_one_layout(prefix, expected):
    assert training_source.source_uri(prefix, DIGEST) == expected
    assert "source/source" not in expected


def test_endpoint_code_goes_beside_the_source():
    code = endpoint_code.code_prefix("s3://llama-operator-111122223333/", {"serving.properties": "x"})
    assert code.startswith("s3://llama-operator-111122223333/endpoint-code/") and code.endswith("/")
    assert code.count("//") == 1  # only the scheme's


def test_source_uri_rejects_what_is_not_s3():
    with pytest.raises(ValueError, match="s3://"):
        training_source.source_uri("https://bucket/x", DIGEST)


AWS = {"AWS_REGION": "eu-west-1"}  # no endpoint override: boto3 talks to AWS


def test_the_source_prefix_is_required_against_aws():
    with pytest.raises(ValueError) as exc:
        Settings.from_env(AWS)
    message = str(exc.value)
    assert "LLAMA_OPERATOR_SOURCE_S3_URI" in message and "--source-s3-uri" in message
    assert "SourceS3Uri" in message  # says where the value comes from


def test_the_source_prefix_from_the_environment():
    env = {**AWS, "LLAMA_OPERATOR_SOURCE_S3_URI": "s3://llama-operator-111122223333/"}
    assert Settings.from_env(env).source_s3_uri == "s3://llama-operator-111122223333/"


def test_the_flag_is_enough():
    settings = Settings.from_env(AWS, source_s3_uri="s3://llama-operator-111122223333/")
    assert settings.source_s3_uri == "s3://llama-operator-111122223333/"


@pytest.mark.parametrize("endpoint", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_the_embedded_default_may_leave_it_out(endpoint):
    # llama-operator demo and the tests run the operator with the local services' endpoints
    assert Settings.from_env({**AWS, endpoint: "http://127.0.0.1:5000"}).source_s3_uri is None


def test_ignored_endpoint_overrides_mean_aws():
    env = {**AWS, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:5000", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}
    with pytest.raises(ValueError, match="LLAMA_OPERATOR_SOURCE_S3_URI"):
        Settings.from_env(env)


@pytest.mark.parametrize("bad", ["llama-operator-111122223333/", "s3://", "s3:///source/", "https://b/x"])
def test_a_malformed_source_prefix_is_refused_at_startup(bad):
    with pytest.raises(ValueError, match="s3://bucket"):
        Settings.from_env({**AWS, "LLAMA_OPERATOR_SOURCE_S3_URI": bad})


def test_llama_operator_run_stops_at_once_and_says_what_to_set(monkeypatch, capsys):
    from llama_operator import runner

    for key in ("LLAMA_OPERATOR_SOURCE_S3_URI", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    assert runner.main(["--all-namespaces", "--standalone"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("llama-operator run: ") and "LLAMA_OPERATOR_SOURCE_S3_URI" in out


def test_a_qlora_job_installs_bitsandbytes_beside_its_methods_requirements():
    from llama_operator.artifacts.training_source import requirements_for
    from llama_operator.paths import workloads_dir

    plain = requirements_for(workloads_dir(), "deepspeed")["requirements.txt"].decode()
    qlora = requirements_for(workloads_dir(), "deepspeed", "qlora")["requirements.txt"].decode()
    assert "deepspeed==" in plain and "bitsandbytes" not in plain
    assert qlora.startswith(plain) and "\nbitsandbytes==" in qlora
    assert requirements_for(workloads_dir(), "deepspeed", "lora") == {"requirements.txt": plain.encode()}
