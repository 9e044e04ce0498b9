"""Two replicas, as manifests/deployment.yaml runs them: kopf peering through the ClusterKopfPeering
"llama-operator", each pod with its own POD_NAME. Exactly one acts; when it stops (a rolling update
sends SIGTERM), the other takes over. With equal priorities kopf would pause both."""

from __future__ import annotations

import copy
import uuid

import yaml

from conftest import BUCKET
from operator_harness import PLURAL, SubprocessOperator, finetune, wait_for
from llama_operator.local.kubernetes import EmbeddedKubernetes, crd_resources
from llama_operator.paths import crds_dir, manifests_dir
from llama_operator.runner import peering_priority

PEERING = "llama-operator"
HANDLED = "reconcile' succeeded"  # kopf names it register.<locals>.reconcile


def finished(kube, name: str) -> dict | None:
    st = ((kube.get(PLURAL, "default", name) or {}).get("status")) or {}
    return st if st.get("phase") in ("Completed", "Failed") else None


def jobs_for(sm, name: str) -> list[str]:
    return [j["TrainingJobName"] for j in sm.list_training_jobs(NameContains=name, MaxResults=100)["TrainingJobSummaries"]]


def test_one_replica_acts_and_the_other_takes_over_when_it_stops(local_aws, workloads, tmp_path):
    sm = local_aws.client("sagemaker")
    peering_kind = {k: v for k, v in crd_resources(manifests_dir()).items() if k.startswith("kopf.dev/")}
    (peering_obj,) = [d for d in yaml.safe_load_all((manifests_dir() / "peering.yaml").read_text())
                      if d and d.get("kind") == "ClusterKopfPeering"]
    env = {"LLAMA_OPERATOR_RESYNC_SECONDS": "3600", "LLAMA_OPERATOR_WORKLOADS_DIR": str(workloads), **local_aws.env}
    pods = sorted(["llama-operator-5c9d7-k2x8p", "llama-operator-5c9d7-w7q4m"], key=peering_priority, reverse=True)
    with EmbeddedKubernetes(crds_dir=crds_dir(), extra_resources=peering_kind) as kube:
        code, body = kube.request("POST", f"/apis/{peering_obj['apiVersion']}/clusterkopfpeerings",
                                  copy.deepcopy(peering_obj))
        assert code == 201, body
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        replicas = {pod: SubprocessOperator(kubeconfig, {**env, "POD_NAME": pod}, tmp_path / f"{pod}.log",
                                            peering=PEERING) for pod in pods}
        leader, standby = (replicas[p] for p in pods)  # the higher priority leads
        for replica in replicas.values():
            replica.start()
        try:
            # kopf starts paused; the leader resumes once it sees no peer above it. The standby stays
            # paused (or pauses again, if it saw the leader's keep-alive only after its own).
            wait_for(lambda: "Resuming operations" in leader.log(), timeout=60, what="the leader to start work")
            first = f"ha-{uuid.uuid4().hex[:6]}"
            kube.apply(finetune(first, BUCKET))
            st = wait_for(lambda: finished(kube, first), timeout=120, what=f"{first} to finish")
            assert st["phase"] == "Completed", (st, leader.log()[-3000:])
            assert jobs_for(sm, first) == [st["trainingJobName"]]
            assert HANDLED in leader.log()
            assert "kopf.objects" not in standby.log()  # paused: not a single handler of any kind ran there

            assert leader.terminate() == 0
            wait_for(lambda: "Resuming operations" in standby.log(), timeout=60,
                     what="the standby to resume once the leader left the peering")
            second = f"ha-{uuid.uuid4().hex[:6]}"
            kube.apply(finetune(second, BUCKET))
            st = wait_for(lambda: finished(kube, second), timeout=120, what=f"{second} to finish")
            assert st["phase"] == "Completed", (st, standby.log()[-3000:])
            assert jobs_for(sm, second) == [st["trainingJobName"]]
            after_resume = standby.log().rsplit("Resuming operations", 1)[1]
            assert HANDLED in after_resume
        finally:
            for replica in replicas.values():
                if replica.proc and replica.proc.poll() is None:
                    replica.kill()
