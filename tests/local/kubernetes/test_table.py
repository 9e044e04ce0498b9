import datetime as dt

from llama_operator.local.kubernetes.table import human_age, printer_columns, render, rows

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.timezone.utc)
CRD = {"metadata": {"name": "llamafinetunes.llamaops.dev"}, "spec": {"versions": [{"name": "v1alpha1", "additionalPrinterColumns": [
    {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.trainingLoss"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]}]}}


def test_ages_read_like_kubectl():
    assert human_age("2026-11-24T11:59:15Z", NOW) == "45s"
    assert human_age("2026-11-24T11:52:48Z", NOW) == "7m12s"
    assert human_age("2026-11-24T08:55:00Z", NOW) == "3h5m"
    assert human_age("2026-11-22T08:00:00Z", NOW) == "2d4h"
    assert human_age(None, NOW) == "<unknown>"


def test_table_follows_the_crd_columns_and_marks_missing_values():
    objs = [
        {"metadata": {"name": "chat-ft", "creationTimestamp": "2026-11-24T11:58:00Z"},
         "status": {"phase": "InProgress", "trainingLoss": 2.345678}},
        {"metadata": {"name": "new-one", "creationTimestamp": "2026-11-24T11:59:50Z"}},
    ]
    text = render(rows(objs, printer_columns(CRD), NOW))
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "LOSS", "AGE"]
    assert lines[1].split() == ["chat-ft", "InProgress", "2.346", "2m"]
    assert lines[2].split() == ["new-one", "<none>", "10s"]
