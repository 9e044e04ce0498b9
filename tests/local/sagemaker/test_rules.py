"""The service's pure rules, without a running service."""

from __future__ import annotations

import pytest

from llama_operator.local.sagemaker import events, model_servers, names, training_run, training_status
from llama_operator.local.sagemaker.errors import ValidationError


def test_host_addresses_are_distinct_per_job_and_avoid_common_loopbacks():
    seen = set()
    for block in range(0, 200_000, 997):
        hosts = training_run.host_addresses(block, 3)
        assert [h.rsplit(".", 1)[1] for h in hosts] == ["1", "2", "3"]
        assert not hosts[0].startswith(("127.0.0.", "127.0.1."))
        seen.add(hosts[0])
    assert training_run.host_addresses(7, 2) != training_run.host_addresses(8, 2)


def test_final_metrics_take_the_last_match_and_skip_bad_definitions():
    log = "step 1 loss=0.9 acc=0.1\nstep 2 loss=0.4\nloss=nan?\n"
    got = training_status.final_metrics([{"Name": "loss", "Regex": r"loss=([0-9.]+)"},
                                  {"Name": "acc", "Regex": r"acc=([0-9.]+)"},
                                  {"Name": "broken", "Regex": r"("},
                                  {"Name": "absent", "Regex": r"bleu=([0-9.]+)"}], log, now=5.0)
    assert got == [{"MetricName": "loss", "Value": 0.4, "Timestamp": 5.0},
                   {"MetricName": "acc", "Value": 0.1, "Timestamp": 5.0}]


def test_failure_reason_is_prefixed_and_capped():
    assert training_status.failure_reason(None, 3).startswith("AlgorithmError: the training process exited with code 3")
    long = training_status.failure_reason("x" * 5000, 1)
    assert len(long) == 1024 and long.endswith("...")


def test_names_follow_sagemaker_pattern():
    assert names.validate_name("endpoint", "a-b--c9") == "a-b--c9"
    for bad in ("", "-a", "a-", "a_b", "a" * 64, None):
        with pytest.raises(ValidationError) as err:
            names.validate_name("endpoint", bad)
        assert "endpointName" in err.value.message
    assert names.arn("training-job", "MyJob", "eu-west-1") == \
        "arn:aws:sagemaker:eu-west-1:123456789012:training-job/myjob"
    assert names.parse_arn("arn:aws:sagemaker:eu-west-1:123456789012:endpoint/chat") == ("endpoint", "chat")
    assert names.parse_arn("arn:aws:s3:::bucket") is None


def test_envelope_uses_epoch_millis_inside_detail():
    e = events.envelope("endpoint", "arn:x", {"EndpointStatus": "InService", "CreationTime": 1.5,
                                              "ProductionVariants": [{"DeployedImages": [{"ResolutionTime": 2.0}]}],
                                              "SecondaryStatusTransitions": [{"StartTime": 3.25}]},
                        "us-west-2", now=0)
    assert e["detail-type"] == "SageMaker Endpoint State Change"
    assert e["time"] == "1970-01-01T00:00:00Z" and e["region"] == "us-west-2" and e["resources"] == ["arn:x"]
    assert e["detail"]["EndpointStatus"] == "IN_SERVICE"  # the documented event's spelling
    assert e["detail"]["CreationTime"] == 1500
    assert e["detail"]["SecondaryStatusTransitions"][0]["StartTime"] == 3250
    assert e["detail"]["ProductionVariants"][0]["DeployedImages"][0]["ResolutionTime"] == 2000


def test_container_table():
    assert model_servers.parse_container_flag("echo=python s.py --x=1") == ("echo", "python s.py --x=1")
    with pytest.raises(ValueError, match="REGEX=COMMAND"):
        model_servers.parse_container_flag("no-command")
    table = [("echo", "{python} e.py")]
    assert model_servers.command_for("x/echo:1", table, "/py", "/w") == ["/py", "e.py"]
    # images of AWS's own run in their profile's environment, not through the table
    lmi = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.33.0-lmi15.0.0-cu128"
    assert model_servers.command_for(lmi, table, "/py", "/w") is None
