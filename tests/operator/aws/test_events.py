"""SageMaker's documented EventBridge events (tests/data/sagemaker_events/, verbatim) through the
operator's intake, the normalisers that intake uses, and the local service's emitted details."""

import asyncio
import copy
import datetime as dt
import hashlib
import json
import random
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from llama_operator.status import endpoint as es
from llama_operator.status import values
from llama_operator import kinds
from llama_operator.status import finetune as st
from llama_operator.aws import events as intake
from llama_operator.handlers import endpoint as endpoint_handlers
from llama_operator.handlers.app import App
from llama_operator.settings import Settings
from llama_operator.status import endpoint_changes
from llama_operator.local.sagemaker import endpoints as local_endpoints
from llama_operator.local.sagemaker import events as local_events
from llama_operator.local.sagemaker.context import Context
from llama_operator.local.sagemaker.store import Store

DATA = Path(__file__).resolve().parents[2] / "data" / "sagemaker_events"
NOW = "2026-12-04T00:00:00.000Z"
UTC = dt.timezone.utc

# As published, the deployment state change examples are not JSON (see the README there).
PLACEHOLDER = re.compile(r'("StartTime":\s*)Timestamp\b')
TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def example_text(name: str) -> str:
    return (DATA / name).read_text()


def repaired(text: str) -> str:
    """The three repairs the README names, and only those."""
    text = TRAILING_COMMA.sub(r"\1", PLACEHOLDER.sub(r"\1null", text))
    return text + "\n}" * (text.count("{") - text.count("}"))


def example_body(name: str) -> str:
    """The example as an SQS message body (EventBridge -> SQS delivers the event itself)."""
    text = example_text(name)
    return text if name in ("training-job-state-change.json", "endpoint-state-change.json") else repaired(text)


def ms(epoch_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_ms / 1000, UTC)


# ---- the data are what AWS documents -------------------------------------------------------------

def test_example_files_are_the_verbatim_ones_the_readme_lists():
    readme = (DATA / "README.md").read_text()
    listed = dict(re.findall(r"\| `([\w.-]+\.json)` \|.*\| `([0-9a-f]{64})` \|", readme))
    assert sorted(listed) == sorted(p.name for p in DATA.glob("*.json"))
    for name, digest in listed.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name
    assert "https://docs.aws.amazon.com/sagemaker/latest/dg/automating-sagemaker-with-eventbridge.html" in readme


def test_deployment_examples_need_only_the_documented_repairs():
    for name in ("endpoint-deployment-state-change-canary.json", "endpoint-deployment-state-change-capacity.json"):
        with pytest.raises(json.JSONDecodeError):
            json.loads(example_text(name))
        event = json.loads(repaired(example_text(name)))
        assert event["detail-type"] == "SageMaker Endpoint Deployment State Change"


# ---- documented events through the operator's intake ----------------------------------------------

def test_endpoint_example_is_read_in_the_api_spelling_and_shows_in_service():
    raw = json.loads(example_text("endpoint-state-change.json"))
    assert raw["detail"]["EndpointStatus"] == "IN_SERVICE"  # what SageMaker sends

    event = intake.parse_message(example_body("endpoint-state-change.json"))
    detail = event["detail"]
    assert event["detail-type"] == kinds.ENDPOINT_DETAIL_TYPE
    assert detail["EndpointStatus"] == "InService"  # what the rest of the operator reads
    assert detail["LastModifiedTime"] == ms(1592411994287) and detail["CreationTime"] == ms(1592411992203)
    assert detail["ProductionVariants"] == raw["detail"]["ProductionVariants"] and detail["Tags"] == {}

    # what a user sees: the endpoint's LlamaEndpoint status after the event
    obj = {"metadata": {"namespace": "default", "name": "chat", "uid": "u-1", "generation": 1}, "status": {}}
    patch = endpoint_changes.event_update(event, obj)
    assert patch["phase"] == "InService"
    assert patch["endpointName"] == "MyEndpoint" and patch["endpointConfigName"] == "MyEndpointConfig"
    assert patch["lastEventTime"] == "2020-06-17T16:39:54.287Z"
    assert patch["invocationUrl"] == \
        "https://runtime.sagemaker.us-west-2.amazonaws.com/endpoints/MyEndpoint/invocations"
    conditions = {c["type"]: c["status"] for c in patch["conditions"]}
    assert conditions["Ready"] == "True" and conditions["Progressing"] == "False" and conditions["Failed"] == "False"
    assert es.is_settled(detail)


