"""Stream conversations through the tokenizer into a prepared JSONL file."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .render import iter_tokenized
from .sources import iter_conversations


def prepare_to_jsonl(tokenizer, source: str | os.PathLike, out_file: str | os.PathLike, *,
                     data_format: str = "auto", split: str = "train", max_length: int | None = None,
                     limit: int | None = None) -> dict:
    """Write one prepared row per line; returns counts. Written to a temporary name first so a
    half-written file is never mistaken for a finished one."""
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    rows = tokens = trained = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in iter_tokenized(tokenizer, iter_conversations(source, data_format, split), max_length):
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")
            rows += 1
            tokens += len(row["input_ids"])
            trained += sum(1 for x in row["labels"] if x != -100)
            if limit is not None and rows >= limit:
                break
    os.replace(tmp, out)
    return {"rows": rows, "tokens": tokens, "trained_tokens": trained, "path": str(out)}
