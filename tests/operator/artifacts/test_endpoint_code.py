"""The serving renderer is loaded from workloads/serve/lmi.py; handlers do so from worker threads."""

import sys
import threading

from llama_operator.artifacts import endpoint_code

NAME = "_llama_operator_workloads_serve_lmi"


def test_threads_loading_the_renderer_at_once_all_get_a_whole_module(tmp_path, monkeypatch):
    # A renderer that takes a while to run its module body, so the other threads arrive mid-load.
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "lmi.py").write_text("import time\ntime.sleep(0.3)\n\ndef render_artifacts():\n    return {}\n")
    monkeypatch.setenv("LLAMA_OPERATOR_WORKLOADS_DIR", str(tmp_path))
    monkeypatch.delitem(sys.modules, NAME, raising=False)
    start = threading.Barrier(4)
    seen, errors = [], []

    def load(delay):
        start.wait()
        threading.Event().wait(delay)
        try:
            seen.append(endpoint_code._lmi_module().render_artifacts)
        except Exception as exc:  # noqa: BLE001 - the test reports whatever a thread hit
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(0.1 * i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.delitem(sys.modules, NAME, raising=False)  # the next user loads the real renderer
    assert not errors
    assert len(set(seen)) == 1  # one load, shared by every thread


def test_lmi_settings_translate_the_planners_knobs():
    batching = endpoint_code.lmi_settings("batching", {"dtype": "fp32", "max_new_tokens": 8, "max_batch_size": 4,
                                                       "max_wait_ms": 5, "tensor_parallel_degree": "max"})
    assert batching == {"dtype": "fp32", "max_new_tokens": 8, "max_rolling_batch_size": 4, "max_wait_ms": 5}
    vllm = endpoint_code.lmi_settings("vllm", {"dtype": "bf16", "max_new_tokens": 256, "tensor_parallel_degree": 4,
                                               "max_rolling_batch_size": 64, "max_model_len": 4096})
    assert vllm == {"dtype": "bf16", "tensor_parallel_degree": 4, "max_rolling_batch_size": 64, "max_model_len": 4096}


def test_rendered_code_points_at_the_model_and_is_content_addressed():
    files = endpoint_code.render("batching", "s3://bkt/out/job/model/", {"dtype": "fp32", "max_batch_size": 4})
    assert "option.model_id=s3://bkt/out/job/model/" in files["serving.properties"]
    again = endpoint_code.render("batching", "s3://bkt/out/job/model/", {"dtype": "fp32", "max_batch_size": 4})
    other = endpoint_code.render("batching", "s3://bkt/out/job2/model/", {"dtype": "fp32", "max_batch_size": 4})
    assert endpoint_code.code_prefix("s3://ops/x", files) == endpoint_code.code_prefix("s3://ops/x/", again)
    assert endpoint_code.code_prefix("s3://ops/x", files) != endpoint_code.code_prefix("s3://ops/x", other)


def test_vllm_adapters_are_copied_into_the_code_prefix_where_lmi_loads_them():
    adapters = {"b": "s3://data/ft-b/adapter/", "a": "s3://data/ft-a/adapter"}
    files = endpoint_code.render("vllm", "s3://data/base/", {"dtype": "bf16", "max_lora_rank": 16}, adapters)
    prefix = endpoint_code.code_prefix("s3://ops/llama-operator", files)
    copies = endpoint_code.adapter_copies("vllm", prefix, adapters)
    assert copies == [(f"s3://data/ft-{n}/adapter/{f}", f"{prefix}adapters/{n}/{f}")
                      for n in ("a", "b") for f in ("adapter_config.json", "adapter_model.safetensors")]
    assert "option.enable_lora=true" in files["serving.properties"]
    # another adapter source is another code prefix: the endpoint rolls out to it
    moved = endpoint_code.render("vllm", "s3://data/base/", {"dtype": "bf16", "max_lora_rank": 16},
                                 {**adapters, "b": "s3://data/ft-b2/adapter/"})
    assert endpoint_code.code_prefix("s3://ops/llama-operator", moved) != prefix
    # the batching engine pulls adapters from their own prefixes
    assert endpoint_code.adapter_copies("batching", prefix, adapters) == []


def test_vllm_takes_its_next_lora_rank_and_no_default_adapter():
    vllm = endpoint_code.lmi_settings("vllm", {"max_lora_rank": 20, "default_adapter": "a"})
    assert vllm == {"max_lora_rank": 32}
    batching = endpoint_code.lmi_settings("batching", {"max_lora_rank": 20, "default_adapter": "a"})
    assert batching == {"max_lora_rank": 20, "default_adapter": "a"}


def _s3():
    import botocore.session

    return botocore.session.get_session().create_client("s3", region_name="us-east-1", aws_access_key_id="x",
                                                        aws_secret_access_key="y")


def test_copies_only_what_is_missing_and_names_a_missing_source():
    import pytest
    from botocore.stub import Stubber

    from llama_operator.artifacts.upload import copy_missing

    s3 = _s3()
    copies = [("s3://data/a/adapter_config.json", "s3://ops/code/adapters/a/adapter_config.json"),
              ("s3://data/a/adapter_model.safetensors", "s3://ops/code/adapters/a/adapter_model.safetensors")]
    with Stubber(s3) as stub:
        stub.add_response("head_object", {"ContentLength": 10}, {"Bucket": "data", "Key": "a/adapter_config.json"})
        stub.add_response("list_objects_v2", {"Contents": [{"Key": "code/adapters/a/adapter_config.json", "Size": 10}]},
                          {"Bucket": "ops", "Prefix": "code/adapters/a/adapter_config.json", "MaxKeys": 1})
        stub.add_response("head_object", {"ContentLength": 99}, {"Bucket": "data", "Key": "a/adapter_model.safetensors"})
        stub.add_response("list_objects_v2", {}, {"Bucket": "ops", "Prefix": "code/adapters/a/adapter_model.safetensors",
                                                  "MaxKeys": 1})
        stub.add_response("copy_object", {}, {"Bucket": "ops", "Key": "code/adapters/a/adapter_model.safetensors",
                                              "CopySource": {"Bucket": "data", "Key": "a/adapter_model.safetensors"}})
        assert copy_missing(s3, copies) == 1
        stub.add_client_error("head_object", "404", "Not Found", 404)
        with pytest.raises(FileNotFoundError) as err:
            copy_missing(s3, copies[:1])
    assert err.value.args[0] == "s3://data/a/adapter_config.json"
