"""The framework module the local training jobs hand to the sagemaker-training toolkit
(`SAGEMAKER_TRAINING_MODULE`), doing what SageMaker's PyTorch container does at this point: run the
user's entry point, through torchrun when `sagemaker_torch_distributed_enabled` is set."""

from __future__ import annotations

from sagemaker_training import entry_point, environment, runner


def main() -> None:
    env = environment.Environment()
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
