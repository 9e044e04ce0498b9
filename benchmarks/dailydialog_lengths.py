"""Token lengths of DailyDialog training rows, for the throughput benchmark's length mix.

Each row (``convo`` turns joined by ``##``, then ``response``) is rendered as training text: one
``PersonN: text`` line per turn, the reply last, between BOS and EOS. Lengths come from a 32000-entry
byte-level BPE tokenizer trained on the same rows, Llama's vocabulary size. The result is written as
JSON (``benchmarks/dailydialog_lengths.json``) so that a GPU machine without the dataset can carry it.

    python benchmarks/dailydialog_lengths.py [--out benchmarks/dailydialog_lengths.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

DEFAULT_OUT = Path(__file__).with_name("dailydialog_lengths.json")


def render(convo: str, response: str) -> str:
    turns = [t.strip() for t in convo.split("##") if t.strip()]
    lines = [t for t in turns if t.split(":", 1)[-1].strip()]
    speaker = turns[-1] if turns and not turns[-1].split(":", 1)[-1].strip() else "Person2:"
    return "\n".join(lines + [f"{speaker} {response.strip()}"])


def derive(split: str = "train") -> list[int]:
    import datasets
    from llama_operator.local.demo.tinymodel import dailydialog_dir, train_tokenizer

    rows = datasets.load_from_disk(str(dailydialog_dir()))[split]
    texts = [render(r["convo"], r["response"]) for r in rows]
    tok = train_tokenizer(texts, vocab_size=32000)
    # BOS comes from the post-processor; EOS closes each example as in training.
    return [len(ids) + 1 for ids in tok(texts)["input_ids"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    lengths = derive()
    args.out.write_text(json.dumps({"source": "DailyDialog train, 32000-vocab BPE, rendered turns + reply",
                                    "lengths": lengths}, separators=(",", ":")))
    print(f"{len(lengths)} rows, mean {statistics.mean(lengths):.1f}, max {max(lengths)} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
