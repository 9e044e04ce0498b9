import re

import pytest

from llama_operator.plan import names

SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
UID = "3f2b8a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6b"
LONG = "a-very-long-resource-name-that-goes-on-and-on-well-past-sixty-three-characters"


def all_names(namespace, name, uid, spec_hash="abc123"):
    return [names.training_job_name(namespace, name, uid), names.endpoint_name(namespace, name, uid),
            names.model_name(namespace, name, uid, spec_hash),
            names.endpoint_config_name(namespace, name, uid, spec_hash)]


@pytest.mark.parametrize("namespace,name", [("default", "llama"), ("team-a", LONG), (LONG, LONG),
                                            ("ns", "name.with.dots"), ("ns", "x"), ("ns", "a--b")])
def test_names_are_valid_for_sagemaker_and_readable(namespace, name):
    for value in all_names(namespace, name, UID):
        assert len(value) <= 63 and SAGEMAKER_NAME.match(value), value
        assert value.startswith(namespace[:10])


def test_names_are_deterministic_and_distinct():
    assert all_names("default", "llama", UID) == all_names("default", "llama", UID)
    produced = all_names("default", "llama", UID)
    assert len(set(produced)) == 4
    # Same name in two namespaces, and namespaces whose readable prefixes truncate alike.
    assert set(all_names("team-a", LONG, UID)).isdisjoint(all_names("team-b", LONG, UID))
    assert set(all_names(LONG + "-1", "m", UID)).isdisjoint(all_names(LONG + "-2", "m", UID))
    # A re-created resource (new uid) gets new SageMaker objects.
    assert set(all_names("default", "llama", UID)).isdisjoint(all_names("default", "llama", UID[::-1]))


def test_a_new_spec_hash_names_a_new_model_and_config_but_the_same_endpoint():
    a, b = all_names("default", "llama", UID, "hash-1"), all_names("default", "llama", UID, "hash-2")
    assert a[:2] == b[:2]
    assert a[2] != b[2] and a[3] != b[3]
