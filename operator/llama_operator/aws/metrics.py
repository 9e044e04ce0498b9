"""The training loss of a running job, read where SageMaker puts it while the job runs.

SageMaker sends each MetricDefinitions match in the algorithm's logs to CloudWatch as the job runs
(namespace /aws/sagemaker/TrainingJobs, dimension TrainingJobName); DescribeTrainingJob's
FinalMetricDataList holds only the final values, once the job has ended. So for an InProgress job
the loss is read from CloudWatch the way the SageMaker Python SDK's TrainingJobAnalytics does
(GetMetricStatistics, Average over one-minute periods), the newest period's value taken; an ended
job's loss comes from FinalMetricDataList as before (status.training_loss).

Reads are rate-limited per job (`interval`, 60 s by default: the metric's own resolution), and never raise: CloudWatch refusing
(AccessDenied), throttling or unreachable is logged once and the last value read is kept."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable, Mapping

from llama_operator.status.values import to_epoch
from llama_operator.kinds import TRAINING_METRICS_DIMENSION, TRAINING_METRICS_NAMESPACE

log = logging.getLogger(__name__)

NAMESPACE, JOB_DIMENSION = TRAINING_METRICS_NAMESPACE, TRAINING_METRICS_DIMENSION
LOSS_METRIC = "train:loss"            # the planner's MetricDefinitions name (plan/finetune.py)
STATISTIC = "Average"                 # what TrainingJobAnalytics asks for
PERIOD_SECONDS = 60                   # algorithm metrics come at one-minute resolution
MAX_DATAPOINTS = 1440                 # GetMetricStatistics' limit per call: a day of one-minute periods
DEFAULT_POLL_SECONDS = 60.0  # = PERIOD_SECONDS: a read more often finds no new period
POLL_ENV = "LLAMA_OPERATOR_LOSS_POLL_SECONDS"
POLL_SETTING = "loss_poll_seconds"    # Settings.extra key, ahead of the environment variable

ACCESS_HINT = ("the operator's IAM role needs cloudwatch:GetMetricStatistics "
               f"on the {NAMESPACE} namespace")


# ---- pure parts -------------------------------------------------------------------------------

def poll_interval(extra: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    raw = (extra or {}).get(POLL_SETTING) or env.get(POLL_ENV)
    try:
        value = float(raw) if raw else DEFAULT_POLL_SECONDS
    except ValueError:
        value = DEFAULT_POLL_SECONDS
    return value if value > 0 else DEFAULT_POLL_SECONDS


def query_window(now: float, training_start: float | None = None, last_seen: float | None = None,
                 period: int = PERIOD_SECONDS) -> tuple[dt.datetime, dt.datetime]:
    """(StartTime, EndTime) for the next read: from the job's start the first time, then from the
    newest period already seen (it may have grown since); never more periods than one call returns.
    The end is a minute ahead, as TrainingJobAnalytics does, since CloudWatch drops the seconds."""
    start = now - period * (MAX_DATAPOINTS - 1)
    if training_start is not None:
        start = max(start, training_start - period)
    if last_seen is not None:
        start = max(start, last_seen)  # a datapoint's Timestamp is its period's start
    end = now + 60
    return _utc(start), _utc(end)


def statistics_request(job: str, start: dt.datetime, end: dt.datetime, *, metric: str = LOSS_METRIC,
                       period: int = PERIOD_SECONDS) -> dict:
    return {"Namespace": NAMESPACE, "MetricName": metric,
            "Dimensions": [{"Name": JOB_DIMENSION, "Value": job}],
            "StartTime": start, "EndTime": end, "Period": period, "Statistics": [STATISTIC]}


def latest_datapoint(datapoints: Iterable[Mapping[str, Any]] | None,
                     statistic: str = STATISTIC) -> tuple[float, float] | None:
    """(epoch seconds, value) of the newest datapoint that carries the statistic, or None."""
    best = None
    for p in datapoints or []:
        when, value = to_epoch(p.get("Timestamp")), p.get(statistic)
        if when is None or value is None:
            continue
        if best is None or when >= best[0]:
            best = (when, float(value))
    return best


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        code = (response.get("Error") or {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


# ---- the reader -------------------------------------------------------------------------------

class _Seen:
    __slots__ = ("polled", "when", "value")

    def __init__(self):
        self.polled: float | None = None   # monotonic time of the last call
        self.when: float | None = None     # epoch of the newest datapoint
        self.value: float | None = None


class LossReader:
    """The latest `train:loss` per training job from CloudWatch, at most once per `interval` per job."""

    def __init__(self, client_factory: Callable[[], Any], *, interval: float = DEFAULT_POLL_SECONDS,
                 metric: str = LOSS_METRIC, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time):
        self.client_factory = client_factory
        self.interval = interval
        self.metric = metric
        self.clock, self.now = clock, now
        self._client = None
        self._jobs: dict[str, _Seen] = {}
        self._reported: set[str] = set()   # error codes already logged, until a read works again
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "LossReader":
        from llama_operator.aws.clients import cloudwatch_client

        region = getattr(settings, "region", None)
        return cls(lambda: cloudwatch_client(region), interval=poll_interval(getattr(settings, "extra", None)))

    def cached(self, job: str) -> float | None:
        with self._lock:
            seen = self._jobs.get(job)
            return seen.value if seen else None

    def due(self, job: str) -> bool:
        with self._lock:
            seen = self._jobs.get(job)
            return seen is None or seen.polled is None or self.clock() - seen.polled >= self.interval

    def forget(self, job: str) -> None:
        with self._lock:
            self._jobs.pop(job, None)

    def read(self, job: str, training_start: Any = None) -> float | None:
        """The newest loss (blocking): from CloudWatch when this job's last call is `interval` old,
        else the value from that call. Never raises."""
        with self._lock:
            seen = self._jobs.setdefault(job, _Seen())
            if seen.polled is not None and self.clock() - seen.polled < self.interval:
                return seen.value
            seen.polled = self.clock()  # claimed: a concurrent caller gets the cached value
            last_seen = seen.when
        try:
            start, end = query_window(self.now(), to_epoch(training_start), last_seen)
            if self._client is None:
                self._client = self.client_factory()
            reply = self._client.get_metric_statistics(**statistics_request(job, start, end, metric=self.metric))
            found = latest_datapoint(reply.get("Datapoints"))
        except Exception as exc:  # AccessDenied, throttling, network: never the reconcile's problem
            self._report(job, exc)
            return self.cached(job)
        with self._lock:
            self._reported.clear()
            seen = self._jobs.setdefault(job, seen)
            if found and (seen.when is None or found[0] >= seen.when):
                seen.when, seen.value = found
            return seen.value

    async def latest(self, job: str, training_start: Any = None) -> float | None:
        """`read` off the event loop; the cached value without a thread hop when not due."""
        if not self.due(job):
            return self.cached(job)
        return await asyncio.to_thread(self.read, job, training_start)

    def _report(self, job: str, exc: BaseException) -> None:
        code = error_code(exc)
        with self._lock:
            first = code not in self._reported
            self._reported.add(code)
        if not first:
            log.debug("reading %s of %s from CloudWatch: %s: %s", self.metric, job, code, exc)
            return
        hint = f"; {ACCESS_HINT}" if "AccessDenied" in code or "Unauthorized" in code else ""
        log.warning("reading %s of training job %s from CloudWatch failed (%s: %s)%s; status keeps the "
                    "last loss read, and this is not logged again until a read works", self.metric, job, code,
                    exc, hint)