def test_endpoint_example_shows_in_service_even_without_intake_normalising_it():
    raw = json.loads(example_text("endpoint-state-change.json"))["detail"]
    assert es.observe(raw, {}, now=NOW)["phase"] == "InService"
    assert es.is_settled(raw)


def test_endpoint_example_wrapped_by_sns_reads_the_same():
    body = json.dumps({"Type": "Notification", "Message": example_body("endpoint-state-change.json")})
    assert intake.parse_message(body) == intake.parse_message(example_body("endpoint-state-change.json"))


def test_endpoint_example_through_the_event_handler_writes_in_service_and_posts_its_event():
    event = json.loads(example_body("endpoint-state-change.json"))
    event["detail"]["Tags"] = {"llamaops.dev/namespace": "default", "llamaops.dev/name": "chat",
                               "llamaops.dev/uid": "u-1"}  # the owner tags the operator puts on what it creates
    event = intake.parse_message(json.dumps(event))

    class Kube:
        obj = {"metadata": {"namespace": "default", "name": "chat", "uid": "u-1", "generation": 2},
               "status": {"phase": "Creating", "endpointName": "MyEndpoint"}}
        posted: list = []

        async def update_status(self, api_version, plural, namespace, name, compute):
            written = compute(copy.deepcopy(self.obj))
            return copy.deepcopy(self.obj), written

        async def post_event(self, obj, type_, reason, message):
            self.posted.append((type_, reason))

    kube = Kube()
    assert asyncio.run(endpoint_handlers.on_endpoint_event(App(settings=Settings(), sagemaker=None, s3=None, kube=kube), event))
    assert kube.posted == [("Normal", "InService")]


