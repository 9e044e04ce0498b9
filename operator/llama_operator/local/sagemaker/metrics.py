"""Training metrics while a job runs, where SageMaker puts them: every match of a MetricDefinitions
regex in the algorithm's output goes to CloudWatch while the job runs (namespace
/aws/sagemaker/TrainingJobs, the definition's Name as the metric name, one dimension,
TrainingJobName, which is how the SageMaker Python SDK's TrainingJobAnalytics asks
GetMetricStatistics for them). DescribeTrainingJob is left as its reference describes it:
FinalMetricDataList holds the last values and is set only as the job ends
(training_status.final_metrics).

The pure parts read the new complete lines of the hosts' logs, match them and build PutMetricData
batches; `Publisher` is a small thread per running job that does that every few seconds."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

from llama_operator.kinds import TRAINING_METRICS_DIMENSION, TRAINING_METRICS_NAMESPACE

log = logging.getLogger(__name__)

NAMESPACE, JOB_DIMENSION = TRAINING_METRICS_NAMESPACE, TRAINING_METRICS_DIMENSION
PUBLISH_INTERVAL_SECONDS = 2.0
BATCH_SIZE = 20          # PutMetricData's per-call limit was 20 data; keep to it
STOP_TIMEOUT_SECONDS = 10
# CloudWatch refuses values of magnitude above 2^360 or below 2^-360 (other than 0), NaN and infinity.
_LIMIT_HIGH, _LIMIT_LOW = 2.0 ** 360, 2.0 ** -360


# ---- pure parts -------------------------------------------------------------------------------

def compile_definitions(definitions: Iterable[dict] | None) -> list[tuple[str, re.Pattern]]:
    """(name, compiled regex) for each usable definition; a regex that does not compile is skipped,
    as it is when the job ends (training_status.final_metrics)."""
    out = []
    for d in definitions or []:
        try:
            out.append((d["Name"], re.compile(d["Regex"])))
        except (KeyError, TypeError, re.error):
            continue
    return out


def publishable(value: float) -> bool:
    return math.isfinite(value) and (value == 0 or _LIMIT_LOW <= abs(value) <= _LIMIT_HIGH)


def scan(compiled: list[tuple[str, re.Pattern]], text: str) -> list[tuple[str, float]]:
    """Every (metric name, value) the definitions capture in `text`, each definition's matches in
    the order they appear. The first group is the value (the whole match without groups); a
    capture that is not a number CloudWatch accepts is dropped."""
    return [(name, value) for name, regex in compiled for value in captured(regex, text) if publishable(value)]


def captured(regex: re.Pattern, text: str) -> Iterator[float]:
    """The numbers a MetricDefinitions regex captures in `text`, in order: its first group (the
    whole match without groups); a capture that is not a number is skipped."""
    for m in regex.findall(text):
        try:
            yield float(m[0] if isinstance(m, tuple) else m)
        except ValueError:
            continue


def datum(job: str, name: str, value: float, when: dt.datetime) -> dict:
    return {"MetricName": name, "Dimensions": [{"Name": JOB_DIMENSION, "Value": job}],
            "Timestamp": when, "Value": value}


def batches(items: list, size: int = BATCH_SIZE) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class LogTail:
    """The text the hosts' logs (algo-*.log under `log_dir`) gained since the last read, in whole
    lines: a line still being written waits for its newline, unless `final`."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.offsets: dict[Path, int] = {}

    def read_new(self, final: bool = False) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("algo-*.log")):
            start = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    size = f.seek(0, os.SEEK_END)
                    if size < start:  # truncated or replaced: read it again from the top
                        start = 0
                    f.seek(start)
                    data = f.read(size - start)
            except FileNotFoundError:
                continue
            if not final:
                cut = data.rfind(b"\n")
                data = data[:cut + 1] if cut >= 0 else b""
            self.offsets[path] = start + len(data)
            if data:
                parts.append(data.decode("utf-8", errors="replace"))
        return "\n".join(parts)


# ---- the publisher ----------------------------------------------------------------------------

def cloudwatch_configured(env=None) -> bool:
    """Whether boto3 would reach a local CloudWatch: the service never publishes to real AWS."""
    env = os.environ if env is None else env
    return bool(env.get("AWS_ENDPOINT_URL_CLOUDWATCH") or env.get("AWS_ENDPOINT_URL"))


class Publisher:
    """One job's metrics from its logs to CloudWatch every `interval` seconds while it runs, and
    once more (partial last lines too) on `stop`. Failures are logged once and never reach the job."""

    def __init__(self, job: str, definitions: Iterable[dict] | None, log_dir: Path,
                 client_factory: Callable[[], object], *, interval: float = PUBLISH_INTERVAL_SECONDS,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)):
        self.job = job
        self.compiled = compile_definitions(definitions)
        self.tail = LogTail(log_dir)
        self.client_factory = client_factory
        self.interval = interval
        self.now = now
        self.published = 0
        self._client = None
        self._failing = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name=f"metrics-{job}", daemon=True)

    def start(self) -> "Publisher":
        self.thread.start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Publish what is left and end the thread; safe to call more than once."""
        self._stop.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish_once()
        self.publish_once(final=True)

    def publish_once(self, final: bool = False) -> int:
        """Read, match, put; the number of data put."""
        with self._lock:
            values = scan(self.compiled, self.tail.read_new(final))
            if not values:
                return 0
            when = self.now()
            data = [datum(self.job, name, value, when) for name, value in values]
            sent = 0
            try:
                if self._client is None:
                    self._client = self.client_factory()
                for batch in batches(data):
                    self._client.put_metric_data(Namespace=NAMESPACE, MetricData=batch)
                    sent += len(batch)
            except Exception as exc:  # CloudWatch down or refusing: the job runs on regardless
                if not self._failing:
                    log.warning("job %s: publishing metrics to CloudWatch failed (%s: %s); values until it "
                                "recovers are dropped", self.job, type(exc).__name__, exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("job %s: publishing metrics to CloudWatch works again", self.job)
                self._failing = False
            self.published += sent
            return sent


def start_publisher(job: str, describe: dict, log_dir: Path, region: str) -> Publisher | None:
    """A started publisher for a job that defines metrics, or None (nothing to publish, or no local
    CloudWatch to publish to)."""
    definitions = (describe.get("AlgorithmSpecification") or {}).get("MetricDefinitions") or []
    if not compile_definitions(definitions) or not cloudwatch_configured():
        return None

    def client():
        import boto3

        return boto3.client("cloudwatch", region_name=region)

    return Publisher(job, definitions, log_dir, client).start()
