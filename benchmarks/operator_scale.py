#!/usr/bin/env python3
"""The operator at scale on the embedded default: N LlamaFinetunes and M LlamaEndpoints applied at
once (a GitOps sync), against the local SageMaker service in its scheduled mode, where jobs and
endpoints change state on a timetable and nothing runs (operator/llama_operator/local/sagemaker/
scheduled.py), with a fraction of SageMaker calls answered ThrottlingException.

Prints, for the operator process (`llama-operator run`, as deployed):
- peak RSS;
- reconcile p50/p99: from the apply to the CR's status naming the SageMaker object made for it;
- status lag p50/p99: from a SageMaker state change (its transition time) to the CR status that
  shows it, as a watch on the API server sees it;
- Describe calls: per resource in all (the adoption check at create), and per running job-hour
  and endpoint-hour once every resource has its SageMaker object (the resync; events carry the
  rest), and throttled calls (each one retried);
- lost transitions: resources whose final status is not SageMaker's final state, and the
  intermediate states SageMaker went through that status never showed (coalesced).

  python3 benchmarks/operator_scale.py --finetunes 1000 --endpoints 200 --step 20 --throttle 0.1
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from llama_operator.local.demo.demo import stop_process  # noqa: E402
from llama_operator.local.kubernetes.server import EmbeddedKubernetes  # noqa: E402
from llama_operator.local.stack import LocalStack  # noqa: E402

API = "/apis/llamaops.dev/v1alpha1"
NS = "scale"
BUCKET = "scale-data"


def manifests(finetunes: int, endpoints: int) -> list[dict]:
    examples = ROOT / "manifests" / "examples"
    ft = yaml.safe_load((examples / "finetune-local.yaml").read_text())
    ep = next(d for d in yaml.safe_load_all((examples / "endpoint-local.yaml").read_text())
              if d and d.get("kind") == "LlamaEndpoint")
    out = []
    for i in range(finetunes):
        doc = copy.deepcopy(ft)
        doc["metadata"] = {"name": f"ft-{i:04d}", "namespace": NS}
        doc["spec"].update(baseModel={"s3Uri": f"s3://{BUCKET}/models/base/"}, outputS3Uri=f"s3://{BUCKET}/out/",
                           dataset={"train": f"s3://{BUCKET}/data/", "format": "dailydialog"})
        doc["spec"]["resources"]["instanceCount"] = 1
        out.append(doc)
    for i in range(endpoints):
        doc = copy.deepcopy(ep)
        doc["metadata"] = {"name": f"ep-{i:03d}", "namespace": NS}
        doc["spec"]["model"] = {"s3Uri": f"s3://{BUCKET}/models/tuned-{i % 10}/"}
        out.append(doc)
    return out


class Watch:
    """Every status a watch on the API server delivers, with the time it arrived."""

    def __init__(self, url: str, plurals: list[str]):
        self.seen: dict[tuple[str, str], list[tuple[float, dict]]] = {}
        self._lock = threading.Lock()
        for plural in plurals:
            threading.Thread(target=self._follow, args=(url, plural), daemon=True).start()

    def _follow(self, url: str, plural: str) -> None:
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=None)
        conn.request("GET", f"{API}/{plural}?watch=true&allowWatchBookmarks=false")
        resp = conn.getresponse()
        for line in resp:
            line = line.strip()
            if not line:
                continue
            event = json.loads(line)
            obj = event.get("object") or {}
            now = time.time()
            with self._lock:
                self.seen.setdefault((plural, obj["metadata"]["name"]), []).append((now, obj.get("status") or {}))

    def history(self, plural: str, name: str) -> list[tuple[float, dict]]:
        with self._lock:
            return list(self.seen.get((plural, name), []))


class PeakRss:
    def __init__(self, pid: int):
        self.pid, self.peak_kb = pid, 0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith(("VmHWM:", "VmRSS:")):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            time.sleep(0.5)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def first_at(history, t0: float, pred) -> float | None:
    return next((t for t, st in history if t >= t0 - 1e-3 and pred(st)), None)


def local_calls(stack) -> dict[tuple[str, str], int]:
    with urllib.request.urlopen(stack.env["AWS_ENDPOINT_URL_SAGEMAKER"] + "/_local/calls", timeout=30) as r:
        return {(c["operation"], c["outcome"]): c["count"] for c in json.loads(r.read())}


def run(args) -> dict:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="operator-scale-"))
    extra = ["--scheduled", str(args.step), "--throttle-rate", str(args.throttle), "--max-instances", "1000000"]
    with LocalStack(work / "sagemaker", extra_args=extra) as stack, EmbeddedKubernetes() as kube:
        from botocore.config import Config
        import boto3

        s3 = stack.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        kubeconfig = kube.write_kubeconfig(work / "kubeconfig")
        env = {**os.environ, **stack.env, "PYTHONUNBUFFERED": "1"}
        log = open(work / "operator.log", "ab")  # noqa: SIM115 (the child owns it)
        operator = subprocess.Popen([sys.executable, "-m", "llama_operator", "run", "--all-namespaces", "--standalone",
                                     "--kubeconfig", str(kubeconfig), "--resync-seconds", str(args.resync)],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        rss = PeakRss(operator.pid)
        watch = Watch(kube.url, ["llamafinetunes", "llamaendpoints"])
        try:
            time.sleep(3)  # the operator's first list and watch
            docs = manifests(args.finetunes, args.endpoints)
            applied: dict[tuple[str, str], float] = {}
            started = time.time()
            for doc in docs:
                plural = "llamafinetunes" if doc["kind"] == "LlamaFinetune" else "llamaendpoints"
                code, body = kube.request("POST", f"{API}/namespaces/{NS}/{plural}", doc)
                if code != 201:
                    raise SystemExit(f"apply {doc['metadata']['name']} failed ({code}): {body.get('message')}")
                applied[(plural, doc["metadata"]["name"])] = time.time()
            print(f"applied {len(docs)} resources in {time.time() - started:.1f}s", flush=True)

            def stored_phases() -> dict[tuple[str, str], str | None]:
                """Each resource's phase as the API server holds it (what `kubectl get` shows)."""
                out = {}
                for plural in ("llamafinetunes", "llamaendpoints"):
                    _, body = kube.request("GET", f"{API}/namespaces/{NS}/{plural}")
                    out.update({(plural, o["metadata"]["name"]): (o.get("status") or {}).get("phase")
                                for o in body.get("items", [])})
                return out

            def settled(key, phases) -> bool:
                return phases.get(key) == ("Completed" if key[0] == "llamafinetunes" else "InService")

            def named(key) -> bool:
                field = "trainingJobName" if key[0] == "llamafinetunes" else "endpointName"
                return any(st.get(field) for _, st in watch.history(*key))

            steady: tuple[float, dict] | None = None  # when every resource had its SageMaker object
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline and operator.poll() is None:
                if steady is None and all(named(k) for k in applied):
                    steady = (time.time(), local_calls(stack))
                phases = stored_phases()
                waiting = [k for k in applied if not settled(k, phases)]
                if not waiting:
                    break
                print(f"  {len(applied) - len(waiting)}/{len(applied)} settled, operator RSS "
                      f"{rss.peak_kb / 1024:.0f} MB", flush=True)
                time.sleep(10)
            elapsed, ended = time.time() - started, time.time()
            time.sleep(2)  # the watch's last events
            phases = stored_phases()
            calls = local_calls(stack)  # before this script's own Describe calls below
        finally:
            stop_process(operator)

        sm = boto3.client("sagemaker", region_name=stack.env["AWS_DEFAULT_REGION"],
                          endpoint_url=stack.env["AWS_ENDPOINT_URL_SAGEMAKER"],
                          aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"],
                          config=Config(retries={"mode": "standard", "max_attempts": 20}))
        return measure(args, sm, watch, applied, calls, rss.peak_kb, elapsed, operator.returncode, steady, ended,
                       phases)


