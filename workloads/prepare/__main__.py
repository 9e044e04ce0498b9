"""python -m prepare --tokenizer DIR --input PATH --output FILE.jsonl [--format auto] [--split train]
[--max-seq-length N] [--limit N]   (run from the workloads/ folder)"""
from __future__ import annotations

import argparse
import json
import sys

from .sources import FORMATS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prepare", description=__doc__)
    ap.add_argument("--tokenizer", required=True, help="model or tokenizer directory")
    ap.add_argument("--input", required=True, help="DailyDialog folder/.zip, or JSONL of chat messages")
    ap.add_argument("--output", required=True, help="prepared JSONL file to write")
    ap.add_argument("--format", default="auto", choices=[f for f in FORMATS if f != "prepared"])
    ap.add_argument("--split", default="train", help="DailyDialog split")
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="stop after this many rows")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    from .writer import prepare_to_jsonl

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    try:
        stats = prepare_to_jsonl(tok, args.input, args.output, data_format=args.format, split=args.split,
                                 max_length=args.max_seq_length, limit=args.limit)
    except ValueError as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
