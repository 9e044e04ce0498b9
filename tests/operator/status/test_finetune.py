"""LlamaFinetune status from training-job state-change details: ordering, duplicates, events."""

from __future__ import annotations

from llama_operator.status import finetune as st

NOW = "2026-11-24T10:00:00.000Z"


def detail(status: str, secondary: str, modified_ms: int, **extra) -> dict:
    return {"TrainingJobName": "job-1", "TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/job-1",
            "TrainingJobStatus": status, "SecondaryStatus": secondary, "LastModifiedTime": modified_ms,
            "OutputDataConfig": {"S3OutputPath": "s3://b/out"}, **extra}


def apply(events: list[dict]) -> dict:
    current: dict = {}
    for d in events:
        patch, _ = st.from_training_job(d, current, generation=1, now=NOW)
        current = {**current, **patch}
    return current


def test_out_of_order_and_duplicate_events_end_in_the_latest_state():
    starting = detail("InProgress", "Starting", 1_000)
    training = detail("InProgress", "Training", 2_000)
    done = detail("Completed", "Completed", 3_000, BillableTimeInSeconds=7,
                  ModelArtifacts={"S3ModelArtifacts": "s3://b/out/job-1/output/model.tar.gz"},
                  FinalMetricDataList=[{"MetricName": "train:loss", "Value": 0.5}])
    in_order = apply([starting, training, done])
    shuffled = apply([done, training, starting, done, training])
    assert in_order["phase"] == shuffled["phase"] == "Completed"
    assert shuffled["secondaryStatus"] == "Completed" and shuffled["trainingLoss"] == 0.5
    assert shuffled["modelS3Uri"] == "s3://b/out/job-1/model/" and shuffled["billableSeconds"] == 7


def test_a_completed_lora_job_names_its_adapter_and_only_a_merged_model():
    lora = {"peft": "lora", "adapter_s3_uri": "s3://b/out/job-1/adapter/", "merge_adapter": "false"}
    done = apply([detail("Completed", "Completed", 3_000, HyperParameters=lora)])
    assert done["adapterS3Uri"] == "s3://b/out/job-1/adapter/" and "modelS3Uri" not in done
    merged = apply([detail("Completed", "Completed", 3_000, HyperParameters={**lora, "merge_adapter": "true"})])
    assert merged["adapterS3Uri"] == "s3://b/out/job-1/adapter/" and merged["modelS3Uri"] == "s3://b/out/job-1/model/"
    running = apply([detail("InProgress", "Training", 2_000, HyperParameters=lora)])
    assert "adapterS3Uri" not in running and "modelS3Uri" not in running
    full = apply([detail("Completed", "Completed", 3_000, HyperParameters={"method": "deepspeed"})])
    assert full["modelS3Uri"] == "s3://b/out/job-1/model/" and "adapterS3Uri" not in full


def test_same_timestamp_never_moves_backwards_and_terminal_is_final():
    assert apply([detail("InProgress", "Training", 5), detail("InProgress", "Downloading", 5)])["secondaryStatus"] \
        == "Training"
    failed = apply([detail("Failed", "Failed", 5, FailureReason="AlgorithmError: boom"),
                    detail("InProgress", "Training", 9)])
    assert failed["phase"] == "Failed" and failed["failureReason"] == "AlgorithmError: boom"
    conds = {c["type"]: c["status"] for c in failed["conditions"]}
    assert conds == {"Ready": "False", "Progressing": "False", "Failed": "True"}


def test_each_transition_yields_one_event():
    current: dict = {}
    reasons = []
    for d in (detail("InProgress", "Starting", 1), detail("InProgress", "Starting", 1),
              detail("InProgress", "Training", 2), detail("Completed", "Completed", 3)):
        patch, events = st.from_training_job(d, current, generation=1, now=NOW)
        current = {**current, **patch}
        reasons += [e[1] for e in events]
    assert reasons == ["Starting", "Training", "TrainingJobCompleted"]
