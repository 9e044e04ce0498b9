"""`llama-operator demo`: the whole product on one machine, with no cluster and no AWS account.

It starts the embedded default (Kubernetes API emulator, local SageMaker service, moto's S3 and
SQS), runs the real operator against it as its own process, builds a tiny Llama and uploads it with
a DailyDialog slice, applies `manifests/examples/finetune-local.yaml` and `endpoint-local.yaml`,
follows both resources until the endpoint serves, asks it a few DailyDialog questions at once, and
prints the `kubectl get`-style table. Everything it started is stopped at the end, unless
`--keep-running`."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from llama_operator import paths
from llama_operator.local.demo import scaling
from llama_operator.local.demo.answers import sampled_answer
from llama_operator.local.kubernetes.table import printer_columns, render, rows

BUCKET = "llama-operator-local"
BASE_MODEL_PREFIX = "models/tiny-llama/"
DATA_PREFIX = "data/dailydialog/"
STEP_LINE = re.compile(r"\[train\] step=(\d+)/(\d+)\S* .*?loss=([0-9.eE+-]+)")
FINAL_PHASES = {"LlamaFinetune": {"Completed", "Failed", "Stopped"}, "LlamaEndpoint": {"InService", "Failed", "Degraded"}}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _examples() -> list[dict]:
    examples = paths.manifests_dir() / "examples"
    return [yaml.safe_load((examples / f).read_text()) for f in ("finetune-local.yaml", "endpoint-local.yaml")]


def _upload_dir(s3, local: Path, prefix: str) -> int:
    count = 0
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.upload_file(str(path), BUCKET, prefix + path.relative_to(local).as_posix())
        count += 1
    return count


def prepare_inputs(stack, work: Path, rows_: int) -> list[str]:
    """Tiny base model and a DailyDialog slice into the local S3; returns test prompts."""
    import datasets
    import transformers

    from llama_operator.local.demo.tinymodel import build_tiny_llama, dailydialog_dir

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    s3 = stack.client("s3")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=BUCKET)
    # big enough to learn some DailyDialog in a couple of CPU minutes (tests use the default, smaller one)
    model_dir = build_tiny_llama(work / "base-model", vocab_size=2048, hidden_size=128, num_layers=4,
                                 intermediate_size=384, tokenizer_rows=8000)
    say(f"built a tiny Llama base model ({_size_mb(model_dir):.1f} MB) -> s3://{BUCKET}/{BASE_MODEL_PREFIX}")
    _upload_dir(s3, model_dir, BASE_MODEL_PREFIX)
    full = datasets.load_from_disk(str(dailydialog_dir()))
    subset = datasets.DatasetDict({"train": full["train"].select(range(min(rows_, len(full["train"])))),
                                   "test": full["test"].select(range(32))})
    data_dir = work / "dailydialog"
    shutil.rmtree(data_dir, ignore_errors=True)
    subset.save_to_disk(str(data_dir))
    _upload_dir(s3, data_dir, DATA_PREFIX)
    say(f"uploaded {len(subset['train'])} DailyDialog conversations -> s3://{BUCKET}/{DATA_PREFIX}")
    return [question(row["convo"]) for row in subset["test"]]


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def start_operator(stack, kubeconfig: Path, log_path: Path) -> subprocess.Popen:
    # components send no events: read them every second (a metric period of the demo's --scaling)
    env = {**os.environ, **stack.env, "PYTHONUNBUFFERED": "1", "LLAMA_OPERATOR_COMPONENT_POLL_SECONDS": "1"}
    cmd = [sys.executable, "-m", "llama_operator", "run", "--all-namespaces", "--standalone",
           "--kubeconfig", str(kubeconfig), "--resync-seconds", "30"]
    log = open(log_path, "ab")  # noqa: SIM115 (the child owns it for its lifetime)
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Follower:
    """Prints each phase change once, and the training steps as a progress bar."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.phases: dict[str, str] = {}
        self.losses: list[tuple[int, float]] = []
        self.total_steps = 0
        self.shown_width = -1

    def job_logs(self, job: str) -> list[Path]:
        return sorted((self.state_dir / "training-jobs" / job / "logs").glob("algo-*.log"))

    def observe(self, obj: dict | None) -> str | None:
        if obj is None:
            return None
        kind, name = obj["kind"], obj["metadata"]["name"]
        status = obj.get("status") or {}
        phase = status.get("phase")
        detail = status.get("secondaryStatus") or ""
        key = f"{kind}/{name}"
        shown = phase if detail in ("", phase) else f"{phase} ({detail})"
        if phase and self.phases.get(key) != shown:
            self.phases[key] = shown
            extra = status.get("failureReason") or ""
            say(f"{key}: {shown}" + (f": {extra}" if extra else ""))
        if kind == "LlamaFinetune" and status.get("trainingJobName"):
            self._progress(status["trainingJobName"])
        return phase

    def _progress(self, job: str) -> None:
        logs = self.job_logs(job)
        if not logs:
            return
        seen = {s for s, _ in self.losses}
        for line in logs[0].read_text(errors="replace").splitlines():
            match = STEP_LINE.search(line)
            if match and int(match.group(1)) not in seen:
                step, total, loss = int(match.group(1)), int(match.group(2)), float(match.group(3))
                self.total_steps = total
                self.losses.append((step, loss))
                seen.add(step)
                width = 30
                filled = int(width * step / max(total, 1))
                if filled - self.shown_width < 3 and step != total:  # about ten lines, not one per log step
                    continue
                self.shown_width = filled
                print(f"    train [{'#' * filled}{'.' * (width - filled)}] step {step:>4}/{total} loss {loss:.4f}",
                      flush=True)


