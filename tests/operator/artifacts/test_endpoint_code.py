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
