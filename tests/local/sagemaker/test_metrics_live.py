"""A running job's metrics are in CloudWatch while it runs, as SageMaker puts them there; Describe's
FinalMetricDataList stays empty until the job ends, as its reference says."""

from __future__ import annotations

import time

from llama_operator.aws.metrics import LossReader
from sagemaker_helpers import source_tar, training_request, unique, wait_job

TRAIN_LOGS_THEN_WAITS = """
import time
for step, loss in enumerate((1.5, 0.5)):
    print(f"step={step} loss={loss}", flush=True)
time.sleep(120)
"""

NAMESPACE = "/aws/sagemaker/TrainingJobs"
LOSS = [{"Name": "train:loss", "Regex": r"loss=([0-9.]+)"}]


def test_loss_is_in_cloudwatch_while_the_job_runs_and_final_metrics_only_at_the_end(sm, s3, stack):
    name = unique("live")
    request = training_request(name, source_tar(s3, {"train.py": TRAIN_LOGS_THEN_WAITS}, f"src/{name}/sourcedir.tar.gz"))
    request["AlgorithmSpecification"]["MetricDefinitions"] = LOSS
    sm.create_training_job(**request)
    cw = stack.client("cloudwatch")
    reader = LossReader(lambda: cw, interval=0)  # the operator's read, unthrottled for the test

    deadline = time.monotonic() + 60
    loss = None
    while loss is None:
        assert time.monotonic() < deadline, "no train:loss in CloudWatch while the job ran"
        time.sleep(0.5)
        d = sm.describe_training_job(TrainingJobName=name)
        loss = reader.read(name, d.get("TrainingStartTime"))
    d = sm.describe_training_job(TrainingJobName=name)
    assert d["TrainingJobStatus"] == "InProgress" and d["SecondaryStatus"] == "Training"
    assert not d.get("FinalMetricDataList")          # set only when the job ends
    assert loss in (1.5, 0.5, 1.0)                   # one line or both, averaged over their minute

    metrics = cw.list_metrics(Namespace=NAMESPACE, MetricName="train:loss",
                              Dimensions=[{"Name": "TrainingJobName", "Value": name}])["Metrics"]
    assert [m["Dimensions"] for m in metrics] == [[{"Name": "TrainingJobName", "Value": name}]]

    sm.stop_training_job(TrainingJobName=name)
    d = wait_job(sm, name, timeout=60)
    assert d["TrainingJobStatus"] == "Stopped"
    assert [(m["MetricName"], m["Value"]) for m in d["FinalMetricDataList"]] == [("train:loss", 0.5)]
    assert LossReader(lambda: cw).read(name, d["TrainingStartTime"]) == 1.0  # both values, one minute