def plot_loss(losses: list[tuple[int, float]], out: Path) -> Path | None:
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps, values = zip(*sorted(losses))
    ax.plot(steps, values, marker="o", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("LlamaFinetune tiny-llama")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def ask(stack, endpoint: str, prompts: list[str], max_new_tokens: int) -> tuple[list[tuple[str, str]], float]:
    runtime = stack.client("sagemaker-runtime")

    def one(prompt: str) -> tuple[str, str]:
        return prompt, sampled_answer(runtime, endpoint, prompt, max_new_tokens)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(one, prompts))
    return answers, time.monotonic() - started


def sagemaker_leftovers(sm, ep_status: dict) -> list[str]:
    """The endpoint, config and model the operator had made, if any still exists after the delete."""
    left = [f"endpoint {e['EndpointName']}" for e in sm.list_endpoints()["Endpoints"]]
    for kind, key, describe in (("endpoint config", "endpointConfigName", sm.describe_endpoint_config),
                                ("model", "modelName", sm.describe_model)):
        name = ep_status.get(key)
        if not name:
            continue
        try:
            describe(**{"EndpointConfigName" if kind == "endpoint config" else "ModelName": name})
            left.append(f"{kind} {name}")
        except sm.exceptions.ClientError:
            pass
    return left


def table(kube, namespace: str = "default") -> str:
    crds = {f.stem: yaml.safe_load(f.read_text()) for f in paths.crds_dir().glob("llama*.yaml")}
    parts = []
    for plural in ("llamafinetunes", "llamaendpoints"):
        columns = printer_columns(crds[plural])
        objects = kube.list(plural, namespace)
        parts.append(render(rows(objects, columns)))
    return "\n\n".join(parts)


def question(convo: str) -> str:
    """The last utterance of a DailyDialog conversation (its final turn is the bare speaker tag
    whose reply is wanted), without the speaker tag."""
    turns = [t.strip() for t in convo.split("##") if t.strip()]
    turns = [t for t in turns if t.partition(":")[2].strip()]
    last = turns[-1] if turns else convo
    return last.partition(":")[2].strip() or last


