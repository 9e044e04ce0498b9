"""SageMaker's control-plane operations over the service's state: validate as SageMaker does,
record, and hand the work to training jobs or endpoints."""

from __future__ import annotations

import collections
import copy
import random
import time

from llama_operator.local.sagemaker import endpoints as ep
from llama_operator.local.sagemaker import imageenv, names, training, training_status
from llama_operator.local.sagemaker.context import Context
from llama_operator.local.sagemaker.errors import (AwsError, ResourceInUse, ResourceLimitExceeded, ResourceNotFound,
                                         Throttling, UnknownOperation, ValidationError)

MAX_TAGS = 50


class SageMaker:
    def __init__(self, ctx: Context, jobs: training.TrainingJobs, endpoints: ep.Endpoints, *,
                 throttle_rate: float = 0.0):
        self.ctx, self.jobs, self.endpoints = ctx, jobs, endpoints
        self.throttle_rate = throttle_rate
        self.calls: collections.Counter = collections.Counter()  # (operation, outcome)
        # Application Auto Scaling (autoscaling.AutoScaling), set by the server: UpdateEndpoint and
        # DeleteEndpoint consult and clean up its scalable targets as AWS does.
        self.autoscaling = None
        # Inference components (components.InferenceComponents), set by the server: their
        # operations, and what DeleteEndpoint and UpdateEndpoint must respect.
        self.components = None

    def call(self, operation: str, params: dict) -> dict:
        handler = getattr(self, f"op_{operation}", None) or getattr(self.components, f"op_{operation}", None)
        if handler is None:
            raise UnknownOperation(f"Operation {operation} is not supported by the local SageMaker service.")
        if self.throttle_rate and random.random() < self.throttle_rate:
            self.calls[(operation, "throttled")] += 1
            raise Throttling("Rate exceeded")
        self.calls[(operation, "answered")] += 1
        return handler(params or {})

    # helpers -------------------------------------------------------------------------------
    def _arn(self, kind, name):
        return names.arn(kind, name, self.ctx.region)

    def _get(self, kind: str, name: str, missing: AwsError) -> dict:
        record = self.ctx.store.get(kind, name)
        if record is None:
            raise missing
        return record

    def _not_found(self, kind: str, name: str) -> ValidationError:
        """SageMaker's answer for a model, endpoint configuration or endpoint that is not there."""
        label = {"endpoint-config": "endpoint configuration",
                 "inference-component": "inference component"}.get(kind, kind)
        return ValidationError(f"Could not find {label} \"{self._arn(kind, name)}\".")

    def _found(self, kind: str, name: str) -> dict:
        return self._get(kind, name, self._not_found(kind, name))

    def _describe(self, kind: str, name: str) -> dict:
        return copy.deepcopy(self._found(kind, name)["describe"])

    def _delete(self, kind: str, name: str) -> dict:
        self._found(kind, name)
        self.ctx.store.delete(kind, name)
        return {}

    def _new(self, kind: str, name: str, describe: dict, tags) -> dict:
        record = {"name": name, "describe": describe, "tags": list(tags or [])}
        self.ctx.store.put(kind, record)
        return record

    def _create_from_request(self, kind: str, what: str, arn_key: str, name: str, p: dict) -> dict:
        """A resource whose Describe is its Create request (less tags) plus ARN and creation time."""
        with self.ctx.store.lock:
            if self.ctx.store.get(kind, name) is not None:
                raise ValidationError(f"Cannot create already existing {what} \"{self._arn(kind, name)}\".")
            describe = {k: copy.deepcopy(v) for k, v in p.items() if k != "Tags"}
            describe.update({arn_key: self._arn(kind, name), "CreationTime": time.time()})
            self._new(kind, name, describe, p.get("Tags"))
        return {arn_key: describe[arn_key]}

    def _check_tags(self, tags) -> None:
        if tags and len(tags) > MAX_TAGS:
            raise ValidationError(f"1 validation error detected: Value at 'tags' failed to satisfy constraint: "
                                  f"Member must have length less than or equal to {MAX_TAGS}")

    def _check_capacity(self, instance_type: str, count: int, in_use: int, usage: str) -> None:
        if in_use + count > self.ctx.max_instances:
            raise ResourceLimitExceeded(
                f"The account-level service limit '{instance_type} for {usage}' is {self.ctx.max_instances} "
                f"Instances, with current utilization of {in_use} Instances and a request delta of {count} "
                "Instances. Please use AWS Service Quotas to request an increase for this quota. If AWS "
                "Service Quotas is not available, contact AWS support to request an increase for this quota.")

    @staticmethod
    def _page(items: list[dict], params: dict, key: str) -> dict:
        start = int(params.get("NextToken") or 0)
        size = int(params.get("MaxResults") or 100)
        out = {key: items[start:start + size]}
        if start + size < len(items):
            out["NextToken"] = str(start + size)
        return out

    @staticmethod
    def _filter_sort(items: list[dict], params: dict, name_key: str, status_key: str | None,
                     status_param: str = "StatusEquals") -> list[dict]:
        if params.get("NameContains"):
            items = [i for i in items if params["NameContains"] in i[name_key]]
        if status_key and params.get(status_param):
            items = [i for i in items if i.get(status_key) == params[status_param]]
        for bound, cmp in (("CreationTimeAfter", lambda a, b: a > b), ("CreationTimeBefore", lambda a, b: a < b),
                           ("LastModifiedTimeAfter", lambda a, b: a > b),
                           ("LastModifiedTimeBefore", lambda a, b: a < b)):
            if params.get(bound) is not None:
                field = "CreationTime" if bound.startswith("Creation") else "LastModifiedTime"
                items = [i for i in items if cmp(i.get(field, 0), float(params[bound]))]
        sort_by = params.get("SortBy", "CreationTime")
        field = {"Name": name_key, "CreationTime": "CreationTime", "Status": status_key}.get(sort_by, "CreationTime")
        reverse = params.get("SortOrder", "Descending") == "Descending"
        return sorted(items, key=lambda i: (i.get(field) or 0) if field != name_key else i[name_key], reverse=reverse)

    # training jobs -------------------------------------------------------------------------
    def op_CreateTrainingJob(self, p: dict) -> dict:
        name = names.validate_name("training-job", p.get("TrainingJobName"))
        self._check_tags(p.get("Tags"))
        rc = p.get("ResourceConfig", {})
        names.validate_instance_type(rc.get("InstanceType"), "TrainingInstanceType", "resourceConfig.instanceType")
        count = int(rc.get("InstanceCount", 1))
        if count < 1:
            raise ValidationError("ResourceConfig.InstanceCount must be at least 1.")
        try:  # AWS refuses an image it cannot pull; here, one whose contents it cannot know
            self.jobs.images.profile(p.get("AlgorithmSpecification", {}).get("TrainingImage", ""))
        except imageenv.UnknownImage as exc:
            raise ValidationError(f"AlgorithmSpecification.TrainingImage: {exc}") from None
        if not p.get("OutputDataConfig", {}).get("S3OutputPath", "").startswith("s3://"):
            raise ValidationError("OutputDataConfig.S3OutputPath must be an s3:// URI, "
                                  "e.g. s3://my-bucket/training-output.")
        with self.ctx.store.lock:
            if self.ctx.store.get("training-job", name) is not None:
                raise ResourceInUse(
                    "Training job names must be unique within an AWS account and region, and a training job "
                    f"with this name already exists ({self._arn('training-job', name)})")
            self._check_capacity(rc.get("InstanceType", "ml.m5.xlarge"), count, self.jobs.running_instances(),
                                 "training job usage")
            now = time.time()
            describe = {k: copy.deepcopy(v) for k, v in p.items() if k not in ("Tags",)}
            describe.update({
                "TrainingJobArn": self._arn("training-job", name),
                "TrainingJobStatus": "InProgress",
                "SecondaryStatus": "Starting",
                "SecondaryStatusTransitions": [{"Status": "Starting", "StartTime": now,
                                                "StatusMessage": "Launching requested ML instances"}],
                "ModelArtifacts": {"S3ModelArtifacts": ""},
                "CreationTime": now,
                "LastModifiedTime": now,
            })
            describe.setdefault("StoppingCondition", {"MaxRuntimeInSeconds": 86400})
            describe.setdefault("EnableNetworkIsolation", False)
            describe.setdefault("EnableInterContainerTrafficEncryption", False)
            describe.setdefault("EnableManagedSpotTraining", False)
            self._new("training-job", name, describe, p.get("Tags"))
        self.ctx.emit("training-job", name, copy.deepcopy(describe))
        self.jobs.start(name)
        return {"TrainingJobArn": describe["TrainingJobArn"]}

    def op_DescribeTrainingJob(self, p: dict) -> dict:
        record = self._get("training-job", p.get("TrainingJobName", ""),
                           ResourceNotFound("Requested resource not found."))
        d = copy.deepcopy(record["describe"])
        if not d.get("ModelArtifacts", {}).get("S3ModelArtifacts"):
            d.pop("ModelArtifacts", None)
            d["ModelArtifacts"] = {"S3ModelArtifacts": ""}
        return d

    def op_StopTrainingJob(self, p: dict) -> dict:
        name = p.get("TrainingJobName", "")
        record = self._get("training-job", name, ResourceNotFound("Requested resource not found."))
        status = record["describe"]["TrainingJobStatus"]
        if status != "InProgress":
            raise ValidationError(f"The request was rejected because the training job is in status {status}.")
        training_status.JobStatus(self.ctx, name).transition("Stopping", "Stopping", "Stopping the training job")
        self.jobs.stop(name)
        return {}

    def op_ListTrainingJobs(self, p: dict) -> dict:
        items = []
        for r in self.ctx.store.all("training-job"):
            d = r["describe"]
            s = {k: d[k] for k in ("TrainingJobName", "TrainingJobArn", "CreationTime", "TrainingEndTime",
                                   "LastModifiedTime", "TrainingJobStatus", "SecondaryStatus") if k in d}
            items.append(s)
        items = self._filter_sort(items, p, "TrainingJobName", "TrainingJobStatus")
        return self._page(items, p, "TrainingJobSummaries")

    # models --------------------------------------------------------------------------------
    def op_CreateModel(self, p: dict) -> dict:
        name = names.validate_name("model", p.get("ModelName"))
        self._check_tags(p.get("Tags"))
        containers = ([p["PrimaryContainer"]] if p.get("PrimaryContainer") else []) + list(p.get("Containers") or [])
        if not containers:
            raise ValidationError("Either PrimaryContainer or Containers must be specified for a model.")
        for c in containers:
            if not c.get("Image"):
                raise ValidationError("PrimaryContainer.Image is required: the inference image URI, "
                                      "e.g. an LMI (djl-inference) image.")
        return self._create_from_request("model", "model", "ModelArn", name, p)

    def op_DescribeModel(self, p: dict) -> dict:
        return self._describe("model", p.get("ModelName", ""))

    def op_DeleteModel(self, p: dict) -> dict:
        return self._delete("model", p.get("ModelName", ""))

    def op_ListModels(self, p: dict) -> dict:
        items = [{"ModelName": r["describe"]["ModelName"], "ModelArn": r["describe"]["ModelArn"],
                  "CreationTime": r["describe"]["CreationTime"]} for r in self.ctx.store.all("model")]
        items = self._filter_sort(items, p, "ModelName", None)
        return self._page(items, p, "Models")

    # endpoint configs ----------------------------------------------------------------------
    def op_CreateEndpointConfig(self, p: dict) -> dict:
        name = names.validate_name("endpoint-config", p.get("EndpointConfigName"))
        self._check_tags(p.get("Tags"))
        variants = p.get("ProductionVariants") or []
        if not variants:
            raise ValidationError("ProductionVariants must hold at least one variant.")
        seen = set()
        components = [v for v in variants if not v.get("ModelName")]
        if components and len(components) != len(variants):
            raise ValidationError("Either all production variants of an endpoint configuration specify ModelName, or "
                                  "none does (an endpoint configuration for inference components).")
        if components and not p.get("ExecutionRoleArn"):
            raise ValidationError("ExecutionRoleArn is required for an endpoint configuration whose production "
                                  "variants specify no ModelName (an endpoint for inference components).")
        for i, v in enumerate(variants, 1):
            if v.get("ModelName") is not None or not components:
                names.validate_name("model", v.get("ModelName"))
            elif "ServerlessConfig" in v or v.get("InitialInstanceCount") is None:
                raise ValidationError(f"Production variant {v.get('VariantName')} specifies no ModelName: a variant "
                                      "for inference components needs InstanceType and InitialInstanceCount "
                                      "(serverless variants cannot host inference components).")
            if "InstanceType" in v or "ServerlessConfig" not in v:
                names.validate_instance_type(v.get("InstanceType"), "ProductionVariantInstanceType",
                                             f"productionVariants.{i}.member.instanceType")
            if v.get("VariantName") in seen:
                raise ValidationError(f"Variant name {v.get('VariantName')} is used more than once.")
            seen.add(v.get("VariantName"))
            self._check_managed_scaling(v)
            if v.get("ModelName") and self.ctx.store.get("model", v["ModelName"]) is None:
                raise self._not_found("model", v["ModelName"])
        return self._create_from_request("endpoint-config", "endpoint configuration", "EndpointConfigArn", name, p)

    @staticmethod
    def _check_managed_scaling(v: dict) -> None:
        m = v.get("ManagedInstanceScaling")
        if not m:
            return
        name, lo, hi = v.get("VariantName"), m.get("MinInstanceCount"), m.get("MaxInstanceCount")
        if lo is not None and int(lo) == 0 and v.get("ModelName"):
            raise ValidationError(f"ManagedInstanceScaling.MinInstanceCount 0 is not valid for production variant "
                                  f"{name}: only an endpoint that hosts inference components can scale in to zero "
                                  "instances.")
        if m.get("Status") != "ENABLED":
            return
        if lo is None or hi is None:
            raise ValidationError(f"ManagedInstanceScaling of production variant {name}: MinInstanceCount and "
                                  "MaxInstanceCount are required when Status is ENABLED.")
        initial = int(v.get("InitialInstanceCount", 1))
        if not int(lo) <= initial <= int(hi):
            raise ValidationError(f"ManagedInstanceScaling of production variant {name}: MinInstanceCount ({lo}) <= "
                                  f"InitialInstanceCount ({initial}) <= MaxInstanceCount ({hi}) must hold.")

    def op_DescribeEndpointConfig(self, p: dict) -> dict:
        return self._describe("endpoint-config", p.get("EndpointConfigName", ""))

    def op_DeleteEndpointConfig(self, p: dict) -> dict:
        return self._delete("endpoint-config", p.get("EndpointConfigName", ""))

    def op_ListEndpointConfigs(self, p: dict) -> dict:
        items = [{"EndpointConfigName": r["describe"]["EndpointConfigName"],
                  "EndpointConfigArn": r["describe"]["EndpointConfigArn"],
                  "CreationTime": r["describe"]["CreationTime"]} for r in self.ctx.store.all("endpoint-config")]
        items = self._filter_sort(items, p, "EndpointConfigName", None)
        return self._page(items, p, "EndpointConfigs")

    # endpoints -----------------------------------------------------------------------------
    def _config_instances(self, config_name: str) -> tuple[str, int]:
        config = self.ctx.store.get("endpoint-config", config_name)
        pvs = config["describe"]["ProductionVariants"]
        return pvs[0].get("InstanceType", "ml.m5.xlarge"), sum(int(v.get("InitialInstanceCount", 1)) for v in pvs)

    def _endpoint_instances(self) -> int:
        total = 0
        for r in self.ctx.store.all("endpoint"):
            d = r["describe"]
            if d["EndpointStatus"] in ("Failed", "Deleting"):
                continue
            if d.get("ProductionVariants"):  # what runs or is on its way, scaling included
                total += sum(max(int(v.get("CurrentInstanceCount") or 0), int(v.get("DesiredInstanceCount") or 0))
                             for v in d["ProductionVariants"])
                continue
            config = self.ctx.store.get("endpoint-config", d["EndpointConfigName"])
            if config:
                total += sum(int(v.get("InitialInstanceCount", 1)) for v in config["describe"]["ProductionVariants"])
        return total

    def op_CreateEndpoint(self, p: dict) -> dict:
        name = names.validate_name("endpoint", p.get("EndpointName"))
        self._check_tags(p.get("Tags"))
        config_name = p.get("EndpointConfigName", "")
        with self.ctx.store.lock:
            if self.ctx.store.get("endpoint", name) is not None:
                raise ValidationError(f"Cannot create already existing endpoint \"{self._arn('endpoint', name)}\".")
            if self.ctx.store.get("endpoint-config", config_name) is None:
                raise self._not_found("endpoint-config", config_name)
            itype, count = self._config_instances(config_name)
            self._check_capacity(itype, count, self._endpoint_instances(), "endpoint usage")
            now = time.time()
            describe = {"EndpointName": name, "EndpointArn": self._arn("endpoint", name),
                        "EndpointConfigName": config_name, "EndpointStatus": "Creating",
                        "CreationTime": now, "LastModifiedTime": now}
            self._new("endpoint", name, describe, p.get("Tags"))
        self.ctx.emit("endpoint", name, copy.deepcopy(describe))
        self.endpoints.create(name)
        return {"EndpointArn": describe["EndpointArn"]}

    def _endpoint(self, name: str) -> dict:
        return self._found("endpoint", name)

    def op_DescribeEndpoint(self, p: dict) -> dict:
        return copy.deepcopy(self._endpoint(p.get("EndpointName", ""))["describe"])

    def op_UpdateEndpoint(self, p: dict) -> dict:
        name = p.get("EndpointName", "")
        config_name = p.get("EndpointConfigName", "")
        with self.ctx.store.lock:
            record = self._endpoint(name)
            status = record["describe"]["EndpointStatus"]
            if status != "InService":
                raise ValidationError(f"Cannot update in-progress endpoint \"{self._arn('endpoint', name)}\"."
                                      if status in ("Creating", "Updating", "SystemUpdating", "Deleting")
                                      else f"Cannot update endpoint \"{self._arn('endpoint', name)}\" "
                                           f"in status {status}; delete and re-create it.")
            new_config = self.ctx.store.get("endpoint-config", config_name)
            if new_config is None:
                raise self._not_found("endpoint-config", config_name)
            new_pvs = {pv["VariantName"]: pv for pv in new_config["describe"]["ProductionVariants"]}
            old_config = self.ctx.store.get("endpoint-config", record["describe"]["EndpointConfigName"])
            old_pvs = {pv["VariantName"]: pv for pv in (old_config or {}).get("describe", {})
                       .get("ProductionVariants", [])}
            self._check_component_update(name, config_name, old_pvs, new_pvs)
            for variant in (self.autoscaling.scaled_variants(name) if self.autoscaling else []):
                # AWS: "If the update would change the instance type for any model that is a target
                # for auto scaling, the update fails" (and so does dropping the variant).
                new, old = new_pvs.get(variant), old_pvs.get(variant)
                if new is None:
                    raise ValidationError(
                        f"The production variant {variant} of endpoint {name} is registered as a scalable target "
                        f"with Application Auto Scaling and is not in endpoint configuration {config_name}. "
                        "Deregister the scalable target before removing the variant.")
                if old is not None and new.get("InstanceType") != old.get("InstanceType"):
                    raise ValidationError(
                        f"The production variant {variant} of endpoint {name} is registered as a scalable target "
                        f"with Application Auto Scaling: its instance type cannot change "
                        f"({old.get('InstanceType')} -> {new.get('InstanceType')}). Deregister the scalable "
                        "target, update the endpoint, then register it again.")
            retain = None
            if p.get("RetainAllVariantProperties"):
                excluded = {e.get("VariantPropertyType") for e in p.get("ExcludeRetainedVariantProperties") or []}
                retain = {v: {"count": None if "DesiredInstanceCount" in excluded else kept["count"],
                              "weight": None if "DesiredWeight" in excluded else kept["weight"]}
                          for v, kept in ep.retained_properties(record["describe"]).items() if v in new_pvs}
        self.endpoints._set(name, "Updating", FailureReason=None)
        self.endpoints.update(name, config_name, retain)
        return {"EndpointArn": record["describe"]["EndpointArn"]}

    def _check_component_update(self, name: str, config_name: str, old_pvs: dict, new_pvs: dict) -> None:
        """UpdateEndpoint of an endpoint for inference components (components.py says what is
        emulated)."""
        old_ic = any(not pv.get("ModelName") for pv in old_pvs.values())
        new_ic = any(not pv.get("ModelName") for pv in new_pvs.values())
        if old_pvs and old_ic != new_ic:
            raise ValidationError(
                f"Cannot update endpoint \"{self._arn('endpoint', name)}\" to endpoint configuration {config_name}: "
                "switching an endpoint between production variants with models and variants for inference components "
                "is not supported by the local SageMaker service.")
        hosted = self.components.on_endpoint(name) if (old_ic and self.components is not None) else []
        for ic in hosted:
            variant = self.components.component(ic)["VariantName"]
            old, new = old_pvs.get(variant, {}), new_pvs.get(variant)
            if new is None or new.get("InstanceType") != old.get("InstanceType"):
                raise ValidationError(
                    f"Cannot update endpoint \"{self._arn('endpoint', name)}\": inference component {ic} runs on "
                    f"variant {variant}, which endpoint configuration {config_name} "
                    f"{'drops' if new is None else 'moves to another instance type'}. Delete the inference "
                    "components first.")

    def op_UpdateEndpointWeightsAndCapacities(self, p: dict) -> dict:
        return {"EndpointArn": self.update_weights_and_capacities(p.get("EndpointName", ""),
                                                                  p.get("DesiredWeightsAndCapacities"))}

    def update_weights_and_capacities(self, name: str, desired, on_done=None) -> str:
        """UpdateEndpointWeightsAndCapacities, and the autoscaler's way to scale: validates, sets the
        endpoint Updating and starts the change (`on_done(ok, message)` once it settles). Returns
        the endpoint's ARN."""
        with self.ctx.store.lock:
            record = self._endpoint(name)
            d = record["describe"]
            status = d["EndpointStatus"]
            if status != "InService":
                raise ValidationError(
                    f"Cannot update in-progress endpoint \"{self._arn('endpoint', name)}\"."
                    if status in ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")
                    else f"Cannot update endpoint \"{self._arn('endpoint', name)}\" in status {status}: "
                         "the endpoint must be InService to change its weights and capacities.")
            if not desired:
                raise ValidationError("1 validation error detected: Value at 'desiredWeightsAndCapacities' "
                                      "failed to satisfy constraint: Member must have length greater than or "
                                      "equal to 1")
            config = self.ctx.store.get("endpoint-config", d["EndpointConfigName"])
            pvs = {pv["VariantName"]: pv for pv in (config or {}).get("describe", {}).get("ProductionVariants", [])}
            running = {pv["VariantName"]: pv for pv in d.get("ProductionVariants") or []}
            changes: dict[str, dict] = {}
            delta = 0
            for item in desired:
                variant = item.get("VariantName")
                if variant not in pvs:
                    raise ValidationError(f"The variant name(s) [{variant}] is/are not present in the "
                                          f"endpoint \"{self._arn('endpoint', name)}\".")
                if variant in changes:
                    raise ValidationError(f"The variant name {variant} is specified more than once.")
                if not pvs[variant].get("ModelName"):
                    raise ValidationError(f"Variant {variant} of endpoint {name} hosts inference components: its "
                                          "instance count follows its components' copies (ManagedInstanceScaling); "
                                          "change the copies with UpdateInferenceComponentRuntimeConfig. Weights and "
                                          "capacities of such variants are not supported by the local SageMaker "
                                          "service.")
                count, weight = item.get("DesiredInstanceCount"), item.get("DesiredWeight")
                if count is None and weight is None:
                    raise ValidationError(f"Specify DesiredWeight or DesiredInstanceCount (or both) for variant "
                                          f"{variant}.")
                if count is not None and int(count) < 1:
                    raise ValidationError(f"Invalid DesiredInstanceCount {count} for variant {variant}: an "
                                          "instance-based variant needs at least 1 instance.")
                if weight is not None and float(weight) < 0:
                    raise ValidationError(f"Invalid DesiredWeight {weight} for variant {variant}: it must not be "
                                          "negative.")
                if count is not None:
                    now = running.get(variant, {})
                    delta += int(count) - max(int(now.get("CurrentInstanceCount") or 0),
                                              int(now.get("DesiredInstanceCount") or 0))
                changes[variant] = {"DesiredInstanceCount": None if count is None else int(count),
                                    "DesiredWeight": None if weight is None else float(weight)}
            if delta > 0:
                itype = pvs[next(iter(changes))].get("InstanceType", "ml.m5.xlarge")
                self._check_capacity(itype, delta, self._endpoint_instances(), "endpoint usage")
            self.endpoints.update_weights_and_capacities(name, changes, on_done)
        return d["EndpointArn"]

    def op_DeleteEndpoint(self, p: dict) -> dict:
        name = p.get("EndpointName", "")
        with self.ctx.store.lock:
            record = self._endpoint(name)
            if record["describe"]["EndpointStatus"] == "Deleting":
                return {}
            hosted = self.components.on_endpoint(name) if self.components is not None else []
            if hosted:
                raise ValidationError(
                    f"Cannot delete endpoint \"{self._arn('endpoint', name)}\" while it hosts inference components "
                    f"({', '.join(hosted)}). Delete its inference components (DeleteInferenceComponent) first.")
        self.endpoints._set(name, "Deleting")
        if self.autoscaling is not None:  # AWS deregisters the endpoint's scalable targets with it
            self.autoscaling.endpoint_deleted(name)
        self.endpoints.delete(name)
        return {}

    def op_ListEndpoints(self, p: dict) -> dict:
        items = [{k: r["describe"][k] for k in ("EndpointName", "EndpointArn", "CreationTime",
                                                 "LastModifiedTime", "EndpointStatus")}
                 for r in self.ctx.store.all("endpoint")]
        items = self._filter_sort(items, p, "EndpointName", "EndpointStatus")
        return self._page(items, p, "Endpoints")

    # tags ----------------------------------------------------------------------------------
    def _by_arn(self, arn: str) -> tuple[str, dict]:
        parsed = names.parse_arn(arn)
        if parsed:
            kind, lname = parsed
            for r in self.ctx.store.all(kind):
                if r["name"].lower() == lname:
                    return kind, r
        raise ValidationError(f"Resource {arn} does not exist.") if not parsed else \
            ResourceNotFound(f"Resource {arn} does not exist.")

    def op_AddTags(self, p: dict) -> dict:
        with self.ctx.store.lock:
            kind, record = self._by_arn(p.get("ResourceArn", ""))
            tags = {t["Key"]: t["Value"] for t in record.get("tags", [])}
            tags.update({t["Key"]: t.get("Value", "") for t in p.get("Tags", [])})
            self._check_tags(list(tags))
            record["tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
            self.ctx.store.put(kind, record)
        return {"Tags": record["tags"]}

    def op_ListTags(self, p: dict) -> dict:
        _, record = self._by_arn(p.get("ResourceArn", ""))
        return self._page(list(record.get("tags", [])), p, "Tags")

    def op_DeleteTags(self, p: dict) -> dict:
        with self.ctx.store.lock:
            kind, record = self._by_arn(p.get("ResourceArn", ""))
            drop = set(p.get("TagKeys", []))
            record["tags"] = [t for t in record.get("tags", []) if t["Key"] not in drop]
            self.ctx.store.put(kind, record)
        return {}
