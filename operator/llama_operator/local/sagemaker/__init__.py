"""The local SageMaker service (`llama-operator local-sagemaker`): SageMaker's control plane and
runtime over HTTP (`server`, with the operations in `api`), training jobs (`training`, one job's run
in `training_run`, its record in `training_status`) and endpoints (`endpoints`, their processes in
`model_servers`) that really run in their images' environments (`imageenv`, `container/`), inference
components (`components`; their copies' processes in `copies`, placed on instances by `placement`),
Application Auto Scaling with a scaler that acts on measured load (`autoscaling`, and the CloudWatch
alarms of step scaling in `step_alarms`), state on disk (`store`), and the events and metrics
SageMaker sends (`events`, `metrics`)."""
