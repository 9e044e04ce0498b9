import urllib.request

from llama_operator import metrics


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _value(text: str, series: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_are_served_and_phases_move_between_buckets(unused_port):
    # the registry is process-wide: other tests in this run may have counted already, so compare deltas
    metrics.serve(unused_port, addr="127.0.0.1")
    calls = 'llama_operator_sagemaker_calls_total{operation="CreateTrainingJob",outcome="ok"}'
    in_progress = 'llama_operator_resources{kind="LlamaFinetune",phase="InProgress"}'
    completed = 'llama_operator_resources{kind="LlamaFinetune",phase="Completed"}'
    before = _scrape(unused_port)
    metrics.SAGEMAKER_CALLS.labels(operation="CreateTrainingJob", outcome="ok").inc()
    metrics.observe_phase("LlamaFinetune", "metrics-test", "a", "InProgress")
    metrics.observe_phase("LlamaFinetune", "metrics-test", "a", "Completed")
    metrics.observe_phase("LlamaFinetune", "metrics-test", "b", "Completed")
    text = _scrape(unused_port)
    assert _value(text, calls) - _value(before, calls) == 1
    assert _value(text, in_progress) - _value(before, in_progress) == 0
    assert _value(text, completed) - _value(before, completed) == 2
    metrics.observe_phase("LlamaFinetune", "metrics-test", "b", None)
    assert _value(_scrape(unused_port), completed) - _value(before, completed) == 1


def test_counting_never_raises_and_counts_what_it_can():
    def ok() -> float:
        labels = {"kind": "LlamaFinetune", "outcome": "ok"}
        return metrics.REGISTRY.get_sample_value("llama_operator_reconciles_total", labels) or 0.0

    before = ok()
    metrics.count("RECONCILES", kind="LlamaFinetune", outcome="ok")
    assert ok() == before + 1
    metrics.count("NO_SUCH_METRIC", kind="x")          # a typo must not break a reconcile
    metrics.count("RECONCILES", wrong_label="x")
    metrics.phase("LlamaFinetune", "ns", "n", None)

