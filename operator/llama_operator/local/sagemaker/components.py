"""SageMaker inference components (IC) on the local service: an endpoint whose endpoint
configuration's production variants name no model provisions instances that stay empty until
components are placed on them; each component runs copies of one model, each copy a local model
server (model_servers, started from the model's primary container exactly as a variant's
instance), and InvokeEndpoint reaches a component by the X-Amzn-SageMaker-Inference-Component
header.

What is emulated
----------------
* CreateEndpointConfig (api.py): a variant without ModelName is an IC variant; all variants have a
  ModelName or none; IC variants need ExecutionRoleArn, InstanceType and InitialInstanceCount, no
  ServerlessConfig. ManagedInstanceScaling {Status, MinInstanceCount, MaxInstanceCount} and
  RoutingConfig are stored and described; with Status ENABLED both counts are required and
  MinInstanceCount <= InitialInstanceCount <= MaxInstanceCount; MinInstanceCount 0 only on IC
  variants (AWS scales to zero only with inference components).
* CreateEndpoint on an IC configuration: InitialInstanceCount empty instances, InService at once,
  with the usual endpoint state-change events; DescribeEndpoint's counts follow placement.
* Create/Describe/List/Update/UpdateRuntimeConfig/DeleteInferenceComponent. Creation refuses (as
  ValidationException) a missing or not-InService endpoint, a variant the endpoint lacks or that
  hosts a model, a missing model, a duplicate name, no ComputeResourceRequirements or
  MinMemoryRequiredInMb, MaxMemoryRequiredInMb below the minimum, a CopyCount missing or below 1,
  and a copy that needs more accelerators, memory or CPU cores than one instance of the variant's
  type has (names.instance_resources). Creating -> InService once every copy passes /ping; Failed
  with FailureReason when one does not, or when the copies cannot all be placed.
* Placement (placement.py; the copies' threads are in copies.py): copies go on the variant's
  instances by their reservation (CPU cores are compared with vCPUs; MinMemoryRequiredInMb is what a
  copy reserves; absent fields reserve nothing). SchedulingConfig PlacementStrategy SPREAD puts a
  copy on the instance with the fewest copies, otherwise (BINPACK) on the fullest one that fits.
  With ManagedInstanceScaling ENABLED a copy that fits nowhere gets a new instance (up to
  MaxInstanceCount and --max-instances); empty instances go, down to MinInstanceCount (0: scale to
  zero). Copies that fit nowhere stay unplaced (CurrentCopyCount < DesiredCopyCount) and are placed
  when room frees. Disabled or absent: the instance count stays as configured.
* UpdateInferenceComponentRuntimeConfig (CopyCount >= 0, 0 included): Updating -> InService; new
  copies take traffic once they pass /ping, removed ones (those on the emptiest instances) are
  drained first. A copy that fails to start sets DesiredCopyCount back to what runs, with
  FailureReason, as a variant's scaling does.
* UpdateInferenceComponent: a changed Specification (model, container, requirements, startup
  parameters; top-level fields left out keep their values) is a rolling replacement in batches of
  DeploymentConfig.RollingUpdatePolicy.MaximumBatchSize (COPY_COUNT, or CAPACITY_PERCENT of the
  copies; without a DeploymentConfig every copy in one batch): each batch of new copies is placed
  beside the old ones (managed instance scaling adds instances for it), passes /ping and takes
  traffic, then as many old copies drain and stop; WaitIntervalInSeconds between batches. When a new
  copy fails (or cannot be placed) SageMaker's automatic rollback is what happens: the old copies
  stopped so far start again, the new ones stop, the old Specification stays, and the component is
  InService with FailureReason. RuntimeConfig in the same request sets the copy count the new
  specification runs with; DeploymentConfig is reported as LastDeploymentConfig.
* DeleteInferenceComponent: Deleting, its copies drained and stopped, then gone ("Could not find
  inference component ..."); its Application Auto Scaling target is deregistered with it (as
  DeleteEndpoint does for variants). DeleteEndpoint refuses while components remain on the endpoint
  (AWS: the console deletes them first; the API does not).
* InvokeEndpoint: an IC endpoint without the header, the header on an endpoint without components'
  variants, an unknown component, and a component without a running copy are ValidationError (the
  runtime's code). The last counts one NoCapacityInvocationFailures datapoint for the component
  (what a CloudWatch alarm with a step scaling policy wakes a scaled-to-zero component from:
  autoscaling.py, step_alarms.py). Otherwise the request goes to a copy (LEAST_OUTSTANDING_REQUESTS,
  or RANDOM when the variant's RoutingConfig says so) and is counted: invocations, and in-flight
  requests integrated over time (ConcurrentRequestsPerCopy's mean, exactly rather than sampled).
* Adapter inference components (Specification.BaseInferenceComponentName: a LoRA adapter on the
  copies of a base component) are adapters.py's; its docstring says what is emulated of them.
* State is kept in the Store (with a snapshot of the container each copy runs, so a deleted model
  does not stop scaling); after a restart each component restarts its copies (Updating, or Creating
  if it was) and its endpoint's instance counts come back as they were.

Where it differs from AWS
-------------------------
* Instances appear at once: there is no provisioning delay; what takes time is a copy's server
  starting and passing /ping. The endpoint stays InService while managed instance scaling adds or
  removes instances.
* The instance table covers common CPU, GPU and Neuron types (names.instance_resources); an unknown
  type's instances take any number of copies. The whole instance is available to copies (AWS keeps
  a little memory and CPU for its own agents).
* Not emulated (refused with ValidationException saying so): Specifications (several instance
  types), components in the service's scheduled mode,
  UpdateEndpointWeightsAndCapacities and variant autoscaling on IC variants, and UpdateEndpoint that
  switches an endpoint between models and components or changes an IC variant's instance type (or
  drops it) while components are on it. Of DeploymentConfig, AutoRollbackConfiguration's alarms
  are not watched, MaximumExecutionTimeoutInSeconds is not enforced and a rollback restarts the old
  copies in one batch (RollbackMaximumBatchSize is not used). WaitIntervalInSeconds follows the
  --autoscaling-period compression. PREFIX_AWARE and KV_AWARE routing route as
  LEAST_OUTSTANDING_REQUESTS; AWS's default for endpoints without RoutingConfig is not stated in its
  API reference, here it is LEAST_OUTSTANDING_REQUESTS. Creation that cannot place every initial copy
  fails (AWS's behaviour there is not documented); later copies that do not fit wait. An update in
  flight when the service stops is lost (the component comes back on its previous specification).
  Inference components emit no state-change events.
* Messages: "Inference Component Name header is required ...", "... is not allowed ..." and "...
  has no capacity to process this request ..." are AWS's words; the other messages are the
  service's own, in AWS's style.
"""

