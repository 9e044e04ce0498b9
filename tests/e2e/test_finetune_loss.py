"""The LOSS column while training runs: the operator reads the running job's train:loss from
CloudWatch (where SageMaker puts it during the run) into status.trainingLoss, and once the job has
ended FinalMetricDataList decides. CloudWatch refusing never gets in the way of the reconcile."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from operator_harness import BUCKET, InProcessOperator, finetune, status_of, unique, wait_for
from llama_operator.aws.metrics import LossReader
from llama_operator.settings import Settings

HOUR = 3600

# Logs two per-step lines as the real workload does, then holds until the test releases it (a file
# named after the job), then logs the last step and ends.
TRAIN_ENTRY = '''
import json, os, pathlib, time
job = json.loads(os.environ.get("SM_TRAINING_ENV", "{{}}")).get("job_name", "")
pathlib.Path(os.environ["SM_MODEL_DIR"], "trained.json").write_text("{{}}")
for step, loss in enumerate((1.5, 0.5)):
    print(f"[train] step={{step}}/3 loss={{loss}} lr=0.0002", flush=True)
deadline = time.time() + 90
while not pathlib.Path({release!r}, job).exists() and time.time() < deadline:
    time.sleep(0.2)
print("[train] step=2/3 loss=0.25 lr=0.0002", flush=True)
'''


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("release")


@pytest.fixture(scope="module")
def loss_workloads(tmp_path_factory, release_dir) -> Path:
    root = tmp_path_factory.mktemp("loss-workloads")
    for name in ("train_entry.py", "train.py"):
        (root / name).write_text(TRAIN_ENTRY.format(release=str(release_dir)))
    return root


@pytest.fixture(scope="module")
def settings(local_aws, loss_workloads):
    # Resync an hour away: the InProgress loss can only come from the CloudWatch poll, here every second.
    return Settings(region=local_aws.env["AWS_DEFAULT_REGION"],
                    events_queue_url=local_aws.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"],
                    resync_seconds=HOUR, workloads_dir=loss_workloads, retry_seconds=0.5,
                    stop_poll_seconds=0.5, events_wait_seconds=1, extra={"loss_poll_seconds": "1"})


def _release(release_dir: Path, job: str) -> None:
    (release_dir / job).write_text("go")


def test_loss_shows_while_in_progress_then_the_final_metric(kube, local_aws, settings, release_dir):
    with InProcessOperator(settings, kube.kubeconfig_path) as op:
        assert op.registry.app.loss.interval == 1.0
        name = unique("loss")
        kube.apply(finetune(name, BUCKET))
        st = wait_for(lambda: (s := status_of(kube, name)).get("trainingLoss") is not None and s,
                      timeout=90, what="a training loss in status")
        assert st["phase"] == "InProgress" and st["secondaryStatus"] == "Training", st
        assert st["trainingLoss"] in (1.5, 0.5, 1.0)  # a line or both, as CloudWatch's one-minute average
        job = st["trainingJobName"]
        d = local_aws.client("sagemaker").describe_training_job(TrainingJobName=job)
        assert d["TrainingJobStatus"] == "InProgress" and not d.get("FinalMetricDataList")  # only from CloudWatch

        _release(release_dir, job)
        st = wait_for(lambda: (s := status_of(kube, name)).get("phase") in ("Completed", "Failed") and s,
                      timeout=90, what=f"{name} to finish")
        assert st["phase"] == "Completed", st
        assert st["trainingLoss"] == 0.25  # FinalMetricDataList's last value, once the job has ended


class RefusingCloudWatch:
    def __init__(self):
        self.calls = 0

    def get_metric_statistics(self, **_):
        self.calls += 1
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized to perform "
                                     "cloudwatch:GetMetricStatistics"}}, "GetMetricStatistics")


def test_cloudwatch_refusing_never_fails_the_reconcile(kube, settings, release_dir, caplog):
    refusing = RefusingCloudWatch()
    with InProcessOperator(settings, kube.kubeconfig_path) as op:
        op.registry.app.loss = LossReader(lambda: refusing, interval=0.5)
        name = unique("denied")
        kube.apply(finetune(name, BUCKET))
        wait_for(lambda: refusing.calls >= 2, timeout=90, what="the operator to try CloudWatch")
        st = status_of(kube, name)
        assert st["phase"] == "InProgress" and "trainingLoss" not in st
        _release(release_dir, st["trainingJobName"])
        st = wait_for(lambda: (s := status_of(kube, name)).get("phase") in ("Completed", "Failed") and s,
                      timeout=90, what=f"{name} to finish")
    assert st["phase"] == "Completed", st
    assert st["trainingLoss"] == 0.25
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Synced"]["status"] == "True" and conds["Ready"]["status"] == "True"
    denied = [r for r in caplog.records if "AccessDenied" in r.getMessage()]
    assert len(denied) == 1 and "cloudwatch:GetMetricStatistics" in denied[0].getMessage()  # logged once
