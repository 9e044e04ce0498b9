"""Render a conversation into text segments and tokenize it with per-token loss labels.

A tokenizer's own chat template is used when it has one; otherwise the Llama-2 chat format:

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST] {assistant} </s>

(``<s>``/``</s>`` are the tokenizer's BOS/EOS; the system block appears only when a system message
leads). Loss is computed on the assistant text and the EOS after it, so the model learns to stop.
"""
from __future__ import annotations

from typing import Any, Iterable

IGNORE_INDEX = -100

LLAMA2_TEMPLATE_DOC = __doc__


class ConversationError(ValueError):
    pass


def _check(messages: list[dict]) -> None:
    if not messages:
        raise ConversationError("conversation has no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ConversationError(f"message {i} must be an object with role system, user or assistant")
        if not isinstance(m.get("content"), str):
            raise ConversationError(f"message {i} content must be a string")


def llama2_segments(messages: list[dict], bos: str, eos: str) -> list[tuple[str, bool]]:
    """(text, trained) pieces of the Llama-2 chat format; trained pieces are assistant replies."""
    _check(messages)
    system = None
    rest = messages
    if messages[0]["role"] == "system":
        system, rest = messages[0]["content"], messages[1:]
    segments: list[tuple[str, bool]] = []
    pending_user: list[str] = []
    for m in rest:
        if m["role"] == "system":
            raise ConversationError("a system message may only come first")
        if m["role"] == "user":
            pending_user.append(m["content"].strip())
            continue
        user = "\n".join(pending_user)
        if system is not None:
            user = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{user}"
            system = None
        segments.append((f"{bos}[INST] {user} [/INST]", False))
        segments.append((f" {m['content'].strip()} {eos}", m.get("train", True)))
        pending_user = []
    if pending_user:  # trailing user turn with no reply: context only
        segments.append((f"{bos}[INST] {' '.join(pending_user)} [/INST]", False))
    return segments


def template_segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """Segments from the tokenizer's chat template: the text an assistant message adds to the
    rendering of the messages before it (with the generation prompt) is its trained span."""
    _check(messages)

    def render(msgs, gen):
        plain = [{"role": m["role"], "content": m["content"]} for m in msgs]
        return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=gen)

    segments: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(messages[:i], True)
        full = render(messages[: i + 1], False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ConversationError("the tokenizer's chat template does not render conversations "
                                    "incrementally; cannot tell the assistant tokens apart")
        segments.append((prompt[len(done):], False))
        segments.append((full[len(prompt):], m.get("train", True)))
        done = full
    tail = render(messages, False)
    if len(tail) > len(done):
        segments.append((tail[len(done):], False))
    return segments


def render_segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    if getattr(tokenizer, "chat_template", None):
        return template_segments(tokenizer, messages)
    return llama2_segments(messages, tokenizer.bos_token or "", tokenizer.eos_token or "")


def tokenize_conversation(tokenizer, messages: list[dict], max_length: int | None = None) -> dict[str, Any] | None:
    """{"input_ids", "labels"} for one conversation, or None when nothing in it is trained on
    (after truncation to ``max_length``). Labels are aligned with input_ids (the model shifts)."""
    segments = render_segments(tokenizer, messages)
    text = "".join(s for s, _ in segments)
    spans: list[tuple[int, int]] = []
    pos = 0
    for s, trained in segments:
        if trained:
            spans.append((pos, pos + len(s)))
        pos += len(s)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = []
    for tok, (start, end) in zip(ids, offsets):
        inside = any(a <= start < b or (start == end and a < end <= b) for a, b in spans)
        labels.append(tok if inside else IGNORE_INDEX)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return {"input_ids": list(ids), "labels": labels}


def iter_tokenized(tokenizer, conversations: Iterable[list[dict]], max_length: int | None = None):
    for messages in conversations:
        row = tokenize_conversation(tokenizer, messages, max_length)
        if row is not None:
            yield row