from __future__ import annotations

import copy
import time

from llama_operator.local.sagemaker import adapters, copies, names, placement
from llama_operator.local.sagemaker.context import Context
from llama_operator.local.sagemaker.copies import KIND, Runtime, truncate
from llama_operator.local.sagemaker.endpoints import _post, model_error
from llama_operator.local.sagemaker.errors import (
    RuntimeValidationError,
    ValidationError,
)
from llama_operator.local.sagemaker.model_servers import (
    kill_group,
    primary_container,
)
from llama_operator.local.sagemaker.placement import Need, Pool, Scaling

HEADER_REQUIRED = ("Inference Component Name header is required for endpoints to which you plan to deploy inference "
                   "components. Please include Inference Component Name header or consider using SageMaker models.")
HEADER_NOT_ALLOWED = ("Inference Component Name header is not allowed for endpoints to which you dont plan to deploy "
                      "inference components. Please remove the Inference Component Name header and try again.")
NO_CAPACITY = ("Inference Component has no capacity to process this request. ApplicationAutoScaling may be "
               "in-progress (if configured) or try to increase the capacity by invoking "
               "UpdateInferenceComponentRuntimeConfig API.")
_IN_PROGRESS = ("Creating", "Updating", "Deleting")


def is_component_variant(pv: dict) -> bool:
    return not pv.get("ModelName")