def chat_prompt(text: str) -> str:
    # the tiny tokenizer has no chat template, so the job trained on the Llama-2 chat format
    return f"[INST] {text} [/INST]"


def _image_environments() -> None:
    """The local service runs each job and endpoint in its image's environment (docs/images.md);
    building them the first time is the slow part, so it is done, and said, up front."""
    from llama_operator.local.sagemaker import imageenv

    envs = imageenv.ImageEnvironments()
    if not envs.ready():
        say(f"building the container images' environments under {envs.root} "
            "(first run only: torch with its CUDA libraries for each image, several GB, a few minutes)")
    imageenv.prebuild(envs, log_line=lambda line: say("image environment: " + line))


def hold(operator, operator_log: Path, poll_seconds: float = 1.0) -> bool:
    """Keep everything up until Ctrl-C (True) or until the operator dies under the user (False,
    said): with it gone nothing reconciles any more, so the demo stops rather than seem alive."""
    with contextlib.suppress(KeyboardInterrupt):
        while operator.poll() is None:
            time.sleep(poll_seconds)
    if operator.poll() is None:
        return True
    say(f"the operator exited with code {operator.returncode} while everything was kept running; "
        f"see {operator_log}; stopping the embedded default")
    return False


def run(args: argparse.Namespace) -> int:
    from llama_operator.local.kubernetes.server import EmbeddedKubernetes
    from llama_operator.local.stack import LocalStack

    started = time.monotonic()
    work = Path(args.work_dir).resolve()
    if work.exists() and not args.keep_state:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    finetune, endpoint = _examples()
    namespace = finetune["metadata"].get("namespace", "default")
    ok, lora_status, scaling_status, components_status, lora_adapters = False, {}, {}, {}, {}
    with contextlib.ExitStack() as cleanup:
        _image_environments()
        say("starting the embedded default: local SageMaker service, S3 and SQS (moto), Kubernetes API")
        # --scaling: an autoscaling metric period of scaling.PERIOD (a second) instead of a minute
        stack = cleanup.enter_context(LocalStack(work / "sagemaker",
                                                 autoscaling_period=scaling.PERIOD if args.scaling else None))
        kube = EmbeddedKubernetes().start()
        cleanup.callback(kube.stop)
        kubeconfig = kube.write_kubeconfig(work / "kubeconfig")
        prompts = prepare_inputs(stack, work, args.rows)
        operator_log = work / "operator.log"
        operator = start_operator(stack, kubeconfig, operator_log)
        cleanup.callback(stop_process, operator)
        say(f"operator started (pid {operator.pid}, log {operator_log})")

        for obj in (finetune, endpoint):
            kube.apply(obj)
            say(f"applied {obj['kind']}/{obj['metadata']['name']}")

        follower = Follower(work / "sagemaker")
        deadline = time.monotonic() + args.timeout
        ft_name, ep_name = finetune["metadata"]["name"], endpoint["metadata"]["name"]
        while time.monotonic() < deadline:
            if operator.poll() is not None:
                say(f"the operator exited with code {operator.returncode}; see {operator_log}")
                break
            ft_phase = follower.observe(kube.get("llamafinetunes", namespace, ft_name))
            ep_phase = follower.observe(kube.get("llamaendpoints", namespace, ep_name))
            if ft_phase in {"Failed", "Stopped"} or ep_phase in FINAL_PHASES["LlamaEndpoint"]:
                break
            time.sleep(1)
        else:
            say(f"gave up waiting after {args.timeout:.0f}s")

        ft = kube.get("llamafinetunes", namespace, ft_name) or {}
        ep = kube.get("llamaendpoints", namespace, ep_name) or {}
        job = (ft.get("status") or {}).get("trainingJobName")
        if job and follower.losses:
            png = plot_loss(follower.losses, follower.job_logs(job)[0].parent / "loss.png")
            say(f"loss curve: {png}")
        ep_status = ep.get("status") or {}
        if ep_status.get("phase") == "InService":
            questions = prompts[: args.prompts]
            answers, seconds = ask(stack, ep_status["endpointName"], [chat_prompt(q) for q in questions],
                                   args.max_new_tokens)
            words = sum(len(a.split()) for _, a in answers)
            say(f"{len(answers)} concurrent requests answered in {seconds:.2f}s "
                f"({words / max(seconds, 1e-9):.1f} words/s generated)")
            for q, (_, answer) in zip(questions, answers):
                print(f"  Q: {q[:90]}\n  A: {answer.strip()[:120] or '<empty>'}")
            ok = all(a.strip() for _, a in answers) and (ft.get("status") or {}).get("phase") == "Completed"
            served = ok  # the parts below each need only the fine-tuned model
            if ok and args.lora:
                from llama_operator.local.demo import lora

                ok, lora_status, lora_adapters = lora.run(kube, stack, namespace, ft["status"]["modelS3Uri"],
                                                          questions[0], chat_prompt(questions[0]),
                                                          args.max_new_tokens, args.timeout, say)
            if served and args.scaling:
                scaled, scaling_status = scaling.run(kube, stack, namespace, ft["status"]["modelS3Uri"],
                                                     [chat_prompt(q) for q in questions], args.timeout, say, operator)
                ok = ok and scaled
                from llama_operator.local.demo import components

                woke, components_status = components.run(kube, stack, namespace, ft["status"]["modelS3Uri"],
                                                         chat_prompt(questions[0]), args.max_new_tokens,
                                                         args.timeout, say, operator, adapters=lora_adapters)
                ok = ok and woke
        print()
        print(table(kube, namespace))
        print()
        if args.keep_running:
            print("Everything stays up. In another shell:")
            for name, value in stack.env.items():  # the local services' fixed dummy credentials included
                print(f"  export {name}={value}")
            print(f"  export KUBECONFIG={kubeconfig}")
            print("  kubectl get llamafinetunes,llamaendpoints")
            print("Press Ctrl-C to stop.")
            ok = hold(operator, operator_log) and ok
        else:
            for plural, name in (("llamaendpoints", ep_name), ("llamafinetunes", ft_name)):
                kube.delete(plural, namespace, name)
            gone_by = time.monotonic() + 120
            while time.monotonic() < gone_by and (kube.get("llamaendpoints", namespace, ep_name)
                                                  or kube.get("llamafinetunes", namespace, ft_name)):
                time.sleep(1)
            leftovers = sagemaker_leftovers(stack.client("sagemaker"), ep_status)
            for extra in (lora_status, scaling_status, components_status):
                leftovers += [x for x in sagemaker_leftovers(stack.client("sagemaker"), extra)
                              if not x.startswith("endpoint ")]  # every endpoint is listed above already
            say("deleted both resources; SageMaker objects left: " + (", ".join(leftovers) or "none"))
            ok = ok and not leftovers
    say(f"demo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.0f}s")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llama-operator demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=".demo", help="where state, logs and the loss curve go (default .demo)")
    parser.add_argument("--rows", type=int, default=4000, help="DailyDialog training conversations to upload")
    parser.add_argument("--prompts", type=int, default=6, help="concurrent questions for the endpoint")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--timeout", type=float, default=540, help="seconds to wait for the endpoint")
    parser.add_argument("--keep-running", action="store_true", help="leave everything up and print how to reach it")
    parser.add_argument("--keep-state", action="store_true", help="reuse --work-dir instead of starting clean")
    parser.add_argument("--lora", action="store_true",
                        help="then train two LoRA adapters on the fine-tuned model and serve both on one endpoint")
    parser.add_argument("--scaling", action="store_true",
                        help="then serve the fine-tuned model with autoscaling, load it until a second instance "
                             "serves and let it scale back in, then as an inference component that scales to "
                             "zero and wakes on a request (one metric period a second)")
    return run(parser.parse_args(argv))
