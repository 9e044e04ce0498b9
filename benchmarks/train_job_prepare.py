"""Inputs for benchmarks/train_job_compile.sh, made on any machine with the project installed (the GPU
machine may lack `datasets`): a DailyDialog BPE tokenizer and 6,000 prepared conversations.

    python benchmarks/train_job_prepare.py .gpu
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workloads"))

from llama_operator.local.demo.tinymodel import dailydialog_dir, dailydialog_texts, train_tokenizer  # noqa: E402
from prepare.writer import prepare_to_jsonl  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu")
tokenizer = train_tokenizer(dailydialog_texts(limit=20000), vocab_size=8192)
tokenizer.save_pretrained(out / "tokenizer")
print(prepare_to_jsonl(tokenizer, dailydialog_dir(), out / "train" / "train.jsonl", data_format="dailydialog",
                       split="train", max_length=1024, limit=6000))
