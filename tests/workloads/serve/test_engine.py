"""The batching engine on the CPU: batched answers equal lone answers, parameters are honoured."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from request_params import GenerationParams, RequestError

PROMPTS = [
    "Hello, how are you today?", "I'd like to book a table for two.", "What time does the train leave?",
    "Person1: Can you help me?##Person2:", "The weather is lovely", "Do you have this shirt in blue?",
    "I lost my wallet on the bus", "How much is it?", "Let's go to the cinema tonight.",
    "My flight was cancelled", "Where is the nearest bank?", "Could you pass the salt, please?",
    "I'm looking for a new apartment near the university", "Thanks a lot!", "See you tomorrow",
    "Is this seat taken?", "Good morning, sir. What can I do for you?", "I have a headache",
    "We need more paper for the printer", "Happy birthday!", "Which bus goes downtown?",
    "I can't find my keys anywhere", "Would you like some tea or coffee?", "The meeting is at ten",
    "How long have you lived here?", "Sorry, I'm late", "Please sign here", "Nice to meet you",
    "What do you do for a living?", "Can I pay by credit card?", "It's too expensive for me",
    "Person1: Hi!##Person2: Hello!##Person1:",
]


def test_32_concurrent_clients_each_get_their_lone_greedy_answer(engine):
    assert len(set(PROMPTS)) == 32
    params = [GenerationParams(max_new_tokens=4 + (i * 7) % 29) for i in range(32)]
    alone = [engine.generate(p, q, timeout=120) for p, q in zip(PROMPTS, params)]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda i: engine.generate(PROMPTS[i], params[i], timeout=120), range(32)))
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [r.text for r in together] == [r.text for r in alone]
    # The lengths asked for were honoured (or the model said EOS first).
    for r, q in zip(together, params):
        assert len(r.token_ids) == q.max_new_tokens or r.finish_reason == "eos"
    assert sum(len(r.token_ids) for r in together) > 200  # a real workload, not 32 empty answers


def test_greedy_matches_transformers_generate(engine):
    model, tok = engine.model, engine.tokenizer
    for prompt in PROMPTS[:4]:
        ours = engine.generate(prompt, GenerationParams(max_new_tokens=24), timeout=60)
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            ref = model.generate(**ids, max_new_tokens=24, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
        if ref and ref[-1] in engine.eos_ids:
            ref = ref[:-1]  # generate() keeps the EOS; the engine's answer leaves it out
        assert ours.token_ids == ref


def test_nucleus_of_one_token_is_greedy_and_sampling_differs(engine):
    prompt = PROMPTS[0]
    greedy = engine.generate(prompt, GenerationParams(max_new_tokens=16, ignore_eos=True), timeout=60)
    narrow = engine.generate(prompt, GenerationParams(max_new_tokens=16, do_sample=True, temperature=1.0,
                                                      top_p=1e-6, ignore_eos=True), timeout=60)
    assert narrow.token_ids == greedy.token_ids
    wide = [engine.generate(prompt, GenerationParams(max_new_tokens=16, do_sample=True, temperature=1.5,
                                                     ignore_eos=True), timeout=60).token_ids for _ in range(3)]
    assert any(w != greedy.token_ids for w in wide)


def test_ignore_eos_forces_the_length_and_stop_strings_cut_the_text(engine):
    forced = engine.generate(PROMPTS[3], GenerationParams(max_new_tokens=40, ignore_eos=True), timeout=60)
    assert len(forced.token_ids) == 40 and forced.finish_reason == "length"
    text = forced.text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), "pick a stop string with visible characters"
    cut = engine.generate(PROMPTS[3], GenerationParams(max_new_tokens=40, ignore_eos=True, stop=(stop,)), timeout=60)
    assert cut.finish_reason == "stop"
    assert cut.text == text[:text.index(stop)]


def test_a_request_that_cannot_fit_is_refused_naming_the_field(engine):
    with pytest.raises(RequestError) as err:
        engine.submit("hello", GenerationParams(max_new_tokens=engine.max_len))
    assert err.value.field == "parameters.max_new_tokens" and err.value.status == 400
    assert "at most" in err.value.message
