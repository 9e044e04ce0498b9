"""One training job's run: the SageMaker container contract laid out under a base dir per host
(input data, config files, model and output dirs), the sagemaker-training toolkit (the code
SageMaker's containers run) as the process on each host in its image's environment, and the upload
of what it leaves. N instances are N local hosts on a block of loopback addresses of their own, so
concurrent jobs never share a torch.distributed master address."""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from llama_operator.local.sagemaker import imageenv, metrics, s3io
from llama_operator.local.sagemaker.context import Context
from llama_operator.local.sagemaker.training_status import KIND, JobStatus, failure_reason, final_metrics

log = logging.getLogger(__name__)

FRAMEWORK_MODULE = "local_sagemaker_framework:main"
FRAMEWORK_FILE = imageenv.CONTAINER_DIR / "local_sagemaker_framework.py"
MASTER_PORT_ENV = "LLAMA_OPERATOR_MASTER_PORT"  # read by local_sagemaker_framework
STOP_GRACE_SECONDS = 10

_blocks = itertools.count(random.randint(300, 30000))
_blocks_lock = threading.Lock()


# ---- the container contract -------------------------------------------------------------------

def host_addresses(block: int, count: int) -> list[str]:
    """Loopback addresses for one job's hosts; they resolve to themselves, so the toolkit's
    hostname checks pass without /etc/hosts."""
    block = block % 65000 + 256  # skip 127.0.0.x and 127.0.1.x, which other services use
    return [f"127.{(block >> 8) & 255}.{block & 255}.{i + 1}" for i in range(count)]


def resource_config(hosts: list[str], current: str, instance_type: str) -> dict:
    return {
        "current_host": current,
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "instance_groups": [{"instance_group_name": "homogeneousCluster",
                             "instance_type": instance_type, "hosts": hosts}],
        "network_interface_name": "lo",
    }


def input_data_config(channels: list[dict]) -> dict:
    out = {}
    for ch in channels:
        s3 = ch.get("DataSource", {}).get("S3DataSource", {})
        out[ch["ChannelName"]] = {
            "ContentType": ch.get("ContentType", ""),
            "TrainingInputMode": ch.get("InputMode", "File"),
            "S3DistributionType": s3.get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": ch.get("RecordWrapperType", "None"),
        }
    return out


# ---- the running job --------------------------------------------------------------------------

class _Stop(Exception):
    pass