class InferenceComponents(adapters.Adapters, copies.Copies):
    def __init__(self, ctx: Context, endpoints, api, *, scheduled: bool = False, time_scale: float = 1.0):
        """`time_scale`: compressed seconds per AWS second (--autoscaling-period / 60), for
        WaitIntervalInSeconds."""
        self.ctx, self.endpoints, self.api = ctx, endpoints, api
        self.lock = ctx.store.lock   # one lock with SageMaker's state
        self.scheduled, self.time_scale = scheduled, time_scale
        self.autoscaling = None      # set by the server: DeleteInferenceComponent deregisters its target
        self._pools: dict[tuple[str, str], Pool] = {}
        self._rt: dict[str, Runtime] = {}
        self._adapters: dict[str, adapters.AdapterRuntime] = {}   # adapter inference components (adapters.py)
        self._closing = False

    # records -------------------------------------------------------------------------------
    def _arn(self, name: str) -> str:
        return names.arn(KIND, name, self.ctx.region)

    def _record(self, name: str) -> dict:
        record = self.ctx.store.get(KIND, name)
        if record is None:
            raise ValidationError(f"Could not find inference component \"{self._arn(name)}\".")
        return record

    def _put(self, record: dict, **fields) -> None:
        d = record["describe"]
        for k, v in fields.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = truncate(v) if k == "FailureReason" else v
        d["LastModifiedTime"] = time.time()
        self.ctx.store.put(KIND, record)

    def _endpoint_pv(self, endpoint: str, variant: str) -> dict | None:
        record = self.ctx.store.get("endpoint", endpoint)
        config = self.ctx.store.get("endpoint-config", record["describe"]["EndpointConfigName"]) if record else None
        return next((pv for pv in (config or {}).get("describe", {}).get("ProductionVariants", [])
                     if pv["VariantName"] == variant), None)

    def is_component_endpoint(self, endpoint: str) -> bool:
        record = self.ctx.store.get("endpoint", endpoint)
        config = self.ctx.store.get("endpoint-config", record["describe"]["EndpointConfigName"]) if record else None
        pvs = (config or {}).get("describe", {}).get("ProductionVariants", [])
        return bool(pvs) and all(is_component_variant(pv) for pv in pvs)

    def on_endpoint(self, endpoint: str) -> list[str]:
        """Names of the components on the endpoint (any status)."""
        with self.lock:
            return sorted(r["name"] for r in self.ctx.store.all(KIND) if r["describe"]["EndpointName"] == endpoint)

    # validation ----------------------------------------------------------------------------
    def _container(self, spec: dict) -> dict:
        """The primary container a copy runs: the model's, with Specification.Container's image,
        artifact and environment over it."""
        container: dict = {}
        if spec.get("ModelName"):
            model = self.ctx.store.get("model", spec["ModelName"])
            if model is None:
                arn = names.arn("model", spec["ModelName"], self.ctx.region)
                raise ValidationError(f"Could not find model \"{arn}\".")
            container = copy.deepcopy(primary_container(model))
        over = spec.get("Container") or {}
        if over.get("Image"):
            container["Image"] = over["Image"]
        if over.get("ArtifactUrl"):
            container.pop("ModelDataSource", None)
            container["ModelDataUrl"] = over["ArtifactUrl"]
        if over.get("Environment"):
            container["Environment"] = {**container.get("Environment", {}), **over["Environment"]}
        if not container.get("Image"):
            raise ValidationError("Specification must name a ModelName or a Container with an Image.")
        return container

    @staticmethod
    def _need(spec: dict) -> Need:
        req = spec.get("ComputeResourceRequirements")
        if not req or req.get("MinMemoryRequiredInMb") is None:
            raise ValidationError("Specification.ComputeResourceRequirements.MinMemoryRequiredInMb is required: the "
                                  "memory, in MB, that each copy of the inference component reserves.")
        if req.get("MaxMemoryRequiredInMb") is not None and \
                int(req["MaxMemoryRequiredInMb"]) < int(req["MinMemoryRequiredInMb"]):
            raise ValidationError(f"MaxMemoryRequiredInMb ({req['MaxMemoryRequiredInMb']}) must not be less than "
                                  f"MinMemoryRequiredInMb ({req['MinMemoryRequiredInMb']}).")
        return Need.of(req)

    def _check_spec(self, spec: dict, pv: dict) -> tuple[dict, Need]:
        if spec.get("BaseInferenceComponentName"):  # only an update gets here with it (creation branches off)
            raise ValidationError("Specification.BaseInferenceComponentName can be set only when an adapter inference "
                                  "component is created: an inference component that hosts a model cannot become an "
                                  "adapter.")
        if "AcceleratorPartitionType" in (spec.get("ComputeResourceRequirements") or {}):
            raise ValidationError("Specification.AcceleratorPartitionType is not supported by the local SageMaker "
                                  "service (accelerator partitions (MIG) are not emulated).")
        if spec.get("InstanceType") and spec["InstanceType"] != pv.get("InstanceType"):
            raise ValidationError(f"Specification.InstanceType {spec['InstanceType']} does not match the instance "
                                  f"type of variant {pv['VariantName']} ({pv.get('InstanceType')}).")
        need = self._need(spec)
        why = placement.exceeds(need, pv.get("InstanceType", ""))
        if why:
            raise ValidationError(f"The inference component's ComputeResourceRequirements cannot fit on one instance "
                                  f"of variant {pv['VariantName']}: a copy requires {why}.")
        return self._container(spec), need

    @staticmethod
    def _summary(spec: dict, container: dict) -> dict:
        """DescribeInferenceComponent's Specification."""
        out = {k: copy.deepcopy(spec[k]) for k in ("ModelName", "StartupParameters", "ComputeResourceRequirements",
                                                   "SchedulingConfig", "InstanceType") if spec.get(k)}
        if spec.get("Container"):
            image = container.get("Image", "")
            c = {"DeployedImage": {"SpecifiedImage": image, "ResolvedImage": image, "ResolutionTime": time.time()}}
            for k in ("ArtifactUrl", "Environment"):
                if spec["Container"].get(k):
                    c[k] = copy.deepcopy(spec["Container"][k])
            out["Container"] = c
        if spec.get("DataCacheConfig"):
            out["DataCacheConfig"] = {"EnableCaching": bool(spec["DataCacheConfig"].get("EnableCaching"))}
        return out

    # the API -------------------------------------------------------------------------------
    def op_CreateInferenceComponent(self, p: dict) -> dict:
        name = names.validate_name(KIND, p.get("InferenceComponentName"))
        self.api._check_tags(p.get("Tags"))
        if self.scheduled:
            raise ValidationError("Inference components are not emulated in the local SageMaker service's scheduled "
                                  "mode (--scheduled).")
        if p.get("Specifications"):
            raise ValidationError("Specifications (several instance types) is not supported by the local SageMaker "
                                  "service: use Specification.")
        spec = copy.deepcopy(p.get("Specification") or {})
        adapter = bool(spec.get("BaseInferenceComponentName"))  # an adapter inference component (adapters.py)
        count = (p.get("RuntimeConfig") or {}).get("CopyCount")
        if not adapter and count is None:
            raise ValidationError("RuntimeConfig.CopyCount is required: the number of copies of the model to start.")
        if not adapter and int(count) < 1:
            raise ValidationError(f"Invalid RuntimeConfig.CopyCount {count}: an inference component is created with "
                                  "at least 1 copy (scale it to 0 with UpdateInferenceComponentRuntimeConfig).")
        endpoint = p.get("EndpointName", "")
        with self.lock:
            if self.ctx.store.get(KIND, name) is not None:
                raise ValidationError(f"Cannot create already existing inference component \"{self._arn(name)}\".")
            record = self.ctx.store.get("endpoint", endpoint)
            if record is None:
                raise self.api._not_found("endpoint", endpoint)
            status = record["describe"]["EndpointStatus"]
            if status != "InService":
                raise ValidationError(f"Cannot create inference component on endpoint "
                                      f"\"{record['describe']['EndpointArn']}\" in status {status}: the endpoint "
                                      "must be InService.")
            if adapter:
                return self._create_adapter(name, p, spec, record)
            config = self.ctx.store.get("endpoint-config", record["describe"]["EndpointConfigName"])
            pvs = (config or {}).get("describe", {}).get("ProductionVariants", [])
            variant = p.get("VariantName") or (pvs[0]["VariantName"] if len(pvs) == 1 else None)
            pv = next((v for v in pvs if v["VariantName"] == variant), None)
            if pv is None:
                raise ValidationError(f"Variant {p.get('VariantName') or '(none given)'} does not exist on endpoint "
                                      f"\"{record['describe']['EndpointArn']}\" (variants: "
                                      f"{', '.join(v['VariantName'] for v in pvs) or 'none'}).")
            if not is_component_variant(pv):
                raise ValidationError(f"Variant {variant} of endpoint {endpoint} hosts model {pv['ModelName']}: "
                                      "inference components can be deployed only on endpoints whose endpoint "
                                      "configuration's production variants specify no ModelName.")
            container, need = self._check_spec(spec, pv)
            now = time.time()
            describe = {
                "InferenceComponentName": name, "InferenceComponentArn": self._arn(name),
                "EndpointName": endpoint, "EndpointArn": record["describe"]["EndpointArn"], "VariantName": variant,
                "Specification": self._summary(spec, container),
                "RuntimeConfig": {"DesiredCopyCount": int(count), "CurrentCopyCount": 0},
                "CreationTime": now, "LastModifiedTime": now, "InferenceComponentStatus": "Creating",
            }
            self.ctx.store.put(KIND, {"name": name, "describe": describe, "tags": list(p.get("Tags") or []),
                                      "spec": spec, "container": container, "version": 1})
            rt = self._runtime(name, endpoint, variant, need)
            rt.desired = int(count)
            rt.kick.set()
        return {"InferenceComponentArn": describe["InferenceComponentArn"]}

    def op_DescribeInferenceComponent(self, p: dict) -> dict:
        return copy.deepcopy(self._record(p.get("InferenceComponentName", ""))["describe"])

    def op_ListInferenceComponents(self, p: dict) -> dict:
        keys = ("InferenceComponentName", "InferenceComponentArn", "EndpointName", "EndpointArn", "VariantName",
                "InferenceComponentStatus", "CreationTime", "LastModifiedTime")
        with self.lock:
            items = [{k: r["describe"][k] for k in keys if k in r["describe"]} for r in self.ctx.store.all(KIND)]
        if p.get("EndpointNameEquals"):
            items = [i for i in items if i["EndpointName"] == p["EndpointNameEquals"]]
        if p.get("VariantNameEquals"):
            items = [i for i in items if i["VariantName"] == p["VariantNameEquals"]]
        items = self.api._filter_sort(items, p, "InferenceComponentName", "InferenceComponentStatus")
        return self.api._page(items, p, "InferenceComponents")

    def _updatable(self, name: str) -> dict:
        record = self._record(name)
        status = record["describe"]["InferenceComponentStatus"]
        if status in _IN_PROGRESS:
            raise ValidationError(f"Cannot update in-progress inference component \"{self._arn(name)}\" "
                                  f"(status {status}).")
        if status != "InService":
            raise ValidationError(f"Cannot update inference component \"{self._arn(name)}\" in status {status}; "
                                  "delete and re-create it.")
        return record

    def op_UpdateInferenceComponentRuntimeConfig(self, p: dict) -> dict:
        count = (p.get("DesiredRuntimeConfig") or {}).get("CopyCount")
        if count is None:
            raise ValidationError("DesiredRuntimeConfig.CopyCount is required.")
        return {"InferenceComponentArn": self.set_copies(p.get("InferenceComponentName", ""), int(count))}

    def set_copies(self, name: str, count: int, on_done=None) -> str:
        """UpdateInferenceComponentRuntimeConfig, and the autoscaler's way to scale a component:
        Updating from now, InService once the copies run (`on_done(ok, message)` then)."""
        if count < 0:
            raise ValidationError(f"Invalid CopyCount {count}: it must not be negative.")
        with self.lock:
            self._refuse_copies(self._record(name))
            record = self._updatable(name)
            record["describe"]["RuntimeConfig"]["DesiredCopyCount"] = count
            self._put(record, InferenceComponentStatus="Updating", FailureReason=None)
            rt = self._rt[name]
            rt.desired = count
            if on_done:
                rt.waiters.append(on_done)
            rt.kick.set()
        return record["describe"]["InferenceComponentArn"]

    def op_UpdateInferenceComponent(self, p: dict) -> dict:
        name = p.get("InferenceComponentName", "")
        if p.get("Specifications"):
            raise ValidationError("Specifications (several instance types) is not supported by the local SageMaker "
                                  "service: use Specification.")
        with self.lock:
            if adapters.is_adapter(self._record(name)):
                return self._update_adapter(self._record(name), p)
        spec, runtime = p.get("Specification"), p.get("RuntimeConfig")
        if not spec and not runtime:
            raise ValidationError("Specify Specification, RuntimeConfig or both to update an inference component.")
        count = None
        if runtime:
            if runtime.get("CopyCount") is None or int(runtime["CopyCount"]) < 0:
                raise ValidationError("RuntimeConfig.CopyCount is required and must not be negative.")
            count = int(runtime["CopyCount"])
        with self.lock:
            record = self._updatable(name)
            rt = self._rt[name]
            pending = None
            if spec:
                merged = {**record["spec"], **copy.deepcopy(spec)}
                pv = self._endpoint_pv(record["describe"]["EndpointName"], record["describe"]["VariantName"]) or {}
                container, _ = self._check_spec(merged, pv)
                if merged != record["spec"] or container != record["container"]:
                    pending = (merged, container, copy.deepcopy(p.get("DeploymentConfig")))
            if count is not None:
                record["describe"]["RuntimeConfig"]["DesiredCopyCount"] = count
                rt.desired = count
            if p.get("DeploymentConfig"):
                record["describe"]["LastDeploymentConfig"] = copy.deepcopy(p["DeploymentConfig"])
            self._put(record, InferenceComponentStatus="Updating", FailureReason=None)
            rt.pending_spec = pending
            rt.kick.set()
        return {"InferenceComponentArn": record["describe"]["InferenceComponentArn"]}

    def op_DeleteInferenceComponent(self, p: dict) -> dict:
        name = p.get("InferenceComponentName", "")
        with self.lock:
            record = self._record(name)
            if record["describe"]["InferenceComponentStatus"] == "Deleting":
                return {}
            if adapters.is_adapter(record):
                self._delete_adapter(record)
                return {}
            self._refuse_base_deletion(name)
            self._put(record, InferenceComponentStatus="Deleting")
            rt = self._rt.get(name)
            if rt is None:   # nothing runs (a Failed component after a restart)
                rt = self._runtime(name, record["describe"]["EndpointName"], record["describe"]["VariantName"],
                                   Need())
            rt.deleting = True
            for server in list(rt.starting):  # a copy still starting will not be waited for
                kill_group(server.proc)
            rt.kick.set()
        return {}

    # what the rest of the service asks -----------------------------------------------------
    def instance_counts(self, endpoint: str, pv: dict) -> int:
        """An IC variant's instance count (Endpoints' DescribeEndpoint)."""
        with self.lock:
            pool = self._pool(endpoint, pv["VariantName"])
            if pool.instance_type != pv.get("InstanceType", "") and not any(i.slots for i in pool.instances):
                # UpdateEndpoint to another instance type (allowed while no component runs there)
                pool = self._pools[(endpoint, pv["VariantName"])] = Pool(
                    endpoint, pv["VariantName"], pv.get("InstanceType", ""), int(pv.get("InitialInstanceCount", 1)))
            return pool.count()

    def endpoint_updated(self, endpoint: str) -> None:
        """UpdateEndpoint switched to a new IC configuration: its managed instance scaling applies."""
        with self.lock:
            for (ep_name, variant), pool in list(self._pools.items()):
                if ep_name == endpoint:
                    self._tidy(pool)
                    self._kick_pool(ep_name, variant)

    def endpoint_deleted(self, endpoint: str) -> None:
        with self.lock:
            for key in [k for k in self._pools if k[0] == endpoint]:
                del self._pools[key]

    def component(self, name: str) -> dict | None:
        """The component's Describe (None when there is none): the autoscaler's view."""
        record = self.ctx.store.get(KIND, name)
        return record["describe"] if record else None

    def invocations(self, name: str) -> int:
        rt = self._rt.get(name)
        if rt is None:
            return 0
        with rt.count_lock:
            return rt.invocations

    def busy_seconds(self, name: str) -> float:
        """Seconds of in-flight requests since the service started (integral of concurrency)."""
        rt = self._rt.get(name)
        if rt is None:
            return 0.0
        with rt.count_lock:
            rt._flush()
            return rt.busy

    def no_capacity_failures(self, name: str, start: float, end: float) -> int:
        """NoCapacityInvocationFailures in [start, end) (time.monotonic)."""
        rt = self._rt.get(name)
        if rt is None:
            return 0
        with rt.count_lock:
            return sum(1 for t in rt.failures if start <= t < end)

    # invocations ---------------------------------------------------------------------------
    def invoke(self, endpoint: str, component: str | None, body: bytes, headers: dict[str, str]):
        """(variant, headers, body) of an invocation that names a component or reaches an IC
        endpoint; None when it is an ordinary endpoint's (Endpoints.invoke answers it)."""
        record = self.ctx.store.get("endpoint", endpoint)
        if record is None or record["describe"]["EndpointStatus"] == "Deleting":
            raise RuntimeValidationError(f"Endpoint {endpoint} of account {names.ACCOUNT} not found.")
        on_components = self.is_component_endpoint(endpoint)
        if not component:
            if on_components:
                raise RuntimeValidationError(HEADER_REQUIRED)
            return None
        if not on_components:
            raise RuntimeValidationError(HEADER_NOT_ALLOWED)
        ic = self.ctx.store.get(KIND, component)
        if ic is None or ic["describe"]["EndpointName"] != endpoint or \
                ic["describe"]["InferenceComponentStatus"] == "Deleting":
            raise self._unknown_component(component, endpoint)
        adapter = component if adapters.is_adapter(ic) else None
        base = adapters.base_of(ic) if adapter else component   # an adapter runs on its base's copies
        rt = self._rt.get(base)
        if rt is None:
            raise self._unknown_component(component, endpoint)
        variant = ic["describe"]["VariantName"]
        pv = self._endpoint_pv(endpoint, variant) or {}
        copies = rt.copies
        server = copies.acquire_least_outstanding(
            randomly=(pv.get("RoutingConfig") or {}).get("RoutingStrategy") == "RANDOM",
            where=(lambda s: adapter in s.adapters) if adapter else None)
        if server is None:
            # An adapter has no copies of its own: a request that finds none of its base's running
            # counts against the base (whose scaling can wake it); one that finds copies without
            # the adapter (Creating, Updating, Failed) lacks no capacity and is not counted.
            if not adapter or copies.count() == 0:
                with rt.count_lock:
                    rt.failures.append(time.monotonic())
            raise RuntimeValidationError(NO_CAPACITY)
        if adapter:
            headers = {**headers, adapters.HEADER: adapter}
        rt.begin()   # an adapter's requests load its base's copies: the base's metrics count them
        try:
            status, resp_headers, data = _post(server.port, body, headers)
        finally:
            rt.end()
            copies.release(server)
        if status >= 400:
            raise model_error(status, data, f"the inference component's logs (llama-operator logs {base} "
                                            "--inference-component)",
                              names.log_stream_arn(self.ctx.region, endpoint))
        return variant, resp_headers, data

    @staticmethod
    def _unknown_component(component: str, endpoint: str) -> RuntimeValidationError:
        return RuntimeValidationError(f"Inference Component {component} not found for endpoint {endpoint} of "
                                      f"account {names.ACCOUNT}.")

    # pools ---------------------------------------------------------------------------------
    def _pool(self, endpoint: str, variant: str) -> Pool:
        pool = self._pools.get((endpoint, variant))
        if pool is None:
            pv = self._endpoint_pv(endpoint, variant) or {}
            record = self.ctx.store.get("endpoint", endpoint)
            described = next((v for v in (record or {}).get("describe", {}).get("ProductionVariants") or []
                              if v.get("VariantName") == variant), {})
            count = described.get("DesiredInstanceCount", pv.get("InitialInstanceCount", 1))
            pool = self._pools[(endpoint, variant)] = Pool(endpoint, variant, pv.get("InstanceType", ""), int(count))
        return pool

    def _may_add(self) -> bool:
        return self.api._endpoint_instances() < self.ctx.max_instances

    def _scaling(self, pool: Pool) -> Scaling:
        return Scaling.of(self._endpoint_pv(pool.endpoint, pool.variant) or {})

    def _tidy(self, pool: Pool) -> None:
        """Managed instance scaling's bounds, and the endpoint's described counts."""
        scaling = self._scaling(pool)
        pool.grow_to(scaling, self._may_add)
        pool.shrink(scaling)
        self._publish(pool)

    def _publish(self, pool: Pool) -> None:
        record = self.ctx.store.get("endpoint", pool.endpoint)
        if record is None:
            return
        changed = False
        for pv in record["describe"].get("ProductionVariants") or []:
            if pv.get("VariantName") == pool.variant and (pv.get("CurrentInstanceCount"),
                                                          pv.get("DesiredInstanceCount")) != (pool.count(),) * 2:
                pv["CurrentInstanceCount"] = pv["DesiredInstanceCount"] = pool.count()
                changed = True
        if changed:
            self.ctx.store.put("endpoint", record)

    def _kick_pool(self, endpoint: str, variant: str, freed_by: Runtime | None = None) -> None:
        """Room freed on the variant: components with unplaced copies try again. Not `freed_by`,
        the component whose step freed it: that step settles its copy count itself (a copy that failed
        to start sets DesiredCopyCount back), and a step kicked now would clear its FailureReason."""
        for rt in self._rt.values():
            if rt is freed_by:
                continue
            if (rt.endpoint, rt.variant) == (endpoint, variant) and not rt.deleting and \
                    rt.desired > rt.copies.count() + len(rt.starting):
                rt.kick.set()
