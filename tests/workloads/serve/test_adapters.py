"""LoRA adapters on the batching engine (CPU): a row's greedy answer with adapter A equals PEFT's
merged model A alone, with adapter B and base-model rows in the same batch; refused adapters and
requests name the field; lmi.py and model_source.py carry adapters for both engines."""

import json
import shutil

import pytest
import torch
from lmi import ArtifactError, lmi_environment, render_artifacts
from lora_adapters import AdapterError
from model_source import (
    ConfigError,
    ServeSettings,
    load_engine,
    parse_properties,
    resolve_model,
)
from request_params import GenerationParams, RequestError, parse_request

PROMPTS = ["Hello, how are you today?", "I'd like to book a table for two.", "What time does the train leave?"]
NEW = 12


def make_adapter(base_dir, out, *, r, targets, seed, **config):
    """A PEFT LoRA adapter of the base with random non-zero B (PEFT starts B at zero, a no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, **config))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    peft_model.save_pretrained(out)
    return out, peft_model


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    a_dir, a_model = make_adapter(tiny_model_dir, root / "alpha", r=4, seed=1,
                                  targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    b_dir, b_model = make_adapter(tiny_model_dir, root / "beta", r=8, seed=2, targets=["q_proj", "v_proj", "down_proj"],
                                  use_rslora=True)
    return {"alpha": (a_dir, a_model.merge_and_unload()), "beta": (b_dir, b_model.merge_and_unload())}


@pytest.fixture(scope="module")
def lora_engine(tiny_model_dir, adapters):
    settings = ServeSettings(model_dir=tiny_model_dir, max_batch_size=16, max_wait_ms=300,
                             adapters={name: str(d) for name, (d, _) in adapters.items()})
    eng = load_engine(settings, device="cpu")
    yield eng
    eng.close()


def hf_greedy(model, tok, prompt, eos_ids):
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=NEW, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    return out[:-1] if out and out[-1] in eos_ids else out


def test_mixed_batch_rows_equal_each_merged_model_alone(lora_engine, adapters):
    tok, eng = lora_engine.tokenizer, lora_engine
    assert sorted(eng.adapter_names) == ["alpha", "beta"]
    rows = [(p, a) for p in PROMPTS for a in ("alpha", "beta", None)]
    prefills = eng.stats["prefills"]
    futures = [eng.submit(p, GenerationParams(max_new_tokens=NEW, adapter=a)) for p, a in rows]
    got = [f.result(120).token_ids for f in futures]
    assert eng.stats["prefills"] == prefills + 1, "the nine rows shared one prefill (and so their decode steps)"
    for (prompt, adapter), ids in zip(rows, got):
        model = adapters[adapter][1] if adapter else eng.model
        assert ids == hf_greedy(model, tok, prompt, eng.eos_ids), (prompt, adapter)
    by = {(p, a): ids for (p, a), ids in zip(rows, got)}
    for prompt in PROMPTS:  # the comparison means something: each adapter changes the answer
        assert by[(prompt, "alpha")] != by[(prompt, None)] and by[(prompt, "beta")] != by[(prompt, None)]


def test_a_request_naming_no_adapter_gets_the_default_one_and_empty_names_the_base(tiny_model_dir, adapters,
                                                                                  lora_engine):
    settings = ServeSettings(model_dir=tiny_model_dir, max_batch_size=4, max_wait_ms=50,
                             adapters={name: str(d) for name, (d, _) in adapters.items()}, default_adapter="alpha")
    eng = load_engine(settings, device="cpu")
    try:
        plain = eng.submit(PROMPTS[0], GenerationParams(max_new_tokens=NEW)).result(120).token_ids
        base = eng.submit(PROMPTS[0], GenerationParams(max_new_tokens=NEW, adapter="")).result(120).token_ids
    finally:
        eng.close()
    assert plain == hf_greedy(adapters["alpha"][1], eng.tokenizer, PROMPTS[0], eng.eos_ids)
    assert base == hf_greedy(lora_engine.model, eng.tokenizer, PROMPTS[0], eng.eos_ids) != plain
    props = parse_properties(render_artifacts("batching", "s3://b/m/", {"default_adapter": "sql"},
                                              {"sql": "s3://b/a/sql/"})["serving.properties"])
    assert props["option.default_adapter"] == "sql"
    from model_source import settings_from_properties

    assert settings_from_properties(props, tiny_model_dir).default_adapter == "sql"
    for engine, default in (("batching", "other"), ("vllm", "sql")):
        with pytest.raises(ArtifactError, match="settings.default_adapter"):
            render_artifacts(engine, "s3://b/m/", {"default_adapter": default}, {"sql": "s3://b/a/sql/"})


def test_unknown_adapter_is_refused_naming_the_field(lora_engine):
    with pytest.raises(RequestError) as err:
        lora_engine.submit("hi", GenerationParams(adapter="gamma"))
    assert err.value.field == "parameters.adapter" and err.value.status == 400
    assert "alpha, beta" in err.value.message
    with pytest.raises(RequestError) as err:
        parse_request({"inputs": "hi", "parameters": {"adapter": "gamma"}}, adapters=["alpha"])
    assert err.value.field == "parameters.adapter" and "loaded: alpha" in str(err.value)


def test_lmi_top_level_adapters_spelling():
    _, params, _ = parse_request({"inputs": ["a", "b", "c"], "adapters": ["alpha", "", "beta"]},
                                       adapters=["alpha", "beta"])
    assert [params.for_prompt(i).adapter for i in range(3)] == ["alpha", "", "beta"]  # "": the base
    _, params, _ = parse_request({"inputs": "a", "adapters": "beta"}, adapters=["alpha", "beta"])
    assert params.adapter == "beta" and params.for_prompt(0) is params
    for body, field in [({"inputs": ["a", "b"], "adapters": ["alpha"]}, "adapters"),
                        ({"inputs": "a", "adapters": "nope"}, "adapters"),
                        ({"inputs": ["a"], "adapters": ["nope"]}, "adapters[0]"),
                        ({"inputs": "a", "adapters": "alpha", "parameters": {"adapter": "alpha"}}, "adapters"),
                        ({"inputs": "a", "parameters": {"adapter": 3}}, "parameters.adapter")]:
        with pytest.raises(RequestError) as err:
            parse_request(body, adapters=["alpha", "beta"])
        assert err.value.field == field, body


def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("changes, field", [
    ({"use_dora": True}, "use_dora"),
    ({"bias": "lora_only"}, "bias"),
    ({"target_modules": ["q_proj", "lm_head"]}, "target_modules"),
    ({"r": 32, "lora_alpha": 64}, "r"),      # above the engine's max rank (16)
    ({"r": 2}, "r"),                         # the weights say 8
    ({"fan_in_fan_out": True}, "fan_in_fan_out"),
])
def test_unsupported_adapter_configs_are_refused_at_load(lora_engine, adapters, tmp_path, changes, field):
    bad = _edit_config(adapters["beta"][0], tmp_path / "bad", **changes)
    with pytest.raises(AdapterError) as err:
        lora_engine.add_adapter("bad", bad)
    assert err.value.adapter == "bad" and err.value.field == field
    assert str(err.value).startswith(f"adapter 'bad': {field}:")


def test_an_adapter_of_another_base_shape_is_refused(tiny_model_dir, adapters, tmp_path):
    from llama_operator.local.demo.tinymodel import build_tiny_llama

    other = build_tiny_llama(tmp_path / "wide", hidden_size=96, tokenizer_rows=200)
    wrong, _ = make_adapter(other, tmp_path / "wrong", r=4, seed=3, targets=["q_proj"])
    settings = ServeSettings(model_dir=tiny_model_dir, adapters={"wrong": str(wrong)})
    with pytest.raises(ConfigError, match="adapter 'wrong': base model: layers.0.q_proj"):
        load_engine(settings, device="cpu")


def test_add_adapter_needs_a_free_slot(lora_engine, adapters):
    with pytest.raises(AdapterError, match="max_loras"):
        lora_engine.add_adapter("again", adapters["alpha"][0])


def test_lmi_renders_adapters_for_both_engines(tmp_path):
    adapters = {"sql": "s3://b/adapters/sql/", "chat_2": "s3://b/adapters/chat/"}
    props = parse_properties(render_artifacts("batching", "s3://b/m/", {}, adapters)["serving.properties"])
    assert props["option.adapters"] == "sql=s3://b/adapters/sql/,chat_2=s3://b/adapters/chat/"
    assert (props["option.max_loras"], props["option.max_lora_rank"]) == ("2", "16")
    assert "option.enable_lora" not in props  # LMI must not load adapters/ itself for our entry point
    from model_source import settings_from_properties

    settings = settings_from_properties(props, tmp_path)
    assert settings.adapters == adapters and (settings.max_loras, settings.max_lora_rank) == (2, 16)

    text = render_artifacts("vllm", "s3://b/m/", {"max_lora_rank": 32}, adapters)["serving.properties"]
    props = parse_properties(text)
    assert (props["option.enable_lora"], props["option.max_loras"], props["option.max_lora_rank"]) == ("true", "2", "32")
    assert "option.adapters" not in props and "adapters/sql/" in text  # where LMI looks, in a comment
    assert lmi_environment("vllm", "s3://b/m/", {}, adapters)["OPTION_ENABLE_LORA"] == "true"
    assert "option.enable_lora" not in render_artifacts("vllm", "s3://b/m/", {})["serving.properties"]


@pytest.mark.parametrize("engine, adapters, settings, message", [
    ("batching", {"Bad Name": "s3://b/a/"}, {}, "adapters.Bad Name:"),
    ("batching", {"ok": "/local/dir"}, {}, "adapters.ok '/local/dir'"),
    ("batching", {"ok": "s3://b/a,b"}, {}, "adapters.ok"),
    ("batching", {"a": "s3://b/a/", "b": "s3://b/b/"}, {"max_loras": 1}, "settings.max_loras 1"),
    ("vllm", {"a": "s3://b/a/"}, {"max_lora_rank": 12}, "settings.max_lora_rank 12: vLLM takes"),
    ("vllm", None, {"max_loras": 2}, "settings.max_loras: applies only when adapters"),
])
def test_lmi_refuses_bad_adapters(engine, adapters, settings, message):
    with pytest.raises(ArtifactError) as err:
        render_artifacts(engine, "s3://b/m/", settings, adapters)
    assert str(err.value).startswith(message)


def test_model_source_parses_adapters_and_lmis_adapters_dir(tiny_model_dir, adapters, tmp_path):
    from model_source import settings_from_properties

    settings = settings_from_properties({"option.adapters": "a=s3://b/x/, b = rel/dir,c=/abs"}, tmp_path)
    assert settings.adapters == {"a": "s3://b/x/", "b": str(tmp_path / "rel/dir"), "c": "/abs"}
    for bad in ("a", "A=s3://x/", "a=s3://x/,a=s3://y/"):
        with pytest.raises(ConfigError, match="option.adapters"):
            settings_from_properties({"option.adapters": bad}, tmp_path)
    # A vllm configuration with enable_lora: LMI's adapters/ directory beside serving.properties.
    code = tmp_path / "code"
    shutil.copytree(adapters["alpha"][0], code / "adapters" / "alpha")
    (code / "serving.properties").write_text(f"option.model_id={tiny_model_dir}\noption.rolling_batch=vllm\n"
                                             "option.enable_lora=true\n")
    assert resolve_model(code).adapters == {"alpha": str(code / "adapters" / "alpha")}


def test_sm_server_invoke_with_adapter(lora_engine):
    import sm_server

    status, out = sm_server.invoke(lora_engine, {"inputs": PROMPTS[0], "parameters": {"max_new_tokens": NEW,
                                                                                      "adapter": "alpha"}})
    alone = lora_engine.generate(PROMPTS[0], GenerationParams(max_new_tokens=NEW, adapter="alpha"), timeout=60)
    assert status == 200 and out["generated_text"] == alone.text
    status, out = sm_server.invoke(lora_engine, {"inputs": [PROMPTS[0], PROMPTS[0]], "adapters": ["alpha", ""],
                                                 "parameters": {"max_new_tokens": NEW}})
    base = lora_engine.generate(PROMPTS[0], GenerationParams(max_new_tokens=NEW), timeout=60)
    assert status == 200 and [o["generated_text"] for o in out] == [alone.text, base.text]
    status, out = sm_server.invoke(lora_engine, {"inputs": "hi", "parameters": {"adapter": "nope"}})
    assert status == 400 and out["field"] == "parameters.adapter" and "alpha, beta" in out["error"]


@pytest.fixture(scope="module")
def gamma(tiny_model_dir, tmp_path_factory):
    """A third adapter on fewer projections than alpha: what alpha leaves behind in a reused slot
    would show in its answers."""
    g_dir, g_model = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("gamma") / "gamma", r=2, seed=5,
                                  targets=["q_proj", "v_proj"])
    return g_dir, g_model.merge_and_unload()


@pytest.fixture(scope="module")
def dynamic_engine(tiny_model_dir):
    """enable_lora with free slots and no adapters at start, as an adapter inference component's
    base endpoint starts."""
    eng = load_engine(ServeSettings(model_dir=tiny_model_dir, max_batch_size=4, max_wait_ms=20, enable_lora=True,
                                    max_loras=2, max_lora_rank=8), device="cpu")
    yield eng
    eng.close()


def greedy(eng, prompt, adapter=None):
    return eng.generate(prompt, GenerationParams(max_new_tokens=NEW, adapter=adapter), timeout=120).token_ids


def test_slots_are_filled_emptied_and_reused_at_run_time(dynamic_engine, adapters, gamma):
    eng, tok, prompt = dynamic_engine, dynamic_engine.tokenizer, PROMPTS[1]
    base = greedy(eng, prompt)
    assert eng.adapter_names == [] and base == hf_greedy(eng.model, tok, prompt, eng.eos_ids)
    assert eng.add_adapter("Alpha", adapters["alpha"][0]) == 1  # a SageMaker component's name may hold capitals
    assert eng.add_adapter("beta", adapters["beta"][0]) == 2
    assert greedy(eng, prompt, "Alpha") == hf_greedy(adapters["alpha"][1], tok, prompt, eng.eos_ids) != base
    beta = greedy(eng, prompt, "beta")
    assert beta == hf_greedy(adapters["beta"][1], tok, prompt, eng.eos_ids) != base

    assert eng.remove_adapter("Alpha") == 1
    assert eng.adapter_names == ["beta"]
    with pytest.raises(RequestError) as err:
        eng.submit(prompt, GenerationParams(adapter="Alpha"))
    assert err.value.field == "parameters.adapter" and "loaded: beta" in err.value.message
    assert greedy(eng, prompt, "beta") == beta  # the adapter left in place keeps its slot and weights
    # gamma takes alpha's slot; nothing of alpha (o, gate/up, down too) is left in it.
    assert eng.add_adapter("gamma", gamma[0]) == 1
    assert greedy(eng, prompt, "gamma") == hf_greedy(gamma[1], tok, prompt, eng.eos_ids) != base
    assert greedy(eng, prompt) == base
    with pytest.raises(AdapterError, match="max_loras: all 2 adapter slots are taken"):
        eng.add_adapter("delta", adapters["alpha"][0])
    for name in ("gamma", "beta"):
        eng.remove_adapter(name)
    assert eng.adapter_names == [] and greedy(eng, prompt) == base


def test_removing_an_unknown_or_default_adapter_is_refused(dynamic_engine, lora_engine, tiny_model_dir, adapters):
    from lora_adapters import AdapterExistsError, AdapterNotFoundError

    with pytest.raises(AdapterNotFoundError, match="adapter 'nope': name: not loaded"):
        dynamic_engine.remove_adapter("nope")
    with pytest.raises(AdapterExistsError):
        lora_engine.add_adapter("alpha", adapters["alpha"][0])
    settings = ServeSettings(model_dir=tiny_model_dir, max_batch_size=2, default_adapter="alpha",
                             adapters={"alpha": str(adapters["alpha"][0])})
    eng = load_engine(settings, device="cpu")
    try:
        with pytest.raises(AdapterError, match="default_adapter"):
            eng.remove_adapter("alpha")
        assert eng.adapter_names == ["alpha"]
    finally:
        eng.close()


def test_a_request_queued_for_an_adapter_removed_before_it_runs_fails_naming_it(dynamic_engine, adapters):
    """A request that passed submit's check, then waited while its adapter was removed, fails at
    admission; it must not run on the base model (its adapter index would read as 0)."""
    import threading

    from scheduler import Call

    eng = dynamic_engine
    eng.add_adapter("alpha", adapters["alpha"][0])
    hold, held = threading.Event(), threading.Event()
    # Keep the worker busy in a call so the removal and the request queue up behind it, in that order.
    eng._sched.put(Call(lambda: (held.set(), hold.wait(60))))
    assert held.wait(60)
    remover = threading.Thread(target=eng.remove_adapter, args=("alpha",))
    remover.start()
    while eng._sched.queue.qsize() < 1:  # the removal is queued
        threading.Event().wait(0.01)
    queued = eng.submit(PROMPTS[0], GenerationParams(max_new_tokens=NEW, adapter="alpha"))
    hold.set()
    remover.join(60)
    with pytest.raises(RequestError) as err:
        queued.result(60)
    assert err.value.field == "parameters.adapter" and "'alpha' was unregistered before this request ran" in str(
        err.value)
    assert eng.adapter_names == []


def test_lmi_renders_free_slots_without_adapters_for_both_engines(tmp_path):
    from model_source import settings_from_properties

    settings = {"enable_lora": True, "max_loras": 3, "max_lora_rank": 32}
    for engine in ("batching", "vllm"):
        props = parse_properties(render_artifacts(engine, "s3://b/m/", settings)["serving.properties"])
        assert (props["option.enable_lora"], props["option.max_loras"], props["option.max_lora_rank"]) == (
            "true", "3", "32"), engine
        assert "option.adapters" not in props
        served = settings_from_properties(props, tmp_path)
        assert (served.enable_lora, served.adapters, served.max_loras, served.max_lora_rank) == (True, {}, 3, 32)
    assert lmi_environment("batching", "s3://b/m/", settings)["OPTION_MAX_LORAS"] == "3"
    # With adapters too: they load at start, and run-time registrations take the slots left.
    props = parse_properties(render_artifacts("batching", "s3://b/m/", settings, {"sql": "s3://b/a/sql/"})[
        "serving.properties"])
    assert (props["option.adapters"], props["option.enable_lora"], props["option.max_loras"]) == (
        "sql=s3://b/a/sql/", "true", "3")


@pytest.mark.parametrize("engine, settings, message", [
    ("batching", {"enable_lora": True}, "settings.max_loras: with enable_lora and no adapters, give how many"),
    ("vllm", {"enable_lora": True, "max_loras": 2, "max_lora_rank": 12}, "settings.max_lora_rank 12: vLLM takes"),
    ("batching", {"enable_lora": "yes", "max_loras": 2}, "settings.enable_lora 'yes': must be true or false"),
    ("batching", {"enable_lora": True, "max_loras": 65}, "settings.max_loras 65: must be an integer in [1, 64]"),
    ("batching", {"enable_lora": False, "max_loras": 2},
     "settings.max_loras: applies only when adapters are given or enable_lora is true"),
    ("batching", {"enable_lora": True, "max_loras": 2, "default_adapter": "x"}, "settings.default_adapter 'x'"),
])
def test_lmi_refuses_bad_dynamic_slot_settings(engine, settings, message):
    with pytest.raises(ArtifactError) as err:
        render_artifacts(engine, "s3://b/m/", settings)
    assert str(err.value).startswith(message)


def test_model_source_needs_max_loras_for_enable_lora_without_adapters(tiny_model_dir, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "serving.properties").write_text(f"option.model_id={tiny_model_dir}\noption.enable_lora=true\n")
    with pytest.raises(ConfigError, match="option.enable_lora=true with no adapters: give option.max_loras"):
        load_engine(resolve_model(code), device="cpu")
    (code / "serving.properties").write_text(f"option.model_id={tiny_model_dir}\noption.enable_lora=maybe\n")
    with pytest.raises(ConfigError, match="option.enable_lora='maybe': use true or false"):
        resolve_model(code)


# ---------------------------------------------------------------- adding and removing under traffic
LONG = 1200  # new tokens of a request that stays in flight over many step boundaries


@pytest.fixture
def slot_engine(tiny_model_dir):
    """A fresh engine with two free adapter slots (rank 8) and no adapters."""
    eng = load_engine(ServeSettings(model_dir=tiny_model_dir, max_batch_size=4, max_wait_ms=0, enable_lora=True,
                                    max_loras=2, max_lora_rank=8), device="cpu")
    yield eng
    eng.close()


def until(condition):
    """Wait for a condition another thread makes true (an ordering point, not a timing check)."""
    import threading

    while not condition():
        threading.Event().wait(0.002)


def long_params(adapter=None):
    return GenerationParams(max_new_tokens=LONG, ignore_eos=True, adapter=adapter)


def test_an_adapter_is_added_while_a_long_request_is_in_flight(slot_engine, gamma):
    eng, tok = slot_engine, slot_engine.tokenizer
    running = eng.submit(PROMPTS[0], long_params())
    until(running.running)
    assert eng.add_adapter("gamma", gamma[0]) == 1
    assert not running.done(), "the install waited for the engine to go idle"
    # The new adapter answers right away, beside the running request.
    assert greedy(eng, PROMPTS[1], "gamma") == hf_greedy(gamma[1], tok, PROMPTS[1], eng.eos_ids)
    assert running.result(300).token_ids == eng.generate(PROMPTS[0], long_params(), timeout=300).token_ids


def test_a_removal_lets_the_requests_running_with_the_adapter_finish_first(slot_engine, adapters, gamma):
    from concurrent.futures import ThreadPoolExecutor

    eng, tok = slot_engine, slot_engine.tokenizer
    assert (eng.add_adapter("alpha", adapters["alpha"][0]), eng.add_adapter("beta", adapters["beta"][0])) == (1, 2)
    alone = eng.generate(PROMPTS[0], long_params("alpha"), timeout=300).token_ids
    running = eng.submit(PROMPTS[0], long_params("alpha"))
    until(running.running)
    with ThreadPoolExecutor(1) as pool:
        removal = pool.submit(lambda: (eng.remove_adapter("alpha"), running.done()))
        until(lambda: "alpha" not in eng.adapter_names)  # the removal began
        assert not running.done() and not removal.done()
        with pytest.raises(RequestError) as err:
            eng.submit(PROMPTS[1], GenerationParams(max_new_tokens=NEW, adapter="alpha"))
        assert err.value.field == "parameters.adapter" and "loaded: beta" in err.value.message
        with pytest.raises(AdapterError, match="still being removed"):
            eng.add_adapter("alpha", adapters["alpha"][0])  # its slot is still reserved
        index, finished_first = removal.result(300)
    assert index == 1 and finished_first, "remove_adapter returned before the request on it finished"
    assert running.result().token_ids == alone  # it ran to the end with alpha's weights
    assert eng.adapter_names == ["beta"]
    assert eng.add_adapter("gamma", gamma[0]) == 1  # the freed slot, with nothing of alpha left in it
    assert greedy(eng, PROMPTS[1], "gamma") == hf_greedy(gamma[1], tok, PROMPTS[1], eng.eos_ids)
    assert greedy(eng, PROMPTS[1], "beta") == hf_greedy(adapters["beta"][1], tok, PROMPTS[1], eng.eos_ids)


def test_a_removal_completes_while_requests_on_other_adapters_keep_arriving(slot_engine, adapters):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    eng = slot_engine
    eng.add_adapter("alpha", adapters["alpha"][0])
    eng.add_adapter("beta", adapters["beta"][0])
    expected = greedy(eng, PROMPTS[2], "beta")
    stop, ended, futures = threading.Event(), threading.Semaphore(0), []

    def chain(_=None):
        """Submit the next beta request from the last one's completion (on the worker thread,
        before that row frees its slot), so the engine is never idle until stop."""
        if stop.is_set():
            ended.release()
            return
        future = eng.submit(PROMPTS[2], GenerationParams(max_new_tokens=NEW, adapter="beta"))
        futures.append(future)
        future.add_done_callback(chain)

    chain()
    chain()
    on_alpha = eng.submit(PROMPTS[0], GenerationParams(max_new_tokens=NEW, adapter="alpha"))
    until(lambda: len(futures) > 6)  # beta traffic has been flowing
    with ThreadPoolExecutor(1) as pool:
        removal = pool.submit(eng.remove_adapter, "alpha")
        try:
            assert removal.result(300) == 1  # (never returned while removals waited for an idle engine)
        finally:
            stop.set()
    for _ in range(2):
        assert ended.acquire(timeout=300)
    assert on_alpha.result().token_ids == greedy_with(adapters["alpha"][1], eng, PROMPTS[0])
    assert all(f.result().token_ids == expected for f in futures)
    assert eng.adapter_names == ["beta"] and eng.lora_bank.free_slots() == [1]


def greedy_with(model, eng, prompt):
    return hf_greedy(model, eng.tokenizer, prompt, eng.eos_ids)
