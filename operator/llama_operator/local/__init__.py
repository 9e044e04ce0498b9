"""The embedded default: everything `llama-operator demo` and the tests run on one machine, with no
cluster and no AWS account. `sagemaker/` is the local SageMaker service (with moto's S3, SQS and
CloudWatch), `kubernetes/` the Kubernetes API emulator, `stack.py` starts the service as a
subprocess, and `demo/` is the demo with the tiny model it fine-tunes."""