class JobRun:
    """One job in a thread of its own: lays out its hosts, runs the toolkit on each, stops the
    processes when asked or when one fails, uploads what they leave and records the outcome."""

    def __init__(self, ctx: Context, name: str, images: imageenv.ImageEnvironments):
        self.ctx, self.name, self.images = ctx, name, images
        self.job = JobStatus(ctx, name)
        d = self.job.describe
        self.instance_count = int(d["ResourceConfig"].get("InstanceCount", 1))
        self.dir = ctx.store.dir(KIND, name)
        self.procs: list[subprocess.Popen] = []
        self.failed_first: int | None = None   # the host that failed first: the cause, not a peer's echo
        self.stop_as: str | None = None   # "Stopped" or "MaxRuntimeExceeded"
        self.shutting_down = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._main, name=f"job-{name}", daemon=True)

    # stopping ------------------------------------------------------------------------------
    def request_stop(self, why: str) -> None:
        with self._lock:
            if self.stop_as:
                return
            self.stop_as = why
            procs = list(self.procs)
        for p in procs:
            _signal_group(p, signal.SIGTERM)

    def kill(self, sig) -> None:
        with self._lock:
            procs = list(self.procs)
        for p in procs:
            _signal_group(p, sig)

    def _check_stop(self) -> None:
        if self.stop_as:
            raise _Stop()

    # the job -------------------------------------------------------------------------------
    def _main(self) -> None:
        d = self.job.describe
        started = time.time()
        max_runtime = int(d.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 86400))
        try:
            self.job.transition(None, "Starting", "Preparing the instances for training")
            with _blocks_lock:
                block = next(_blocks)
            hosts = host_addresses(block, self.instance_count)
            self.job.update(TrainingStartTime=time.time())
            self._check_stop()
            self.job.transition(None, "Downloading", "Downloading the training image")
            image_env = self._image_environment()
            self._check_stop()
            self.job.transition(None, "Downloading", "Downloading input data")
            bases = [self._layout(hosts, i) for i in range(len(hosts))]
            self._check_stop()
            self.job.transition(None, "Training", "Training image download completed. Training in progress.")
            self._spawn(hosts, bases, image_env)
            # MetricDefinitions matches -> CloudWatch while it runs
            publisher = metrics.start_publisher(self.name, d, self.dir / "logs", self.ctx.region)
            try:
                codes = self._wait(started, max_runtime)
            finally:
                if publisher:
                    publisher.stop()  # the last lines' values too, before the job is reported ended
            if self.shutting_down:
                return
            if self.stop_as:
                raise _Stop()
            if all(c == 0 for c in codes):
                self.job.transition(None, "Uploading", "Uploading generated training model")
                artifacts = self._upload(bases)
                self._finish_metrics()
                self.job.transition("Completed", "Completed", "Training job completed", end=time.time(),
                                    ModelArtifacts={"S3ModelArtifacts": artifacts})
            else:
                bad = self.failed_first if self.failed_first is not None else \
                    next(i for i, c in enumerate(codes) if c != 0)
                failure = _read(bases[bad] / "output" / "failure")
                self._finish_metrics()
                self.job.transition("Failed", "Failed", "Training job failed", end=time.time(),
                                    failure=failure_reason(failure, codes[bad]))
        except _Stop:
            self.job.transition("Stopping", "Stopping", "Stopping the training job")
            bases = [self.dir / "hosts" / f"algo-{i + 1}" for i in range(self.instance_count)]
            artifacts = None
            try:
                if (bases[0] / "model").exists():
                    artifacts = self._upload(bases)
            except Exception as exc:
                log.warning("job %s: upload after stop failed: %s", self.name, exc)
            self._finish_metrics()
            fields = {"ModelArtifacts": {"S3ModelArtifacts": artifacts}} if artifacts else {}
            if self.stop_as == "MaxRuntimeExceeded":
                self.job.transition("Stopped", "MaxRuntimeExceeded",
                                    f"Training job stopped: it exceeded MaxRuntimeInSeconds ({max_runtime})",
                                    end=time.time(), **fields)
            else:
                self.job.transition("Stopped", "Stopped", "Training job stopped", end=time.time(), **fields)
        except Exception as exc:
            if self.shutting_down:
                return
            log.exception("job %s failed in the service", self.name)
            self.job.transition("Failed", "Failed", "Training job failed", end=time.time(),
                                failure=f"ClientError: {exc}")
        finally:
            self.kill(signal.SIGKILL)

    def _layout(self, hosts: list[str], i: int) -> Path:
        d = self.job.describe
        base = self.dir / "hosts" / f"algo-{i + 1}"
        config = base / "input" / "config"
        for sub in ("model", "output/data", "checkpoints", "code"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        config.mkdir(parents=True, exist_ok=True)
        for ch in d.get("InputDataConfig", []):
            source = ch.get("DataSource", {}).get("S3DataSource")
            if not source or source.get("S3DataType", "S3Prefix") != "S3Prefix":
                raise ValueError(f"channel {ch['ChannelName']!r}: only S3DataSource with S3DataType "
                                 "S3Prefix is supported by the local service")
            found = s3io.download_prefix(self.ctx.s3, source["S3Uri"], base / "input" / "data" / ch["ChannelName"])
            if not found:
                raise ValueError(f"No S3 objects found under S3 URL \"{source['S3Uri']}\" given in input data "
                                 f"source (channel {ch['ChannelName']!r}). Please ensure that objects exist "
                                 "under that S3 prefix.")
        checkpoint = d.get("CheckpointConfig", {}).get("S3Uri")
        if checkpoint:
            s3io.download_prefix(self.ctx.s3, checkpoint, base / "checkpoints")
        hp = dict(d.get("HyperParameters", {}))
        _write(config / "hyperparameters.json", hp)
        _write(config / "resourceconfig.json",
               resource_config(hosts, hosts[i], d["ResourceConfig"].get("InstanceType", "ml.m5.xlarge")))
        _write(config / "inputdataconfig.json", input_data_config(d.get("InputDataConfig", [])))
        (base / "output" / "failure").unlink(missing_ok=True)
        return base

    def _image_environment(self) -> imageenv.Environment:
        """The training image's environment, plus what the source's requirements.txt adds (the
        toolkit installs it at start; done here once per distinct file, see imageenv)."""
        d = self.job.describe
        env = self.images.image(d["AlgorithmSpecification"]["TrainingImage"])
        source = _hyperparameter(d.get("HyperParameters", {}), "sagemaker_submit_directory")
        requirements = None
        if source and source.startswith("s3://"):
            requirements = s3io.read_tar_member(self.ctx.s3, source, "requirements.txt")
        return self.images.overlay(env, requirements, helpers=(FRAMEWORK_FILE,))

    def _spawn(self, hosts: list[str], bases: list[Path], image_env: imageenv.Environment) -> None:
        from llama_operator.local.sagemaker.model_servers import free_port

        d = self.job.describe
        master_port = str(free_port(hosts[0]))
        logs = self.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for i, base in enumerate(bases):
            env = {**os.environ, **self.ctx.child_env, **d.get("Environment", {}),
                   "SAGEMAKER_BASE_DIR": str(base),
                   "SAGEMAKER_TRAINING_MODULE": FRAMEWORK_MODULE,
                   "S3_ENDPOINT_URL": self.ctx.child_env.get("AWS_ENDPOINT_URL_S3", ""),
                   "AWS_REGION": self.ctx.region,
                   "TRAINING_JOB_NAME": self.name,
                   MASTER_PORT_ENV: master_port,
                   "TRAINING_JOB_ARN": d["TrainingJobArn"],
                   "PYTHONUNBUFFERED": "1"}
            # The image's Python and tools (torchrun, s5cmd where the image has it), never the service's.
            env = image_env.child_env(env)
            with open(logs / f"algo-{i + 1}.log", "ab") as out:
                proc = subprocess.Popen(
                    [str(image_env.python), "-m", "sagemaker_training.cli.train"],
                    cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    process_group=0,  # its own group: StopTrainingJob signals the whole tree
                )
            with self._lock:
                self.procs.append(proc)
                stop = self.stop_as
            if stop:
                _signal_group(proc, signal.SIGTERM)

    def _wait(self, started: float, max_runtime: int) -> list[int]:
        stop_sent = None
        while True:
            codes = [p.poll() for p in self.procs]
            if self.failed_first is None:
                self.failed_first = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
            if all(c is not None for c in codes):
                return codes
            if any(c not in (None, 0) for c in codes) and stop_sent is None:
                # One host failed: the others would hang on collectives, so end them.
                self.kill(signal.SIGTERM)
                stop_sent = time.monotonic()
            if self.stop_as and stop_sent is None:
                stop_sent = time.monotonic()
            if stop_sent is not None and time.monotonic() - stop_sent > STOP_GRACE_SECONDS:
                self.kill(signal.SIGKILL)
            if time.time() - started > max_runtime:
                self.request_stop("MaxRuntimeExceeded")
            time.sleep(0.2)

    def _upload(self, bases: list[Path]) -> str:
        d = self.job.describe
        out = d["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        prefix = f"{out}/{self.name}/output"
        s3io.upload_bytes(self.ctx.s3, s3io.tar_gz_dir(bases[0] / "model"), f"{prefix}/model.tar.gz")
        data = bases[0] / "output" / "data"
        if data.exists() and any(data.iterdir()):
            s3io.upload_bytes(self.ctx.s3, s3io.tar_gz_dir(data), f"{prefix}/output.tar.gz")
        checkpoint = d.get("CheckpointConfig", {}).get("S3Uri")
        if checkpoint:
            for base in bases:
                s3io.upload_dir(self.ctx.s3, base / "checkpoints", checkpoint)
        return f"{prefix}/model.tar.gz"

    def _finish_metrics(self) -> None:
        defs = self.job.describe.get("AlgorithmSpecification", {}).get("MetricDefinitions", [])
        if not defs:
            return
        text = "\n".join(_read(p) or "" for p in sorted((self.dir / "logs").glob("algo-*.log")))
        final = final_metrics(defs, text, time.time())
        if final:
            self.job.update(FinalMetricDataList=final)


def _hyperparameter(hp: dict, key: str) -> str | None:
    """A hyperparameter as the toolkit reads it: JSON when it parses, the raw string otherwise."""
    raw = hp.get(key)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return raw
    return value if isinstance(value, str) else raw


def _signal_group(proc: subprocess.Popen, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return None
