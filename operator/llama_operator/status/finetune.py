"""LlamaFinetune status from what SageMaker says about the training job (pure: no I/O).

One function takes either a DescribeTrainingJob response (the resync fallback) or the `detail` of a
"SageMaker Training Job State Change" event (the main path); both carry the Describe fields, events
with timestamps as epoch milliseconds (the documented example writes them as strings of digits,
"1583831889050"). aws/events.py turns details into the API's spelling at intake; this module takes
either (`values.to_epoch`, `training_job_status_name`). Delivery is at least once and unordered, so each
observation is ranked by (LastModifiedTime, how far along the job is) and one that ranks below
what status already shows is dropped: duplicate, late or out-of-order events never move status
backwards, and a terminal phase is final.

Phases: Pending (accepted, nothing sent yet), Creating (CreateTrainingJob in flight or being
retried), InProgress, Completed, Failed, Stopping, Stopped.
"""

from __future__ import annotations

from typing import Any, Mapping

from llama_operator.status.conditions import for_phase, synced
from llama_operator.status.values import api_spelling, iso, to_epoch

PHASES = ("Pending", "WaitingForModel", "Creating", "InProgress", "Completed", "Failed", "Stopping", "Stopped")
TERMINAL = frozenset({"Completed", "Failed", "Stopped"})
CONDITION_TYPES = ("Ready", "Progressing", "Failed", "Synced")

# TrainingJobStatus and SecondaryStatus as the API spells them (botocore's enums); the latter in
# the order of how far along a job is, for ordering observations that carry the same
# LastModifiedTime.
TRAINING_JOB_STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped", "Deleting")
SECONDARY_STATUSES = ("Starting", "Pending", "LaunchingMLInstances", "PreparingTrainingStack", "Downloading",
                      "DownloadingTrainingImage", "Training", "Restarting", "Uploading", "Interrupted", "Stopping",
                      "MaxRuntimeExceeded", "MaxWaitTimeExceeded", "Updating", "Completed", "Failed", "Stopped")
_SECONDARY_RANK = {s: i for i, s in enumerate(SECONDARY_STATUSES)}
_PHASE_RANK = {"Pending": 0, "Creating": 1, "InProgress": 2, "Stopping": 3, "Completed": 4, "Failed": 4, "Stopped": 4}


def training_job_status_name(value):
    """TrainingJobStatus as DescribeTrainingJob spells it, from that or upper snake case."""
    return api_spelling(value, TRAINING_JOB_STATUSES)


def secondary_status_name(value):
    """SecondaryStatus as DescribeTrainingJob spells it ("LAUNCHING_ML_INSTANCES" -> "LaunchingMLInstances")."""
    return api_spelling(value, SECONDARY_STATUSES)


def phase_of(training_job_status: str) -> str:
    training_job_status = training_job_status_name(training_job_status)
    return training_job_status if training_job_status in PHASES else "InProgress"


def _rank(phase: str, secondary: str | None) -> tuple[int, int]:
    return _PHASE_RANK.get(phase, 0), _SECONDARY_RANK.get(secondary or "", 0)


def is_stale(current: Mapping[str, Any] | None, phase: str, secondary: str | None, modified: float | None) -> bool:
    """True when an observation must not be applied over `current` status."""
    current = current or {}
    cur_phase = current.get("phase")
    if cur_phase in TERMINAL and phase != cur_phase:
        return True  # a terminal phase is final
    last = to_epoch(current.get("lastEventTime"))
    if last is not None and modified is not None:
        if modified < last:
            return True
        if modified == last and _rank(phase, secondary) < _rank(cur_phase or "Pending", current.get("secondaryStatus")):
            return True
    return False


def training_loss(metrics: list[Mapping[str, Any]] | None) -> float | None:
    """The last reported training loss from FinalMetricDataList, if the job reports one."""
    best = None
    for m in metrics or []:
        name = str(m.get("MetricName", "")).lower()
        if "loss" in name and "eval" not in name and "val" not in name:
            best = float(m["Value"])
    return best


def output_s3_uri(output_path: str, job_name: str, what: str) -> str:
    """Where the training workload pushes its `what` ("model" or "adapter"), outside SageMaker's
    tarball: `<outputS3Uri>/<job name>/<what>/`."""
    return f"{output_path.rstrip('/')}/{job_name}/{what}/"


def outputs_of(detail: Mapping[str, Any], job_name: str) -> dict[str, str]:
    """The status fields naming what a completed job wrote, read from its own request (the
    hyperparameters, which Describe and the state-change event both carry): the adapter of a
    parameter-efficient fine-tune, the model of a full one or of a merged adapter."""
    output_path = (detail.get("OutputDataConfig") or {}).get("S3OutputPath")
    if not output_path:
        return {}
    hp = detail.get("HyperParameters") or {}
    base = {"baseModelS3Uri": hp["base_model"]} if hp.get("base_model") else {}
    if hp.get("peft") not in ("lora", "qlora"):
        return {**base, "modelS3Uri": output_s3_uri(output_path, job_name, "model")}
    out = {**base, "adapterS3Uri": hp.get("adapter_s3_uri") or output_s3_uri(output_path, job_name, "adapter")}
    if str(hp.get("merge_adapter", "")).lower() == "true":
        out["modelS3Uri"] = output_s3_uri(output_path, job_name, "model")
    return out


