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


HEADER = "X-Amzn-SageMaker-Adapter-Identifier"


def test_the_sagemaker_adapter_header_picks_every_prompts_adapter():
    loaded = ["Sql-Adapter", "chat"]
    _, params, _ = parse_request({"inputs": ["a", "b"]}, adapters=loaded, adapter_header="Sql-Adapter")
    assert [params.for_prompt(i).adapter for i in range(2)] == ["Sql-Adapter", "Sql-Adapter"]
    # The body may name the same adapter again.
    _, params, _ = parse_request({"inputs": "a", "parameters": {"adapter": "Sql-Adapter"}}, adapters=loaded,
                                 adapter_header="Sql-Adapter")
    assert params.adapter == "Sql-Adapter"
    _, params, _ = parse_request({"inputs": ["a"], "adapters": ["Sql-Adapter"]}, adapters=loaded,
                                 adapter_header="Sql-Adapter")
    assert params.for_prompt(0).adapter == "Sql-Adapter"


@pytest.mark.parametrize("body, header, field, says", [
    ({"inputs": "a", "parameters": {"adapter": "chat"}}, "Sql-Adapter", "parameters.adapter",
     f"names adapter 'chat' but the {HEADER} header names 'Sql-Adapter'"),
    ({"inputs": "a", "parameters": {"adapter": ""}}, "Sql-Adapter", "parameters.adapter", "header names"),
    ({"inputs": "a", "adapters": "chat"}, "Sql-Adapter", "adapters", "header names"),
    ({"inputs": ["a", "b"], "adapters": ["Sql-Adapter", "chat"]}, "Sql-Adapter", "adapters[1]", "header names"),
    ({"inputs": "a"}, "gone", HEADER, "unknown adapter 'gone'; loaded: Sql-Adapter, chat"),
])
def test_a_header_the_body_contradicts_or_no_adapter_answers_is_a_400_naming_it(body, header, field, says):
    with pytest.raises(RequestError) as err:
        parse_request(body, adapters=["Sql-Adapter", "chat"], adapter_header=header)
    assert (err.value.field, err.value.status) == (field, 400)
    assert says in str(err.value)


def test_an_adapter_registration_body_is_checked_field_by_field():
    from request_params import parse_adapter_registration

    reg = parse_adapter_registration({"name": "Ic-Sql_2", "src": "s3://b/a/", "preload": "true", "pin": False,
                                      "alias": "sql", "extra": 1})
    assert (reg.name, reg.src, reg.preload, reg.pin, reg.alias) == ("Ic-Sql_2", "s3://b/a/", True, False, "sql")
    for body, field in [({"src": "/a"}, "name"), ({"name": "-a", "src": "/a"}, "name"),
                        ({"name": "a-", "src": "/a"}, "name"), ({"name": "a" * 64, "src": "/a"}, "name"),
                        ({"name": "a.b", "src": "/a"}, "name"), ({"name": "a"}, "src"),
                        ({"name": "a", "src": " "}, "src"), ({"name": "a", "src": "/a", "pin": "maybe"}, "pin"),
                        ({"name": "a", "src": "/a", "alias": 3}, "alias"), (["a"], "body")]:
        with pytest.raises(RequestError) as err:
            parse_adapter_registration(body)
        assert (err.value.field, err.value.status) == (field, 400), body
