"""Read conversations, one at a time, from the supported raw formats."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

FORMATS = ("auto", "dailydialog", "chat_jsonl", "prepared")


class DataFormatError(ValueError):
    pass


def _jsonl_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".json")
                  and p.name not in ("dataset_dict.json", "dataset_info.json", "state.json"))


def _dailydialog_root(path: Path) -> Path | None:
    if path.is_file():
        return None
    for candidate in [path, *sorted(p.parent for p in path.rglob("dataset_dict.json"))]:
        if (candidate / "dataset_dict.json").is_file():
            return candidate
    return None


def _zips(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix == ".zip" else []
    return sorted(path.glob("*.zip"))


def detect_format(path: str | os.PathLike) -> str:
    """dailydialog (a saved DatasetDict, or a .zip of one), prepared (JSONL with input_ids) or
    chat_jsonl (JSONL with messages), from what the path holds."""
    p = Path(path)
    if not p.exists():
        raise DataFormatError(f"data path {p} does not exist")
    if _dailydialog_root(p) is not None or _zips(p):
        return "dailydialog"
    for f in _jsonl_files(p):
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    if "input_ids" in row:
                        return "prepared"
                    if "messages" in row:
                        return "chat_jsonl"
                    raise DataFormatError(f"{f}: rows need 'messages' (chat) or 'input_ids' (prepared)")
    raise DataFormatError(f"no DailyDialog dataset, .zip or .jsonl file found under {p}")


def dailydialog_messages(convo: str, response: str) -> list[dict]:
    """DailyDialog row -> messages. The speaker tag that ends ``convo`` (e.g. ``Person1:``) is the
    one whose reply is wanted: that speaker is the assistant. Only the final reply is trained on;
    the assistant's earlier turns are context."""
    turns = [t.strip() for t in convo.split("##")]
    speaker = turns[-1].split(":", 1)[0].strip() if turns else ""
    messages = []
    for turn in turns:
        who, _, text = turn.partition(":")
        if not text.strip():
            continue
        role = "assistant" if who.strip() == speaker else "user"
        if messages and messages[-1]["role"] == role:  # same speaker twice: one turn
            messages[-1]["content"] += " " + text.strip()
        else:
            messages.append({"role": role, "content": text.strip(), "train": False})
    if messages and messages[0]["role"] == "assistant":
        messages.insert(0, {"role": "user", "content": "", "train": False})
    messages.append({"role": "assistant", "content": response.strip(), "train": True})
    return messages


def _iter_dailydialog_dir(root: Path, split: str) -> Iterator[list[dict]]:
    import datasets  # memory-mapped Arrow: rows are read lazily

    dd = datasets.load_from_disk(str(root))
    if split not in dd:
        raise DataFormatError(f"DailyDialog at {root} has no split {split!r} (has {sorted(dd)})")
    for row in dd[split]:
        yield dailydialog_messages(row["convo"], row["response"])


def iter_dailydialog(path: str | os.PathLike, split: str = "train") -> Iterator[list[dict]]:
    p = Path(path)
    root = _dailydialog_root(p)
    if root is not None:
        yield from _iter_dailydialog_dir(root, split)
        return
    for z in _zips(p):
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(z) as archive:
                archive.extractall(tmp)
            inner = _dailydialog_root(Path(tmp))
            if inner is None:
                raise DataFormatError(f"{z} holds no saved DatasetDict (dataset_dict.json)")
            yield from _iter_dailydialog_dir(inner, split)


def iter_chat_jsonl(path: str | os.PathLike) -> Iterator[list[dict]]:
    for f in _jsonl_files(Path(path)):
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                messages = row.get("messages") if isinstance(row, dict) else None
                if not isinstance(messages, list):
                    raise DataFormatError(f"{f}:{n}: a chat row needs a 'messages' list")
                yield messages


def iter_conversations(path: str | os.PathLike, data_format: str = "auto", split: str = "train"):
    fmt = detect_format(path) if data_format == "auto" else data_format
    if fmt == "dailydialog":
        return iter_dailydialog(path, split)
    if fmt == "chat_jsonl":
        return iter_chat_jsonl(path)
    raise DataFormatError(f"data_format {fmt!r} holds no raw conversations (expected dailydialog or chat_jsonl)")


def iter_prepared(path: str | os.PathLike) -> Iterator[dict]:
    for f in _jsonl_files(Path(path)):
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    row = json.loads(line)
                    if "input_ids" not in row or "labels" not in row or len(row["input_ids"]) != len(row["labels"]):
                        raise DataFormatError(f"{f}:{n}: a prepared row needs input_ids and labels of equal length")
                    yield row
