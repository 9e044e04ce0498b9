from llama_operator.handlers.lifecycle import peering_priority


def test_replicas_get_distinct_stable_priorities():
    # kopf pauses all peers that share a priority; the Deployment's two replicas must not
    a, b = peering_priority("llama-operator-7d9f8-abcde"), peering_priority("llama-operator-7d9f8-fghij")
    assert a != b and a > 0 and b > 0
    assert peering_priority("llama-operator-7d9f8-abcde") == a


def test_no_pod_name_keeps_kopf_default():
    assert peering_priority(None) == 0 and peering_priority("") == 0
