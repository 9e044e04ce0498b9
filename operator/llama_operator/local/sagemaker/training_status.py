"""A training job's record as DescribeTrainingJob shows it: status and secondary-status
transitions (persisted, then announced as events), and what SageMaker makes of a finished job's
output (the final metrics, the failure reason)."""

from __future__ import annotations

import json
import time

from llama_operator.local.sagemaker import metrics
from llama_operator.local.sagemaker.context import Context

KIND = "training-job"
TERMINAL = {"Completed", "Failed", "Stopped"}
FAILURE_REASON_LIMIT = 1024


def final_metrics(definitions: list[dict], log_text: str, now: float) -> list[dict]:
    """The last value each MetricDefinitions regex captured in the log, as SageMaker reports it."""
    out = []
    for name, regex in metrics.compile_definitions(definitions):
        values = list(metrics.captured(regex, log_text))
        if values:
            out.append({"MetricName": name, "Value": values[-1], "Timestamp": now})
    return out


def failure_reason(failure_text: str | None, exit_code: int | None) -> str:
    text = (failure_text or "").strip()
    if not text:
        text = f"the training process exited with code {exit_code}; see the job's logs"
    reason = f"AlgorithmError: {text}"
    return reason if len(reason) <= FAILURE_REASON_LIMIT else reason[: FAILURE_REASON_LIMIT - 3] + "..."


class JobStatus:
    """Status bookkeeping for one job record: every change is persisted, then announced."""

    def __init__(self, ctx: Context, name: str):
        self.ctx, self.name = ctx, name

    @property
    def describe(self) -> dict:
        return self.ctx.store.get(KIND, self.name)["describe"]

    def update(self, **fields) -> None:
        with self.ctx.store.lock:
            record = self.ctx.store.get(KIND, self.name)
            record["describe"].update(fields)
            record["describe"]["LastModifiedTime"] = time.time()
            self.ctx.store.put(KIND, record)

    def transition(self, status: str | None, secondary: str, message: str, *, failure: str | None = None,
                   end: float | None = None, **fields) -> None:
        with self.ctx.store.lock:
            record = self.ctx.store.get(KIND, self.name)
            d = record["describe"]
            now = time.time()
            changed = (status and status != d["TrainingJobStatus"]) or secondary != d.get("SecondaryStatus")
            trans = d.setdefault("SecondaryStatusTransitions", [])
            if trans and "EndTime" not in trans[-1]:
                trans[-1]["EndTime"] = now
            if secondary != d.get("SecondaryStatus") or not trans:
                entry = {"Status": secondary, "StartTime": now, "StatusMessage": message}
                if secondary in TERMINAL or secondary in ("MaxRuntimeExceeded",):
                    entry["EndTime"] = now
                trans.append(entry)
            if status:
                d["TrainingJobStatus"] = status
            d["SecondaryStatus"] = secondary
            if failure:
                d["FailureReason"] = failure
            if end is not None:
                d["TrainingEndTime"] = end
                start = d.get("TrainingStartTime")
                if start:
                    seconds = max(1, int(round(end - start)))
                    d["TrainingTimeInSeconds"] = seconds
                    d["BillableTimeInSeconds"] = seconds * int(d["ResourceConfig"].get("InstanceCount", 1))
            d.update(fields)
            d["LastModifiedTime"] = now
            self.ctx.store.put(KIND, record)
            snapshot = json.loads(json.dumps(d))
        if changed:
            self.ctx.emit(KIND, self.name, snapshot)