def test_training_example_is_read_in_the_api_spelling_and_shows_completed():
    raw = json.loads(example_text("training-job-state-change.json"))
    assert raw["detail"]["CreationTime"] == "1583831889050"  # epoch millis in a string

    event = intake.parse_message(example_body("training-job-state-change.json"))
    detail = event["detail"]
    assert event["detail-type"] == kinds.TRAINING_DETAIL_TYPE
    for key in ("CreationTime", "TrainingStartTime", "TrainingEndTime", "LastModifiedTime"):
        assert detail[key] == ms(1583831889050), key
    assert detail["TrainingJobStatus"] == "Completed" and detail["SecondaryStatus"] == "Completed"
    assert detail["HyperParameters"] == {"Hyper": "Parameters"} and detail["Tags"] == {}
    assert intake.owner_of(detail) is None  # no owner tags in the example: no resource of ours

    patch, transitions = st.from_training_job(detail, {}, generation=1, now=NOW)
    assert patch["phase"] == "Completed"  # what TrainingJobStatus Completed means to a user
    assert patch["trainingJobName"] == "89c96cc8-dded-4739-afcc-6f1dc936701d"
    assert patch["trainingJobArn"] == "arn:aws:sagemaker:us-east-1:123456789012:training-job/kmeans-1"
    assert patch["secondaryStatus"] == "Completed"
    assert patch["lastEventTime"] == patch["startTime"] == patch["endTime"] == "2020-03-10T09:18:09.050Z"
    assert patch["modelS3Uri"] == "S3OutputPath/89c96cc8-dded-4739-afcc-6f1dc936701d/model/"
    conditions = {c["type"]: c["status"] for c in patch["conditions"]}
    assert conditions == {"Ready": "True", "Progressing": "False", "Failed": "False"}
    assert [(t, r) for t, r, _ in transitions] == [("Normal", "TrainingJobCompleted")]

    # a duplicate delivery changes nothing; a late InProgress one does not move status back
    current = {**patch}
    again, transitions = st.from_training_job(detail, current, generation=1, now=NOW)
    assert transitions == [] and {k: v for k, v in again.items() if current.get(k) != v} == {}
    late = {**detail, "TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}
    assert st.from_training_job(late, current, generation=1, now=NOW) == ({}, [])


def test_training_example_shows_completed_even_without_intake_normalising_it():
    raw = json.loads(example_text("training-job-state-change.json"))["detail"]
    patch, _ = st.from_training_job(raw, {}, generation=1, now=NOW)
    assert patch["phase"] == "Completed" and patch["lastEventTime"] == "2020-03-10T09:18:09.050Z"


@pytest.mark.parametrize("name", ["endpoint-deployment-state-change-canary.json",
                                  "endpoint-deployment-state-change-capacity.json"])
def test_deployment_examples_are_read_but_routed_to_no_handler(name):
    event = intake.parse_message(example_body(name))
    detail = event["detail"]
    assert event["detail-type"] == kinds.ENDPOINT_DEPLOYMENT_DETAIL_TYPE
    assert detail["EndpointStatus"] == "Updating"
    assert detail["LastModifiedTime"] == detail["CreationTime"] == ms(1635195148181)
    statuses = [s for v in detail["ProductionVariants"] + (detail.get("PendingDeploymentSummary") or {}).get(
        "ProductionVariants", []) for s in v.get("VariantStatus", [])]
    assert statuses and all(s["StartTime"] == ms(1635195269181) for s in statuses)
    if "PendingDeploymentSummary" in detail:
        assert detail["PendingDeploymentSummary"]["StartTime"] is None  # the placeholder, repaired to null
    # not subscribed (see aws/events.py): neither handler takes this detail-type
    assert event["detail-type"] not in (kinds.TRAINING_DETAIL_TYPE, kinds.ENDPOINT_DETAIL_TYPE)


# ---- the normalisers --------------------------------------------------------------------------------

API_ENDPOINT_STATUSES = ["OutOfService", "Creating", "Updating", "SystemUpdating", "RollingBack", "InService",
                         "Deleting", "Failed", "UpdateRollbackFailed"]
EVENT_ENDPOINT_STATUSES = ["OUT_OF_SERVICE", "CREATING", "UPDATING", "SYSTEM_UPDATING", "ROLLING_BACK", "IN_SERVICE",
                           "DELETING", "FAILED", "UPDATE_ROLLBACK_FAILED"]


def upper_snake(value: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", value).upper()


def test_the_endpoint_status_enum_is_botocores():
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    assert sorted(model.shape_for("EndpointStatus").enum) == sorted(API_ENDPOINT_STATUSES) \
        == sorted(es.ENDPOINT_STATUSES)
    assert sorted(model.shape_for("TrainingJobStatus").enum) == sorted(st.TRAINING_JOB_STATUSES)
    assert sorted(model.shape_for("SecondaryStatus").enum) == sorted(st.SECONDARY_STATUSES)


@pytest.mark.parametrize("api, event", list(zip(API_ENDPOINT_STATUSES, EVENT_ENDPOINT_STATUSES)))
def test_endpoint_status_spellings_name_the_same_status_and_phase(api, event):
    assert upper_snake(api) == event
    for spelling in (api, event, event.lower(), api.upper(), api.lower()):
        assert es.endpoint_status_name(spelling) == api, spelling
        assert es.endpoint_status_name(es.endpoint_status_name(spelling)) == api  # idempotent
    for config, desired, reason in (("c1", "c1", None), ("c0", "c1", None), ("c0", "c1", "alarm")):
        assert es.phase_of(es.endpoint_status_name(event), config, desired, reason) == \
            es.phase_of(api, config, desired, reason)
    described = {"EndpointName": "e", "EndpointConfigName": "c1", "EndpointStatus": api, "LastModifiedTime": 1000.0}
    assert es.observe({**described, "EndpointStatus": event}, {}, desired_config="c1", now=NOW) == \
        es.observe(described, {}, desired_config="c1", now=NOW)
    assert es.is_settled({"EndpointStatus": event}) == es.is_settled({"EndpointStatus": api})


@pytest.mark.parametrize("value", ["", "Unknown", "SOMETHING_NEW", None, 3])
def test_unknown_statuses_are_kept_as_they_are(value):
    assert es.endpoint_status_name(value) == value
    assert st.training_job_status_name(value) == value


@pytest.mark.parametrize("api", list(st.TRAINING_JOB_STATUSES) + list(st.SECONDARY_STATUSES))
def test_training_status_spellings(api):
    name = st.secondary_status_name if api in st.SECONDARY_STATUSES else st.training_job_status_name
    assert name(api) == api and name(upper_snake(api)) == api and name(api.upper()) == api
    if api in st.TRAINING_JOB_STATUSES:
        assert st.training_job_status_name(upper_snake(api)) == api
        assert st.phase_of(upper_snake(api)) == st.phase_of(api)


def _random_millis(rng: random.Random) -> int:
    # 2001-09-09 .. 2286-11-20: where millis and seconds are told apart by size alone
    return rng.randrange(1_000_000_000_000, 9_999_999_999_999)


def test_every_time_form_reads_as_the_same_instant():
    rng = random.Random(20261204)
    for _ in range(500):
        millis = _random_millis(rng)
        seconds = millis / 1000
        instant = dt.datetime.fromtimestamp(seconds, UTC)
        forms = [millis, float(millis), str(millis), f"{millis}.0", f" {millis} ", seconds, str(seconds),
                 instant, instant.replace(tzinfo=None), instant.isoformat(),
                 instant.isoformat().replace("+00:00", "Z"), instant.replace(tzinfo=None).isoformat(),
                 instant.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))).isoformat(), values.iso(seconds)]
        for form in forms:
            assert values.to_epoch(form) == pytest.approx(seconds, abs=1e-3), form
            got = values.to_datetime(form)
            assert got.tzinfo is not None and got.utcoffset() == dt.timedelta(0), form
            assert abs((got - instant).total_seconds()) < 1e-3, form
            # what intake makes of it reads back as itself
            assert values.to_datetime(got) == got


