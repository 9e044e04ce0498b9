"""The framework module the local training jobs hand to the sagemaker-training toolkit
(`SAGEMAKER_TRAINING_MODULE`), doing what SageMaker's PyTorch container does at this point: run the
user's entry point, through torchrun when `sagemaker_torch_distributed_enabled` is set.

It runs inside the image's environment (copied there by the service), so it imports only the
toolkit."""

from __future__ import annotations

import os

from sagemaker_training import entry_point, environment, runner, torch_distributed

# The toolkit's torchrun master port is a constant (7777), and torch's rendezvous store listens on
# every local address, so two local multi-host jobs would collide on it; the service gives each
# job a port of its own.
MASTER_PORT_ENV = "LLAMA_OPERATOR_MASTER_PORT"


def main() -> None:
    env = environment.Environment()
    if os.environ.get(MASTER_PORT_ENV):
        torch_distributed.MASTER_PORT = os.environ[MASTER_PORT_ENV]
        # On one host the toolkit gives torchrun no master address or port, and torchrun's default
        # (127.0.0.1:29500) would be shared by local jobs running at once, where SageMaker gives each
        # job instances of its own. torchrun reads PET_<OPTION> for an option not given.
        os.environ.setdefault("PET_MASTER_ADDR", env.master_hostname)
        os.environ.setdefault("PET_MASTER_PORT", os.environ[MASTER_PORT_ENV])
    params = env.additional_framework_parameters
    runner_type = (
        runner.TorchDistributedRunnerType
        if params.get("sagemaker_torch_distributed_enabled", False)
        else runner.ProcessRunnerType
    )
    entry_point.run(
        uri=env.module_dir,
        user_entry_point=env.user_entry_point,
        args=env.to_cmd_args(),
        env_vars=env.to_env_vars(),
        capture_error=True,
        runner_type=runner_type,
    )