def measure(args, sm, watch, applied, calls, peak_kb, elapsed, operator_rc, steady, ended, phases) -> dict:
    """`phases`: each resource's final phase as stored; `lost` compares it with SageMaker's final
    state, `watch_missed` counts final states the benchmark's own watch never delivered."""
    reconcile, lags, coalesced, lost, watch_missed = [], [], 0, [], []
    since = steady[0] if steady else ended
    job_s = endpoint_s = 0.0  # running time after `since`, when creating was over
    for (plural, name), t_apply in applied.items():
        hist = watch.history(plural, name)
        if plural == "llamafinetunes":
            made = first_at(hist, t_apply, lambda st: st.get("trainingJobName"))
            job = next((st["trainingJobName"] for _, st in reversed(hist) if st.get("trainingJobName")), None)
            if made is None or job is None:
                lost.append(name)
                continue
            reconcile.append(made - t_apply)
            d = sm.describe_training_job(TrainingJobName=job)
            end = (d.get("TrainingEndTime") or d["LastModifiedTime"]).timestamp()
            job_s += max(0.0, min(end, ended) - max(d["CreationTime"].timestamp(), since))
            order = [t["Status"] for t in d["SecondaryStatusTransitions"]]
            for i, tr in enumerate(d["SecondaryStatusTransitions"]):
                later = set(order[i:])  # this state, or one after it (several steps in one write)
                shown = first_at(hist, tr["StartTime"].timestamp(), lambda st: st.get("secondaryStatus") in later)
                if shown is None:
                    lost.append(f"{name}:{tr['Status']}")
                    continue
                lags.append(shown - tr["StartTime"].timestamp())
                if not any(st.get("secondaryStatus") == tr["Status"] for _, st in hist):
                    coalesced += 1
            if phases.get((plural, name)) != d["TrainingJobStatus"]:
                lost.append(f"{name}:final")
            elif not hist or hist[-1][1].get("phase") != d["TrainingJobStatus"]:
                watch_missed.append(name)
        else:
            made = first_at(hist, t_apply, lambda st: st.get("endpointName"))
            ep = next((st["endpointName"] for _, st in reversed(hist) if st.get("endpointName")), None)
            if made is None or ep is None:
                lost.append(name)
                continue
            reconcile.append(made - t_apply)
            d = sm.describe_endpoint(EndpointName=ep)
            endpoint_s += max(0.0, ended - max(d["CreationTime"].timestamp(), since))
            if d["EndpointStatus"] == "InService":
                shown = first_at(hist, d["LastModifiedTime"].timestamp(), lambda st: st.get("phase") == "InService")
                if shown is None:
                    lost.append(f"{name}:InService")
                else:
                    lags.append(shown - d["LastModifiedTime"].timestamp())
            if phases.get((plural, name)) != d["EndpointStatus"]:
                lost.append(f"{name}:final")
            elif not hist or hist[-1][1].get("phase") != d["EndpointStatus"]:
                watch_missed.append(name)
    before = steady[1] if steady else calls

    def steady_calls(operation: str) -> int:
        return sum(n - before.get((op, outcome), 0) for (op, outcome), n in calls.items() if op == operation)

    describes = sum(n for (op, _), n in calls.items() if op.startswith("Describe"))
    throttled = sum(n for (_, outcome), n in calls.items() if outcome == "throttled")
    answered = sum(n for (_, outcome), n in calls.items() if outcome == "answered")
    return {
        "finetunes": args.finetunes, "endpoints": args.endpoints, "step_seconds": args.step,
        "throttle_rate": args.throttle, "resync_seconds": args.resync, "elapsed_s": round(elapsed, 1),
        "operator_exit": operator_rc, "peak_rss_mb": round(peak_kb / 1024, 1),
        "reconcile_p50_s": round(pct(reconcile, 0.5), 3), "reconcile_p99_s": round(pct(reconcile, 0.99), 3),
        "status_lag_p50_s": round(pct(lags, 0.5), 3), "status_lag_p99_s": round(pct(lags, 0.99), 3),
        "status_lag_max_s": round(max(lags), 3) if lags else None, "transitions_measured": len(lags),
        "describe_calls": describes,
        "describe_calls_per_resource": round(describes / max(len(applied), 1), 2),
        "describe_per_running_job_hour": round(steady_calls("DescribeTrainingJob") / (job_s / 3600), 2)
        if job_s else None,
        "describe_per_endpoint_hour": round(steady_calls("DescribeEndpoint") / (endpoint_s / 3600), 2)
        if endpoint_s else None,
        "steady_window_job_hours": round(job_s / 3600, 3),
        "sagemaker_calls_answered": answered, "sagemaker_calls_throttled": throttled,
        "lost": len(lost), "lost_examples": lost[:10], "watch_missed_final": watch_missed[:10], "intermediate_states_coalesced": coalesced,
        "calls_by_operation": {f"{op} {outcome}": n for (op, outcome), n in sorted(calls.items())},
        "mean_reconcile_s": round(statistics.fmean(reconcile), 3) if reconcile else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--finetunes", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=200)
    ap.add_argument("--step", type=float, default=20.0, help="seconds between a job's or endpoint's state changes")
    ap.add_argument("--throttle", type=float, default=0.1, help="fraction of SageMaker calls throttled")
    ap.add_argument("--resync", type=float, default=600.0, help="the operator's Describe fallback interval")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--work-dir")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    result = run(args)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 and result["operator_exit"] in (0, -15, None) else 1


if __name__ == "__main__":
    sys.exit(main())
