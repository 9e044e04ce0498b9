"""The names the operator and its stand-ins share, spelled once: the API group and version, the
two kinds and their plurals, the finalizer, the owner tags put on every SageMaker object, and the
EventBridge detail types of SageMaker's state-change events."""

from __future__ import annotations

GROUP = "llamaops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

FINETUNE_KIND, FINETUNES = "LlamaFinetune", "llamafinetunes"
ENDPOINT_KIND, ENDPOINTS = "LlamaEndpoint", "llamaendpoints"
FINALIZER = f"{GROUP}/finalizer"

# Owner tags: which resource a SageMaker object belongs to (adoption, cleanup, event routing).
# Users may not set tags under this prefix (the CRD and the spec models refuse them).
OWNER_TAG_PREFIX = f"{GROUP}/"
KIND_TAG = OWNER_TAG_PREFIX + "kind"
NAMESPACE_TAG = OWNER_TAG_PREFIX + "namespace"
NAME_TAG = OWNER_TAG_PREFIX + "name"
UID_TAG = OWNER_TAG_PREFIX + "uid"
OWNER_TAGS = (KIND_TAG, NAMESPACE_TAG, NAME_TAG, UID_TAG)

TRAINING_DETAIL_TYPE = "SageMaker Training Job State Change"
ENDPOINT_DETAIL_TYPE = "SageMaker Endpoint State Change"
# Blue/green and canary progress; not subscribed (aws/events.py says why).
ENDPOINT_DEPLOYMENT_DETAIL_TYPE = "SageMaker Endpoint Deployment State Change"
# An event's detail mirrors the resource's Describe* output: its timestamps, at the top level and
# nested (SecondaryStatusTransitions, FinalMetricDataList, DeployedImages, VariantStatus,
# PendingDeploymentSummary), and the maps whose keys are the user's (copied as they are).
DETAIL_TIME_FIELDS = frozenset({"CreationTime", "LastModifiedTime", "TrainingStartTime", "TrainingEndTime",
                                "StartTime", "EndTime", "Timestamp", "ResolutionTime"})
DETAIL_USER_MAPS = frozenset({"Tags", "HyperParameters", "Environment", "StaticHyperParameters"})

# Where SageMaker publishes a running job's MetricDefinitions matches (CloudWatch).
TRAINING_METRICS_NAMESPACE = "/aws/sagemaker/TrainingJobs"
TRAINING_METRICS_DIMENSION = "TrainingJobName"
