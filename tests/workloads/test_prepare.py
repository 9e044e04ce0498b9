"""Data preparation: the Llama-2 template or the tokenizer's own, loss only on assistant replies,
DailyDialog (folder or .zip) and chat JSONL, streamed to prepared JSONL."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prepare.render import llama2_segments, tokenize_conversation
from prepare.sources import DataFormatError, dailydialog_messages, detect_format, iter_chat_jsonl

from .conftest import WORKLOADS

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."}]


def trained_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t in row["labels"] if t != -100])


def test_llama2_template_layout():
    text = "".join(s for s, _ in llama2_segments(CHAT, "<s>", "</s>"))
    assert text == ("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! </s>"
                    "<s>[INST] Bye [/INST] Goodbye. </s>")


def test_loss_only_on_assistant_replies_and_their_eos(tokenizer):
    row = tokenize_conversation(tokenizer, CHAT)
    assert len(row["input_ids"]) == len(row["labels"])
    assert trained_text(tokenizer, row).split() == ["Hello!", "</s>", "Goodbye.", "</s>"]


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    row = tokenize_conversation(tok, CHAT)
    assert "<|user|>" in tok.decode(row["input_ids"])
    assert trained_text(tok, row).replace(" ", "") == "Hello!</s>Goodbye.</s>"


def test_dailydialog_reply_speaker_is_the_assistant_and_only_the_reply_is_trained():
    msgs = dailydialog_messages("Person1: Hi!##Person2: Hello.##Person1: How are you?##Person2:", "Fine, thanks.")
    assert [(m["role"], m["content"], m["train"]) for m in msgs] == [
        ("user", "Hi!", False), ("assistant", "Hello.", False), ("user", "How are you?", False),
        ("assistant", "Fine, thanks.", True)]
    # when the replying speaker opened the conversation, an empty user turn keeps the template valid
    msgs = dailydialog_messages("Person1: Hi!##Person2: Hello.##Person1:", "Nice day.")
    assert [(m["role"], m["content"]) for m in msgs] == [
        ("user", ""), ("assistant", "Hi!"), ("user", "Hello."), ("assistant", "Nice day.")]


def test_formats_are_detected(tmp_path, dailydialog_path):
    from llama_operator.local.demo.tinymodel import dailydialog_zip

    assert detect_format(dailydialog_path) == "dailydialog"
    assert detect_format(dailydialog_zip()) == "dailydialog"
    (tmp_path / "a.jsonl").write_text(json.dumps({"messages": CHAT}) + "\n")
    assert detect_format(tmp_path) == "chat_jsonl"
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataFormatError, match="'messages'"):
        detect_format(tmp_path)


def test_bad_chat_row_names_the_line(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps({"msgs": []}) + "\n")
    with pytest.raises(DataFormatError, match=r"c.jsonl:2: a chat row needs a 'messages' list"):
        list(iter_chat_jsonl(tmp_path))


def test_prepare_command_on_the_dailydialog_zip(tmp_path, tiny_base, tokenizer):
    from llama_operator.local.demo.tinymodel import dailydialog_zip

    out = tmp_path / "train.jsonl"
    proc = subprocess.run([sys.executable, "-m", "prepare", "--tokenizer", str(tiny_base), "--input",
                           str(dailydialog_zip()), "--output", str(out), "--limit", "25",
                           "--max-seq-length", "128"], cwd=WORKLOADS, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats["rows"] == len(rows) == 25
    assert all(len(r["input_ids"]) == len(r["labels"]) <= 128 for r in rows)
    # the first row's trained tokens are DailyDialog's reply for that conversation
    import datasets

    from llama_operator.local.demo.tinymodel import dailydialog_dir

    first = datasets.load_from_disk(str(dailydialog_dir()))["train"][0]
    trained = trained_text(tokenizer, rows[0]).replace(" ", "")
    assert trained.startswith(first["response"].strip().replace(" ", "")[:20])
    assert not list(tmp_path.glob("*.tmp-*"))
