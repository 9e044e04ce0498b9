"""Training metrics while a job runs: the local service's log scanning and CloudWatch publishing
(llama_operator.local.sagemaker.metrics) and the operator's rate-limited, never-failing CloudWatch read
(llama_operator.aws.metrics)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from llama_operator.aws import metrics as reading
from llama_operator.local.sagemaker import metrics as publishing
from llama_operator.plan.finetune import METRIC_DEFINITIONS

JOB = "chat-0123456789abcdef"
T0 = 1_750_000_000.0


# ---- the local service: logs -> CloudWatch ------------------------------------------------------

def test_scan_finds_every_match_of_each_definition_in_order_and_drops_what_is_not_a_number():
    compiled = publishing.compile_definitions(
        [{"Name": "train:loss", "Regex": r"loss=([^ ]+)"}, {"Name": "bad", "Regex": "("},
         {"Name": "train:lr", "Regex": r"lr=([0-9.e-]+)"}])
    assert [n for n, _ in compiled] == ["train:loss", "train:lr"]  # a regex that does not compile is left out
    text = "step=1 loss=1.5 lr=1e-4\nstep=2 loss=nan\nstep=3 loss=abc\nstep=4 loss=0.42 lr=5e-5\n"
    assert publishing.scan(compiled, text) == [("train:loss", 1.5), ("train:loss", 0.42),
                                               ("train:lr", 1e-4), ("train:lr", 5e-5)]


def test_the_planners_loss_regex_takes_the_step_lines_not_the_run_summary():
    compiled = publishing.compile_definitions(METRIC_DEFINITIONS)
    text = "[train] step=10/100 loss=2.25 lr=1e-4\n[train] done train_loss=1.9\n"
    assert [v for n, v in publishing.scan(compiled, text) if n == "train:loss"] == [2.25]


def test_publishable_values_are_what_cloudwatch_accepts():
    assert publishing.publishable(0.0) and publishing.publishable(-3.5)
    assert not publishing.publishable(float("inf")) and not publishing.publishable(float("nan"))
    assert not publishing.publishable(2.0 ** 400) and not publishing.publishable(2.0 ** -400)


def test_datum_has_the_job_dimension_that_the_sdks_query_asks_for():
    when = dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    d = publishing.datum(JOB, "train:loss", 0.5, when)
    assert d == {"MetricName": "train:loss", "Dimensions": [{"Name": "TrainingJobName", "Value": JOB}],
                 "Timestamp": when, "Value": 0.5}
    request = reading.statistics_request(JOB, when, when)
    assert request["Namespace"] == publishing.NAMESPACE == "/aws/sagemaker/TrainingJobs"
    assert request["Dimensions"] == d["Dimensions"]
    assert [len(b) for b in publishing.batches(list(range(45)))] == [20, 20, 5]


def test_log_tail_returns_only_new_whole_lines_across_hosts(tmp_path):
    tail = publishing.LogTail(tmp_path)
    assert tail.read_new() == ""
    one, two = tmp_path / "algo-1.log", tmp_path / "algo-2.log"
    one.write_bytes(b"loss=1.0\nloss=0.")
    two.write_bytes(b"loss=3.0\n")
    assert tail.read_new() == "loss=1.0\n\nloss=3.0\n"
    assert tail.read_new() == ""                       # nothing new; the half line waits
    with open(one, "ab") as f:
        f.write(b"9\n")
    assert tail.read_new() == "loss=0.9\n"
    with open(two, "ab") as f:
        f.write(b"loss=2.5")
    assert tail.read_new(final=True) == "loss=2.5"     # at the end, the unfinished line too
    one.write_bytes(b"x\n")                            # a log started again is read from its top
    assert tail.read_new() == "x\n"


class FakePut:
    def __init__(self, fail: Exception | None = None):
        self.calls, self.fail = [], fail

    def put_metric_data(self, **kwargs):
        if self.fail:
            raise self.fail
        self.calls.append(kwargs)


def _publisher(tmp_path, client, **kw):
    when = dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    return publishing.Publisher(JOB, [{"Name": "train:loss", "Regex": r"loss=([0-9.]+)"}], tmp_path,
                                lambda: client, now=lambda: when, **kw)


def test_publisher_puts_new_values_once_and_the_rest_on_stop(tmp_path):
    log_file = tmp_path / "algo-1.log"
    log_file.write_text("step=0 loss=1.5\nstep=1 loss=0.9\n")
    client = FakePut()
    pub = _publisher(tmp_path, client, interval=3600)
    assert pub.publish_once() == 2
    assert pub.publish_once() == 0                     # nothing new, nothing put
    (call,) = client.calls
    assert call["Namespace"] == "/aws/sagemaker/TrainingJobs"
    assert [(d["MetricName"], d["Value"]) for d in call["MetricData"]] == [("train:loss", 1.5), ("train:loss", 0.9)]
    with open(log_file, "a") as f:
        f.write("step=2 loss=0.42")                    # no newline yet: the job is still writing it
    pub.start()
    pub.stop()
    assert [d["Value"] for d in client.calls[-1]["MetricData"]] == [0.42]
    assert not pub.thread.is_alive() and pub.published == 3
    pub.stop()  # twice is fine


def test_publisher_failures_are_logged_once_and_never_raise(tmp_path, caplog):
    (tmp_path / "algo-1.log").write_text("loss=1.0\n")
    pub = _publisher(tmp_path, FakePut(fail=EndpointConnectionError(endpoint_url="http://127.0.0.1:1")))
    with caplog.at_level(logging.WARNING, logger="llama_operator.local.sagemaker.metrics"):
        assert pub.publish_once() == 0
        with open(tmp_path / "algo-1.log", "a") as f:
            f.write("loss=0.5\n")
        assert pub.publish_once() == 0
    assert len([r for r in caplog.records if "publishing metrics" in r.message]) == 1


def test_no_publisher_without_definitions_or_without_a_local_cloudwatch(tmp_path, monkeypatch):
    spec = {"AlgorithmSpecification": {"MetricDefinitions": [{"Name": "train:loss", "Regex": "loss=(.*)"}]}}
    monkeypatch.delenv("AWS_ENDPOINT_URL_CLOUDWATCH", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert publishing.start_publisher(JOB, spec, tmp_path, "us-east-1") is None   # never real AWS
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", "http://127.0.0.1:1")
    assert publishing.start_publisher(JOB, {"AlgorithmSpecification": {}}, tmp_path, "us-east-1") is None


# ---- the operator: CloudWatch -> status --------------------------------------------------------

def test_query_window_starts_at_the_job_then_at_the_newest_period_seen_and_stays_within_one_call():
    now = T0 + 7200
    start, end = reading.query_window(now, training_start=T0)
    assert start.timestamp() == T0 - 60 and end.timestamp() == now + 60
    start, _ = reading.query_window(now, training_start=T0, last_seen=now - 300)
    assert start.timestamp() == now - 300
    start, end = reading.query_window(now + 10 * 86400, training_start=T0)
    assert (end - start).total_seconds() / reading.PERIOD_SECONDS <= reading.MAX_DATAPOINTS
    assert start.tzinfo is not None


def test_latest_datapoint_is_the_newest_average():
    points = [{"Timestamp": dt.datetime.fromtimestamp(T0 + 120, dt.timezone.utc), "Average": 0.4},
              {"Timestamp": dt.datetime.fromtimestamp(T0, dt.timezone.utc), "Average": 1.2},
              {"Timestamp": dt.datetime.fromtimestamp(T0 + 180, dt.timezone.utc)}]  # no Average: ignored
    assert reading.latest_datapoint(points) == (T0 + 120, 0.4)
    assert reading.latest_datapoint([]) is None and reading.latest_datapoint(None) is None


def test_poll_interval_from_settings_extra_then_environment_then_the_metric_period():
    assert reading.poll_interval({}, {}) == 60.0
    assert reading.poll_interval({}, {"LLAMA_OPERATOR_LOSS_POLL_SECONDS": "5"}) == 5.0
    assert reading.poll_interval({"loss_poll_seconds": "1"}, {"LLAMA_OPERATOR_LOSS_POLL_SECONDS": "5"}) == 1.0
    assert reading.poll_interval({}, {"LLAMA_OPERATOR_LOSS_POLL_SECONDS": "soon"}) == 60.0
    assert reading.poll_interval({}, {"LLAMA_OPERATOR_LOSS_POLL_SECONDS": "0"}) == 60.0


class FakeCloudWatch:
    def __init__(self):
        self.calls, self.replies = [], []

    def get_metric_statistics(self, **kwargs):
        self.calls.append(kwargs)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return {"Datapoints": reply}


def _point(t, v):
    return {"Timestamp": dt.datetime.fromtimestamp(t, dt.timezone.utc), "Average": v}


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _denied(code="AccessDenied"):
    return ClientError({"Error": {"Code": code, "Message": "not authorized to perform cloudwatch:GetMetricStatistics"}},
                       "GetMetricStatistics")


def test_reader_calls_at_most_once_per_interval_per_job_and_keeps_the_newest_value():
    cw, clock = FakeCloudWatch(), Clock()
    reader = reading.LossReader(lambda: cw, interval=30, clock=clock, now=lambda: T0 + 600)
    cw.replies = [[_point(T0 + 60, 1.1), _point(T0 + 120, 0.8)], [_point(T0 + 180, 0.6)], [], [_point(T0, 9.9)]]
    assert reader.read(JOB, training_start=dt.datetime.fromtimestamp(T0, dt.timezone.utc)) == 0.8
    call = cw.calls[0]
    assert call["Namespace"] == "/aws/sagemaker/TrainingJobs" and call["MetricName"] == "train:loss"
    assert call["Dimensions"] == [{"Name": "TrainingJobName", "Value": JOB}]
    assert call["Statistics"] == ["Average"] and call["Period"] == 60
    assert call["StartTime"].timestamp() == T0 - 60
    clock.t += 10
    assert reader.read(JOB) == 0.8 and len(cw.calls) == 1          # within the interval: no call
    assert not reader.due(JOB)
    clock.t += 25
    assert reader.read(JOB) == 0.6 and len(cw.calls) == 2
    assert cw.calls[1]["StartTime"].timestamp() == T0 + 120        # from the newest period seen
    clock.t += 30
    assert reader.read(JOB) == 0.6                                 # nothing new: the last value stays
    clock.t += 30
    assert reader.read(JOB) == 0.6                                 # an older point never wins
    reader.forget(JOB)
    assert reader.cached(JOB) is None and reader.due(JOB)


def test_reader_errors_never_raise_and_are_logged_once_until_a_read_works(caplog):
    cw, clock = FakeCloudWatch(), Clock()
    reader = reading.LossReader(lambda: cw, interval=30, clock=clock, now=lambda: T0 + 600)
    cw.replies = [[_point(T0, 0.7)], _denied(), _denied(), _denied("Throttling"), [_point(T0 + 60, 0.5)], _denied()]
    with caplog.at_level(logging.DEBUG, logger="llama_operator.aws.metrics"):
        values = []
        for _ in range(6):
            values.append(reader.read(JOB))
            clock.t += 30
    assert values == [0.7, 0.7, 0.7, 0.7, 0.5, 0.5]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # AccessDenied, Throttling, and AccessDenied again after a read worked
    assert "AccessDenied" in warnings[0] and "cloudwatch:GetMetricStatistics" in warnings[0]
    assert "Throttling" in warnings[1] and "IAM" not in warnings[1]


def test_reader_without_a_usable_client_still_answers():
    def no_client():
        raise RuntimeError("no credentials")

    reader = reading.LossReader(no_client, interval=30)
    assert reader.read(JOB) is None


async def test_latest_skips_the_thread_hop_when_not_due():
    cw, clock = FakeCloudWatch(), Clock()
    reader = reading.LossReader(lambda: cw, interval=30, clock=clock, now=lambda: T0 + 600)
    cw.replies = [[_point(T0, 0.3)]]
    assert await reader.latest(JOB) == 0.3
    assert await reader.latest(JOB) == 0.3 and len(cw.calls) == 1


def test_what_the_local_service_publishes_is_what_the_operator_reads(tmp_path):
    """Both halves against moto's CloudWatch (in process): same namespace, name and dimensions."""
    moto = pytest.importorskip("moto")
    import boto3

    with moto.mock_aws():
        cw = boto3.client("cloudwatch", region_name="us-east-1")
        (tmp_path / "algo-1.log").write_text("step=0 loss=1.5\nstep=1 loss=0.5\n")
        pub = publishing.Publisher(JOB, METRIC_DEFINITIONS, tmp_path, lambda: cw)
        assert pub.publish_once() == 2
        reader = reading.LossReader(lambda: cw)
        assert reader.read(JOB, training_start=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)) == 1.0
        assert reading.LossReader(lambda: cw).read("another-job") is None