def conditions_for(phase: str, reason: str, message: str, previous, *, generation: int | None, now: str) -> list[dict]:
    truth = {
        "Ready": phase == "Completed",
        "Progressing": phase in ("Pending", "WaitingForModel", "Creating", "InProgress", "Stopping"),
        "Failed": phase == "Failed",
    }
    return for_phase(truth, reason, message, previous, what="training job", phase=phase,
                     generation=generation, now=now)


def from_training_job(detail: Mapping[str, Any], current: Mapping[str, Any] | None, *, generation: int | None,
                      now: str) -> tuple[dict, list[tuple[str, str, str]]]:
    """(status patch, Events to post) for one observation of the job; ({}, []) when it is stale.

    Events are (type, reason, message), one for each phase or secondary-status transition."""
    current = current or {}
    status = detail.get("TrainingJobStatus") or "InProgress"
    phase = phase_of(status)
    secondary = secondary_status_name(detail.get("SecondaryStatus"))
    modified = to_epoch(detail.get("LastModifiedTime")) or to_epoch(detail.get("CreationTime"))
    if is_stale(current, phase, secondary, modified):
        return {}, []

    name = detail.get("TrainingJobName") or current.get("trainingJobName")
    patch: dict[str, Any] = {"phase": phase, "trainingJobName": name, "secondaryStatus": secondary}
    if detail.get("TrainingJobArn"):
        patch["trainingJobArn"] = detail["TrainingJobArn"]
    if modified is not None:
        patch["lastEventTime"] = iso(modified)
    for src, dst in (("TrainingStartTime", "startTime"), ("TrainingEndTime", "endTime")):
        t = to_epoch(detail.get(src))
        if t is not None:
            patch[dst] = iso(t)
    if detail.get("BillableTimeInSeconds") is not None:
        patch["billableSeconds"] = int(float(detail["BillableTimeInSeconds"]))
    loss = training_loss(detail.get("FinalMetricDataList"))
    if loss is not None:
        patch["trainingLoss"] = loss
    artifacts = (detail.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if artifacts:
        patch["modelArtifacts"] = artifacts
    if phase == "Completed":
        patch.update(outputs_of(detail, name))
    failure = detail.get("FailureReason")
    if failure and phase in ("Failed", "Stopped"):
        patch["failureReason"] = failure

    reason, message = _reason(phase, secondary, detail)
    patch["conditions"] = conditions_for(phase, reason, message, current.get("conditions"), generation=generation,
                                         now=now)
    if generation is not None:
        patch["observedGeneration"] = generation

    events: list[tuple[str, str, str]] = []
    if phase != current.get("phase") or secondary != current.get("secondaryStatus"):
        kind = "Warning" if phase in ("Failed",) else "Normal"
        events.append((kind, reason, message))
    return patch, events


def _reason(phase: str, secondary: str | None, detail: Mapping[str, Any]) -> tuple[str, str]:
    name = detail.get("TrainingJobName", "")
    transitions = detail.get("SecondaryStatusTransitions") or []
    last_msg = (transitions[-1].get("StatusMessage") if transitions else None) or ""
    if phase == "Completed":
        return "TrainingJobCompleted", f"training job {name} completed; model artifacts at " \
                                       f"{(detail.get('ModelArtifacts') or {}).get('S3ModelArtifacts', '')}".rstrip()
    if phase == "Failed":
        return "TrainingJobFailed", f"training job {name} failed: {detail.get('FailureReason') or 'no reason given'}"
    if phase == "Stopped":
        why = f" ({secondary})" if secondary and secondary != "Stopped" else ""
        return "TrainingJobStopped", f"training job {name} stopped{why}"
    if phase == "Stopping":
        return "TrainingJobStopping", f"training job {name} is stopping"
    return (secondary or "InProgress"), f"training job {name}: {secondary or status_word(phase)}" + \
        (f" - {last_msg}" if last_msg else "")


def status_word(phase: str) -> str:
    return phase.lower()


def pending(current, *, generation: int | None, now: str, phase: str = "Creating", reason: str = "Creating",
            message: str = "creating the SageMaker training job") -> dict:
    """Status while CreateTrainingJob has not yet been accepted."""
    return {"phase": phase, "observedGeneration": generation,
            "conditions": conditions_for(phase, reason, message, (current or {}).get("conditions"),
                                         generation=generation, now=now)}


def waiting_for_model(current, reason: str, message: str, *, generation: int | None, now: str) -> dict:
    """Status while baseModel.fromFinetune names a LlamaFinetune that has not completed yet."""
    return {"phase": "WaitingForModel", "observedGeneration": generation,
            "conditions": conditions_for("WaitingForModel", reason, message, (current or {}).get("conditions"),
                                         generation=generation, now=now)}


def failed_before_start(current, reason: str, message: str, *, generation: int | None, now: str) -> dict:
    """Status when the job could not be created at all (spec rejected here or by SageMaker)."""
    conds = conditions_for("Failed", reason, message, (current or {}).get("conditions"), generation=generation, now=now)
    conds = synced(conds, True, reason, message, generation=generation, now=now)
    return {"phase": "Failed", "failureReason": message, "observedGeneration": generation, "conditions": conds}
