"""Training jobs that really run: `TrainingJobs` starts, stops and recovers them, each as a
`training_run.JobRun` (the SageMaker container contract and the toolkit's processes on N local
hosts), with its record kept by `training_status`."""

from __future__ import annotations

import signal
import threading
import time

from llama_operator.local.sagemaker import imageenv
from llama_operator.local.sagemaker.context import Context
from llama_operator.local.sagemaker.training_run import JobRun
from llama_operator.local.sagemaker.training_status import KIND, TERMINAL, JobStatus


class TrainingJobs:
    """Starts, watches and stops the service's training jobs."""

    def __init__(self, ctx: Context, images: imageenv.ImageEnvironments | None = None):
        self.ctx = ctx
        self.images = images or imageenv.ImageEnvironments()
        self._runs: dict[str, JobRun] = {}
        self._lock = threading.Lock()

    def start(self, name: str) -> None:
        run = JobRun(self.ctx, name, self.images)
        with self._lock:
            self._runs[name] = run
        run.thread.start()

    def stop(self, name: str) -> None:
        with self._lock:
            run = self._runs.get(name)
        if run:
            run.request_stop("Stopped")

    def running_instances(self) -> int:
        with self._lock:
            return sum(r.instance_count for r in self._runs.values() if r.thread.is_alive())

    def shutdown(self) -> None:
        """Kill every host's process group (the job stays InProgress on disk; the next start of
        the service reports it as lost, as SageMaker does when a host dies)."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.shutting_down = True
            run.kill(signal.SIGKILL)

    def recover(self) -> None:
        now = time.time()
        for record in self.ctx.store.all(KIND):
            d = record["describe"]
            if d["TrainingJobStatus"] in TERMINAL:
                continue
            job = JobStatus(self.ctx, record["name"])
            if d["TrainingJobStatus"] == "Stopping":
                job.transition("Stopped", "Stopped", "Training job stopped (the service restarted)", end=now)
            else:
                job.transition(
                    "Failed", "Failed",
                    "Training job failed: the local SageMaker service restarted while it ran",
                    failure="host lost: the local SageMaker service restarted while the job was running",
                    end=now,
                )
