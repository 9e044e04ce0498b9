"""Request validation: each bad field is named, with what would be accepted."""

import pytest

from request_params import RequestError, parse_request


@pytest.mark.parametrize("body, field", [
    ({"parameters": {}}, "inputs"),
    ({"inputs": ""}, "inputs"),
    ({"inputs": ["ok", 3]}, "inputs[1]"),
    ({"inputs": []}, "inputs"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": "64"}}, "parameters.max_new_tokens"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
    ({"inputs": "hi", "parameters": {"temperature": -1}}, "parameters.temperature"),
    ({"inputs": "hi", "parameters": {"top_p": 1.5}}, "parameters.top_p"),
    ({"inputs": "hi", "parameters": {"do_sample": "yes"}}, "parameters.do_sample"),
    ({"inputs": "hi", "parameters": {"stop": [""]}}, "parameters.stop"),
    ({"inputs": "hi", "parameters": {"top_k": 5}}, "parameters.top_k"),
    ({"inputs": "hi", "prompt": "x"}, "prompt"),
    (["hi"], "body"),
])
def test_bad_requests_name_the_field(body, field):
    with pytest.raises(RequestError) as err:
        parse_request(body)
    assert err.value.field == field
    assert err.value.status == 400
    assert str(err.value).startswith(field)


def test_lmi_defaults_and_sampling_rules():
    prompts, params, many = parse_request({"inputs": "hi", "parameters": {"max_new_tokens": 8, "temperature": 0}})
    assert prompts == ["hi"] and not many and params.greedy and params.max_new_tokens == 8
    _, params, _ = parse_request({"inputs": ["a", "b"], "parameters": {"temperature": 0.7, "top_p": 0.9}})
    assert params.do_sample and params.temperature == 0.7
    _, params, _ = parse_request({"inputs": "a", "parameters": {"temperature": 0.7, "do_sample": False}})
    assert params.greedy
    _, params, _ = parse_request({"inputs": "a", "parameters": {"stop_sequences": ["\n", "##"]}})
    assert params.stop == ("\n", "##")
