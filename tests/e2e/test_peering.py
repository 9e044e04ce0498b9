"""Two replicas, as manifests/deployment.yaml runs them: kopf peering through the ClusterKopfPeering
"llama-operator", each pod with its own POD_NAME. Exactly one acts; when it stops (a rolling update
sends SIGTERM), the other takes over. With equal priorities kopf would pause both.

Acting includes the SQS consumer of SageMaker's events: a standby leaves the queue alone. To see
that, the leader here runs without the queue (resync only, hourly), so while it leads nothing may
take the first job's events from the queue; the standby, once it leads, takes them and completes
the job's status from them."""

from __future__ import annotations

import copy
import time
import uuid

import yaml

from operator_harness import BUCKET
from operator_harness import PLURAL, SubprocessOperator, finetune, jobs_for, wait_for
from llama_operator.local.kubernetes.resources import crd_resources
from llama_operator.local.kubernetes.server import EmbeddedKubernetes
from llama_operator.paths import crds_dir, manifests_dir
from llama_operator.handlers.lifecycle import peering_priority

PEERING = "llama-operator"
HANDLED = "reconcile' succeeded"  # kopf names it register.<locals>.reconcile


def finished(kube, name: str) -> dict | None:
    st = ((kube.get(PLURAL, "default", name) or {}).get("status")) or {}
    return st if st.get("phase") in ("Completed", "Failed") else None


def queued(sqs, queue_url: str) -> tuple[int, int]:
    """(messages waiting in the queue, messages received by someone and not yet deleted)."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_one_replica_acts_and_the_other_takes_over_when_it_stops(local_aws, workloads, tmp_path):
    sm, sqs = local_aws.client("sagemaker"), local_aws.client("sqs")
    queue_url = local_aws.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"]
    peering_kind = {k: v for k, v in crd_resources(manifests_dir()).items() if k.startswith("kopf.dev/")}
    (peering_obj,) = [d for d in yaml.safe_load_all((manifests_dir() / "peering.yaml").read_text())
                      if d and d.get("kind") == "ClusterKopfPeering"]
    env = {"LLAMA_OPERATOR_RESYNC_SECONDS": "3600", "LLAMA_OPERATOR_WORKLOADS_DIR": str(workloads), **local_aws.env}
    pods = sorted(["llama-operator-5c9d7-k2x8p", "llama-operator-5c9d7-w7q4m"], key=peering_priority, reverse=True)
    no_queue = {pods[0]: {"LLAMA_OPERATOR_EVENTS_QUEUE_URL": ""}}  # the leader: see the module's docstring
    with EmbeddedKubernetes(crds_dir=crds_dir(), extra_resources=peering_kind) as kube:
        code, body = kube.request("POST", f"/apis/{peering_obj['apiVersion']}/clusterkopfpeerings",
                                  copy.deepcopy(peering_obj))
        assert code == 201, body
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        replicas = {pod: SubprocessOperator(kubeconfig, {**env, "POD_NAME": pod, **no_queue.get(pod, {})},
                                            tmp_path / f"{pod}.log", peering=PEERING) for pod in pods}
        leader, standby = (replicas[p] for p in pods)  # the higher priority leads
        for replica in replicas.values():
            replica.start()
        try:
            # kopf starts paused; the leader resumes once it sees no peer above it. The standby stays
            # paused (or pauses again, if it saw the leader's keep-alive only after its own).
            wait_for(lambda: "Resuming operations" in leader.log(), timeout=60, what="the leader to start work")
            first = f"ha-{uuid.uuid4().hex[:6]}"
            kube.apply(finetune(first, BUCKET))
            job = wait_for(lambda: (kube.get(PLURAL, "default", first).get("status") or {}).get("trainingJobName"),
                           timeout=60, what=f"the leader to create {first}'s training job")
            wait_for(lambda: sm.describe_training_job(TrainingJobName=job)["TrainingJobStatus"] == "Completed",
                     timeout=120, what=f"training job {job} to complete")
            # Its events wait in the queue, untouched: the standby neither receives nor deletes them
            # (a replica consuming them would also have moved the status on).
            wait_for(lambda: queued(sqs, queue_url)[0] >= 1, timeout=10,
                     what="the job's events to wait in the queue (a standby consuming them would empty it)")
            time.sleep(2)  # a standby checks about once a second whether it may receive
            waiting, in_flight = queued(sqs, queue_url)
            assert waiting >= 1 and in_flight == 0, (waiting, in_flight, standby.log()[-3000:])
            assert kube.get(PLURAL, "default", first)["status"].get("phase") not in ("Completed", "Failed")
            assert jobs_for(sm, first) == [job]
            assert HANDLED in leader.log()
            assert "kopf.objects" not in standby.log()  # paused: not a single handler of any kind ran there
            assert "events queue: not receiving while kopf peering has this replica paused" in standby.log()
            assert "events queue: receiving" not in standby.log()

            mark = len(standby.log())  # what the standby logs from here on is after the takeover
            assert leader.terminate() == 0
            wait_for(lambda: "Resuming operations" in standby.log(), timeout=60,
                     what="the standby to resume once the leader left the peering")
            # Once it has taken over, the first job's status is completed (by kopf's resume handler
            # or by the queued events, whichever comes first), the consumer starts receiving (it
            # looks once a second) and the events that waited are received and deleted.
            st = wait_for(lambda: finished(kube, first), timeout=20, what=f"{first}'s status after the takeover")
            assert st["phase"] == "Completed", (st, standby.log()[-3000:])
            wait_for(lambda: "events queue: receiving" in standby.log()[mark:], timeout=10,
                     what="the standby's consumer to start receiving")
            wait_for(lambda: queued(sqs, queue_url) == (0, 0), timeout=30,
                     what="the standby to receive and delete the events that waited")
            second = f"ha-{uuid.uuid4().hex[:6]}"
            kube.apply(finetune(second, BUCKET))
            st = wait_for(lambda: finished(kube, second), timeout=120, what=f"{second} to finish")
            assert st["phase"] == "Completed", (st, standby.log()[-3000:])
            assert jobs_for(sm, second) == [st["trainingJobName"]]
            after_resume = standby.log()[mark:]
            assert HANDLED in after_resume
        finally:
            for replica in replicas.values():
                if replica.proc and replica.proc.poll() is None:
                    replica.kill()
