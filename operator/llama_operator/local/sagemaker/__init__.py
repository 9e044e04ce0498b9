"""The local SageMaker service (`llama-operator local-sagemaker`): SageMaker's control plane and
runtime over HTTP (`server`, `api`), training jobs and endpoints that really run in their images'
environments (`training`, `endpoints`, `imageenv`, `container/`), state on disk (`store`) and the
events and metrics SageMaker sends (`events`, `metrics`)."""
