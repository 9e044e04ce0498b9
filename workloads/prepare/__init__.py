"""Turn chat data into the training format: one JSON line per conversation with ``input_ids`` and
``labels`` (``-100`` everywhere except the assistant reply tokens that are trained on).

Sources: DailyDialog saved with ``datasets.save_to_disk`` (a folder or its .zip) and JSONL files
whose rows hold ``messages`` (``[{"role": ..., "content": ...}, ...]``). Rows are read and written
one at a time, so a corpus never has to fit in memory.
"""
from .render import LLAMA2_TEMPLATE_DOC, render_segments, tokenize_conversation  # noqa: F401
from .sources import detect_format, iter_conversations  # noqa: F401
from .writer import prepare_to_jsonl  # noqa: F401
