import urllib.request

from llama_operator import metrics


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_metrics_are_served_and_phases_move_between_buckets(unused_port):
    metrics.serve(unused_port, addr="127.0.0.1")
    metrics.SAGEMAKER_CALLS.labels(operation="CreateTrainingJob", outcome="ok").inc()
    metrics.observe_phase("LlamaFinetune", "ns", "a", "InProgress")
    metrics.observe_phase("LlamaFinetune", "ns", "a", "Completed")
    metrics.observe_phase("LlamaFinetune", "ns", "b", "Completed")
    text = _scrape(unused_port)
    assert 'llama_operator_sagemaker_calls_total{operation="CreateTrainingJob",outcome="ok"} 1.0' in text
    assert 'llama_operator_resources{kind="LlamaFinetune",phase="InProgress"} 0.0' in text
    assert 'llama_operator_resources{kind="LlamaFinetune",phase="Completed"} 2.0' in text
    metrics.observe_phase("LlamaFinetune", "ns", "b", None)
    assert 'llama_operator_resources{kind="LlamaFinetune",phase="Completed"} 1.0' in _scrape(unused_port)
