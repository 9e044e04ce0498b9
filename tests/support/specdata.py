"""Specs the unit tests start from: minimal ones, and full ones with every optional field set."""

ROLE = "arn:aws:iam::123456789012:role/sagemaker-llama-execution"

FINETUNE_MIN = {
    "baseModel": {"s3Uri": "s3://bkt/models/llama/"},
    "dataset": {"train": "s3://bkt/data/train/"},
    "resources": {"instanceType": "ml.g5.12xlarge"},
    "roleArn": ROLE,
    "outputS3Uri": "s3://bkt/out/",
}

FINETUNE_DEEPSPEED = {
    "baseModel": {"s3Uri": "s3://bkt/models/llama/"},
    "dataset": {"train": "s3://bkt/data/train/", "validation": "s3://bkt/data/val/", "format": "chat_jsonl"},
    "method": {"type": "deepspeed", "zeroStage": 2},
    "hyperparameters": {
        "epochs": 2.5, "maxSteps": 500, "learningRate": 0.0001, "warmupRatio": 0.1, "lrScheduler": "linear",
        "weightDecay": 0.01, "perDeviceBatchSize": 8, "gradientAccumulationSteps": 2, "maxSequenceLength": 4096,
        "packing": False, "gradientCheckpointing": True, "precision": "fp16", "attnImplementation": "sdpa",
        "addSpecialTokens": ["[STOP]", "[SEP]"], "newTokenInit": "mean", "loggingSteps": 5, "saveSteps": 100,
        "seed": 7,
    },
    "resources": {"instanceType": "ml.p3.16xlarge", "instanceCount": 4, "volumeSizeGB": 500,
                  "maxRuntimeSeconds": 7200, "spot": True, "maxWaitSeconds": 14400,
                  "checkpointS3Uri": "s3://bkt/ckpt/run1/"},
    "roleArn": ROLE,
    "outputS3Uri": "s3://bkt/out",
    "image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/my-train:1",
    "environment": {"NCCL_DEBUG": "INFO"},
    "tags": {"team": "dialog", "cost-center": "42"},
    "deletionPolicy": "Retain",
}

FINETUNE_SMP = {
    "baseModel": {"s3Uri": "s3://bkt/models/llama/"},
    "dataset": {"train": "s3://bkt/data/train/"},
    "method": {"type": "smp", "shardDegree": 8, "tensorParallelDegree": 2},
    "resources": {"instanceType": "ml.p5.48xlarge", "instanceCount": 2},
    "roleArn": ROLE,
    "outputS3Uri": "s3://bkt/out/",
}

FINETUNE_LORA = {
    "baseModel": {"s3Uri": "s3://bkt/models/llama/"},
    "dataset": {"train": "s3://bkt/data/train/"},
    "method": {"type": "deepspeed", "zeroStage": 2,
               "peft": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "targetModules": ["q_proj", "v_proj"]}},
    "resources": {"instanceType": "ml.g5.2xlarge"},
    "roleArn": ROLE,
    "outputS3Uri": "s3://bkt/out/",
    "output": {"mergeAdapter": True},
}

ENDPOINT_MIN = {
    "model": {"s3Uri": "s3://bkt/out/job/model/"},
    "resources": {"instanceType": "ml.g5.2xlarge"},
    "roleArn": ROLE,
}

ENDPOINT_VLLM = {
    "model": {"fromFinetune": "llama-dailydialog"},
    "serving": {"engine": "vllm", "tensorParallelDegree": 4, "dtype": "fp16", "maxNewTokens": 512,
                "maxRollingBatchSize": 64, "maxModelLength": 4096},
    "resources": {"instanceType": "ml.g5.12xlarge", "instanceCount": 2,
                  "containerStartupHealthCheckTimeoutSeconds": 1200, "modelDataDownloadTimeoutSeconds": 900},
    "roleArn": ROLE,
    "deployment": {"strategy": "Canary", "canaryPercent": 20, "waitIntervalSeconds": 600,
                   "terminationWaitSeconds": 120, "autoRollback": True, "rollbackAlarms": ["llama-5xx"]},
    "image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/my-lmi:1",
    "environment": {"OPTION_TRUST_REMOTE_CODE": "false"},
    "tags": {"team": "dialog"},
    "deletionPolicy": "Retain",
}

ENDPOINT_BATCHING = {
    "model": {"s3Uri": "s3://bkt/out/job/model/"},
    "serving": {"engine": "batching", "maxBatchSize": 16, "maxWaitMs": 0},
    "resources": {"instanceType": "ml.g5.2xlarge"},
    "roleArn": ROLE,
    "deployment": {"autoRollback": False},
}

ENDPOINT_ADAPTERS = {
    "model": {"fromFinetune": "lora-ft", "adapters": [{"name": "sql", "s3Uri": "s3://bkt/adapters/sql/"},
                                                      {"name": "chat", "fromFinetune": "chat-ft"}]},
    "serving": {"engine": "batching"},
    "resources": {"instanceType": "ml.g5.2xlarge"},
    "roleArn": ROLE,
}
