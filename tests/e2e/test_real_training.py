"""LlamaFinetune end to end with the project's real training workload (workloads/train_entry.py under
torchrun, on two local hosts) on a tiny random Llama and DailyDialog, driven by the operator against
the embedded Kubernetes API and the local SageMaker service, for each method: each job runs in the
environment of its method's image (the PyTorch training image plus the source's requirements.txt
for DeepSpeed ZeRO-3; the SMP image's torch and transformers 4 for smp)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from operator_harness import BUCKET
from operator_harness import PLURAL, InProcessOperator, finetune, wait_for
from llama_operator import paths
from llama_operator.settings import Settings

ENTRY = paths.workloads_dir() / "train_entry.py"


def _upload_dir(s3, root: Path, prefix: str) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(root).as_posix()}")


@pytest.mark.skipif(not ENTRY.is_file(), reason="workloads/train_entry.py is not in the tree")
@pytest.mark.parametrize("method", [{"type": "deepspeed", "zeroStage": 3}, {"type": "smp"}],
                         ids=["deepspeed-zero3", "smp"])
def test_real_workload_fine_tunes_a_tiny_llama_in_its_image(kube, local_aws, tmp_path, method):
    from llama_operator.local.demo import tinymodel

    s3 = local_aws.client("s3")
    _upload_dir(s3, tinymodel.build_tiny_llama(tmp_path / "tiny"), "real/base")
    _upload_dir(s3, Path(tinymodel.dailydialog_dir()), "real/dailydialog")
    settings = Settings(region=local_aws.env["AWS_DEFAULT_REGION"],
                        events_queue_url=local_aws.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"], resync_seconds=3600,
                        workloads_dir=paths.workloads_dir(), retry_seconds=0.5, events_wait_seconds=1)
    spec = {
        "baseModel": {"s3Uri": f"s3://{BUCKET}/real/base/"},
        "dataset": {"train": f"s3://{BUCKET}/real/dailydialog/", "format": "dailydialog"},
        "method": method,
        "hyperparameters": {"maxSteps": 3, "maxSequenceLength": 128, "perDeviceBatchSize": 2,
                            "precision": "fp32", "loggingSteps": 1, "learningRate": 0.001},
        # SMP v2 runs only on p4d/p4de/p5 (the operator refuses others); here they are CPU processes
        "resources": {"instanceType": "ml.p4d.24xlarge" if method["type"] == "smp" else "ml.m5.xlarge",
                      "instanceCount": 2, "volumeSizeGB": 30,
                      "maxRuntimeSeconds": 900},
    }
    with InProcessOperator(settings, kube.kubeconfig_path):
        name = f"real-{method['type']}"
        kube.apply(finetune(name, BUCKET, **spec))
        st = wait_for(lambda: (s := (kube.get(PLURAL, "default", name) or {}).get("status") or {})
                      and s.get("phase") in ("Completed", "Failed") and s, timeout=420, interval=1, what="training")
        logs = sorted((local_aws.state_dir / "training-jobs").glob(f"{st.get('trainingJobName')}/logs/*.log"))
        assert st["phase"] == "Completed", (st.get("failureReason"), {p.name: p.read_text()[-3000:] for p in logs})
        log = logs[0].read_text()
        assert re.search(rf"\[train\] method={method['type']} .*world_size=2", log), log[-3000:]
        # the toolkit installed the source's requirements.txt into the image's environment
        profile = "pytorch-training-2.8.0" if method["type"] == "deepspeed" else "smp-2.8.0"
        assert "Installing dependencies from requirements.txt" in log
        assert f"/overlays/{profile}-" in log
    assert st["modelArtifacts"].startswith("s3://") and st["billableSeconds"] >= 1
    bucket, _, prefix = st["modelS3Uri"][len("s3://"):].partition("/")
    keys = {o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}
    assert "config.json" in keys and any(k.endswith(".safetensors") for k in keys), keys
