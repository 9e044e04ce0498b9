"""The CRD files are valid, structural, self-documenting and carry the shared names."""

import kubernetes_validate
import pytest

import crdtools

KINDS = ["llamafinetunes", "llamaendpoints"]


@pytest.mark.parametrize("kind", KINDS)
def test_crd_is_a_valid_kubernetes_object(kind):
    kubernetes_validate.validate(crdtools.crd(kind), kubernetes_validate.latest_version(), strict=True)


def _walk(schema, path):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural_and_every_field_is_described(kind):
    root = crdtools.root_schema(kind)
    for part in ("spec", "status"):
        for path, node in _walk(root["properties"][part], part):
            assert "type" in node, f"{path} has no type (structural schemas need one)"
            assert not ("properties" in node and "additionalProperties" in node), path
            if not path.endswith(("[]", "{}")):
                assert node.get("description"), f"{path} has no description (kubectl explain shows it)"


@pytest.mark.parametrize("kind,short,columns,phases,fields", [
    ("llamafinetunes", "lft",
     [("Status", ".status.phase"), ("Job", ".status.trainingJobName"), ("Instance", ".spec.resources.instanceType"),
      ("Nodes", ".spec.resources.instanceCount"), ("Loss", ".status.trainingLoss"),
      ("Age", ".metadata.creationTimestamp")],
     ["Pending", "WaitingForModel", "Creating", "InProgress", "Completed", "Failed", "Stopping", "Stopped"],
     {"trainingJobName": "string", "baseModelS3Uri": "string", "trainingJobArn": "string", "secondaryStatus": "string",
      "failureReason": "string", "modelS3Uri": "string", "adapterS3Uri": "string", "modelArtifacts": "string", "sourceS3Uri": "string",
      "startTime": "string", "endTime": "string", "billableSeconds": "integer", "trainingLoss": "number",
      "lastEventTime": "string", "observedGeneration": "integer", "conditions": "array", "phase": "string"}),
    ("llamaendpoints", "lep",
     [("Status", ".status.phase"), ("Endpoint", ".status.endpointName"), ("Model", ".status.modelName"),
      ("Instance", ".spec.resources.instanceType"), ("Instances", ".status.instances.current"),
      ("Desired", ".status.instances.desired"), ("Copies", ".status.inferenceComponent.copies.current"),
      ("Age", ".metadata.creationTimestamp")],
     ["Pending", "WaitingForModel", "Creating", "InService", "Updating", "Degraded", "Failed", "Deleting"],
     {"phase": "string", "endpointName": "string", "endpointArn": "string", "invocationUrl": "string",
      "modelName": "string", "endpointConfigName": "string", "modelS3Uri": "string", "adapters": "array", "specHash": "string",
      "instances": "object", "scaling": "object", "configHash": "string", "inferenceComponent": "object", "adapterArtifacts": "array",
      "failureReason": "string", "lastEventTime": "string", "observedGeneration": "integer",
      "conditions": "array"}),
])
def test_shared_names(kind, short, columns, phases, fields):
    crd = crdtools.crd(kind)
    spec = crd["spec"]
    assert spec["group"] == "llamaops.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == [short] and "llama" in spec["names"]["categories"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"]] == columns
    status = crdtools.root_schema(kind)["properties"]["status"]["properties"]
    assert {k: v["type"] for k, v in status.items()} == fields
    assert status["phase"]["enum"] == phases
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) == {"type", "status", "reason", "message", "observedGeneration", "lastTransitionTime"}
