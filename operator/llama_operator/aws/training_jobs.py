"""The SageMaker training-job calls the LlamaFinetune handlers make (errors: errors.py)."""

from __future__ import annotations

from botocore.exceptions import ClientError

from llama_operator.aws.errors import TerminalError, classify, code_and_message, not_found
from llama_operator.aws.gateway import Gateway
from llama_operator.kinds import UID_TAG


class TrainingJobGateway(Gateway):

    def describe_training_job(self, name: str) -> dict | None:
        """DescribeTrainingJob, or None when no job has this name."""
        return self._unless_missing("describe_training_job", TrainingJobName=name)

    def ensure_training_job(self, request: dict) -> tuple[dict, bool]:
        """(DescribeTrainingJob, created) for the job named in `request`: an existing job with that
        name is adopted, never created twice (restarts and re-applies are safe)."""
        name = request["TrainingJobName"]
        existing = self.describe_training_job(name)
        if existing is not None:
            self._check_owner(existing, request)
            return existing, False
        try:
            self._raw("create_training_job", **request)
        except ClientError as exc:
            if code_and_message(exc)[0] == "ResourceInUse":  # created by a run that died before recording it
                existing = self.describe_training_job(name)
                if existing is not None:
                    self._check_owner(existing, request)
                    return existing, False
            raise classify(exc, "CreateTrainingJob") from exc
        described = self.describe_training_job(name)
        if described is None:  # eventual consistency: report what we sent
            described = {"TrainingJobName": name, "TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting"}
        return described, True

    def _check_owner(self, existing: dict, request: dict) -> None:
        want = {t["Key"]: t["Value"] for t in request.get("Tags", []) if t["Key"] == UID_TAG}
        if not want or not existing.get("TrainingJobArn"):
            return
        have = self.tags(existing["TrainingJobArn"])
        if have.get(UID_TAG) not in (None, want[UID_TAG]):
            raise TerminalError("NameCollision", f"a training job named {request['TrainingJobName']} exists and "
                                "belongs to another resource (tag llamaops.dev/uid differs)", "CreateTrainingJob")

    def stop_training_job(self, name: str) -> bool:
        """StopTrainingJob; False when the job is gone or no longer running (nothing to stop)."""
        try:
            self._raw("stop_training_job", TrainingJobName=name)
            return True
        except ClientError as exc:
            if not_found(exc) or code_and_message(exc)[0] == "ValidationException":
                return False
            raise classify(exc, "StopTrainingJob") from exc