@pytest.mark.parametrize("value", [None, ""])
def test_no_time_is_none(value):
    assert values.to_epoch(value) is None and values.to_datetime(value) is None


@pytest.mark.parametrize("value", ["yesterday", "12:00", True, float("nan"), "inf", [1], {"t": 1}])
def test_what_is_not_a_time_is_refused(value):
    with pytest.raises((TypeError, ValueError)):
        values.to_epoch(value)


def test_normalise_detail_is_idempotent_and_leaves_the_input_alone():
    rng = random.Random(7)
    for _ in range(200):
        t = [_random_millis(rng) for _ in range(4)]
        detail = {
            "EndpointStatus": rng.choice(EVENT_ENDPOINT_STATUSES + API_ENDPOINT_STATUSES),
            "TrainingJobStatus": rng.choice(["IN_PROGRESS", "Completed", "STOPPED", "Failed"]),
            "SecondaryStatus": rng.choice(["LAUNCHING_ML_INSTANCES", "Training", "MAX_RUNTIME_EXCEEDED"]),
            "CreationTime": rng.choice([t[0], str(t[0]), float(t[0])]),
            "LastModifiedTime": rng.choice([str(t[1]), t[1] / 1000, values.iso(t[1] / 1000)]),
            "SecondaryStatusTransitions": [{"Status": "DOWNLOADING_TRAINING_IMAGE", "StartTime": str(t[2])}],
            "FinalMetricDataList": [{"MetricName": "train:loss", "Value": 0.5, "Timestamp": t[3]}],
            "Tags": {"StartTime": "not a time: a tag of the user's", "llamaops.dev/name": "chat"},
            "HyperParameters": {"EndTime": "3"},
        }
        before = copy.deepcopy(detail)
        once = intake.normalise_detail(detail)
        assert detail == before
        assert intake.normalise_detail(once) == once
        assert once["EndpointStatus"] in API_ENDPOINT_STATUSES
        assert once["TrainingJobStatus"] in st.TRAINING_JOB_STATUSES
        assert once["SecondaryStatus"] in st.SECONDARY_STATUSES
        assert once["SecondaryStatusTransitions"][0]["Status"] == "DownloadingTrainingImage"
        assert once["CreationTime"] == ms(t[0]) and abs((once["LastModifiedTime"] - ms(t[1])).total_seconds()) < 1e-3
        assert once["SecondaryStatusTransitions"][0]["StartTime"] == ms(t[2])
        assert once["FinalMetricDataList"][0]["Timestamp"] == ms(t[3])
        assert once["Tags"] == detail["Tags"] and once["HyperParameters"] == {"EndTime": "3"}


def test_a_time_that_cannot_be_read_is_left_out_not_fatal():
    event = intake.parse_message(json.dumps({"detail-type": kinds.ENDPOINT_DETAIL_TYPE, "detail": {
        "EndpointName": "e", "EndpointStatus": "IN_SERVICE", "LastModifiedTime": "soon", "CreationTime": 1}}))
    assert "LastModifiedTime" not in event["detail"] and event["detail"]["EndpointStatus"] == "InService"
    assert es.observe(event["detail"], {}, now=NOW)["phase"] == "InService"


# ---- the local service's events ---------------------------------------------------------------------

def local_describe(status: str, config: str = "c1") -> dict:
    """A local DescribeEndpoint record as the store keeps it (epoch seconds)."""
    return {"EndpointName": "lep-chat", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/lep-chat",
            "EndpointConfigName": config, "EndpointStatus": status, "CreationTime": 1_795_000_000.25,
            "LastModifiedTime": 1_795_000_100.5,
            "ProductionVariants": [{"VariantName": "AllTraffic", "CurrentWeight": 1.0, "DesiredWeight": 1.0,
                                    "CurrentInstanceCount": 1, "DesiredInstanceCount": 1,
                                    "DeployedImages": [{"SpecifiedImage": "i", "ResolvedImage": "i",
                                                        "ResolutionTime": 1_795_000_050.0}]}]}


@pytest.mark.parametrize("api, event", list(zip(API_ENDPOINT_STATUSES, EVENT_ENDPOINT_STATUSES)))
def test_local_endpoint_detail_is_the_documented_shape_and_the_operator_reads_it_back(api, event):
    describe = local_describe(api)
    before = copy.deepcopy(describe)
    detail = local_events.detail_for("endpoint", describe)
    assert describe == before  # the Describe* response keeps the API's spelling
    assert detail["EndpointStatus"] == event
    assert detail["CreationTime"] == 1_795_000_000_250 and detail["LastModifiedTime"] == 1_795_000_100_500
    assert detail["ProductionVariants"][0]["DeployedImages"][0]["ResolutionTime"] == 1_795_000_050_000

    body = json.dumps(local_events.envelope("endpoint", describe["EndpointArn"], describe, "us-east-1", now=0))
    got = intake.parse_message(body)
    assert got["detail"]["EndpointStatus"] == api
    assert es.observe(got["detail"], {}, desired_config="c1", now=NOW) == \
        es.observe(describe, {}, desired_config="c1", now=NOW)


def test_local_training_detail_writes_times_as_the_documented_strings():
    describe = {"TrainingJobName": "ft-chat", "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
                "CreationTime": 1_795_000_000.0, "TrainingStartTime": 1_795_000_010.125,
                "TrainingEndTime": 1_795_000_090.0, "LastModifiedTime": 1_795_000_091.0,
                "SecondaryStatusTransitions": [{"Status": "Completed", "StartTime": 1_795_000_090.0}],
                "OutputDataConfig": {"S3OutputPath": "s3://b/out"}, "HyperParameters": {"epochs": "1"}}
    before = copy.deepcopy(describe)
    detail = local_events.detail_for("training-job", describe)
    assert describe == before
    documented = json.loads(example_text("training-job-state-change.json"))["detail"]
    for key in ("CreationTime", "TrainingStartTime", "TrainingEndTime", "LastModifiedTime"):
        assert type(detail[key]) is type(documented[key]) is str and detail[key].isdigit(), key
    assert detail["TrainingStartTime"] == "1795000010125"
    assert detail["TrainingJobStatus"] == "Completed" and detail["HyperParameters"] == {"epochs": "1"}

    got = intake.parse_message(json.dumps(local_events.envelope("training-job", "arn:x", describe, "us-east-1")))
    assert st.from_training_job(got["detail"], {}, generation=1, now=NOW) == \
        st.from_training_job(describe, {}, generation=1, now=NOW)


def test_local_set_keeps_describe_camel_case_and_emits_upper_snake(tmp_path):
    sent: list[dict] = []
    store = Store(tmp_path)
    ctx = Context(region="us-east-1", state_dir=tmp_path, store=store, sink=SimpleNamespace(emit=sent.append),
                  child_env={}, s3_factory=lambda: None)
    store.put("endpoint", {"name": "lep-chat", "describe": local_describe("Creating"),
                           "tags": [{"Key": "llamaops.dev/name", "Value": "chat"}]})
    local_endpoints.Endpoints._set(SimpleNamespace(ctx=ctx), "lep-chat", "InService")

    assert store.get("endpoint", "lep-chat")["describe"]["EndpointStatus"] == "InService"
    (event,) = sent
    assert event["detail-type"] == "SageMaker Endpoint State Change"
    assert event["detail"]["EndpointStatus"] == "IN_SERVICE"
    assert isinstance(event["detail"]["LastModifiedTime"], int)
    assert event["detail"]["Tags"] == {"llamaops.dev/name": "chat"}
    read = intake.parse_message(json.dumps(event))
    assert es.observe(read["detail"], {}, now=NOW)["phase"] == "InService"
