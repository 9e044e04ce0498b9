"""A stand-in for LMI's `djl_python` (the Python engine of DJL Serving), which is not published on
PyPI: the `Input` and `Output` classes a custom `model.py` `handle(inputs)` receives and returns.

It models what the local front end (`lmi_frontend.py`) relies on of DJL Serving's contract: a batch
is one `Input` whose `get_batches()` are the requests; the warm-up call at model load is an empty
`Input`; answers go back per `batch_index`; the `Output`'s one code applies to the whole batch."""

from __future__ import annotations

import json


class Input:
    def __init__(self, properties: dict | None = None, content: bytes | None = None,
                 batch: list["Input"] | None = None, headers: dict | None = None):
        self.properties = dict(properties or {})
        self.content = content
        self._batch = batch
        self.headers = dict(headers or {})

    def is_empty(self) -> bool:
        return self.content is None and not self._batch

    def is_batch(self) -> bool:
        return self._batch is not None

    def get_batch_size(self) -> int:
        return len(self._batch) if self._batch is not None else (0 if self.content is None else 1)

    def get_batches(self) -> list["Input"]:
        return list(self._batch) if self._batch is not None else ([self] if self.content is not None else [])

    def get_properties(self) -> dict:
        return dict(self.properties)

    def get_property(self, key: str, default=None):
        return self.properties.get(key, default)

    def get_as_bytes(self) -> bytes:
        return self.content or b""

    def get_as_string(self) -> str:
        return self.get_as_bytes().decode("utf-8")

    def get_as_json(self):
        return json.loads(self.get_as_bytes())


class Output:
    def __init__(self, code: int = 200, message: str = "OK"):
        self.code, self.message = code, message
        self.properties: dict[str, str] = {}
        self.items: dict[int | None, bytes] = {}

    def set_code(self, code: int) -> "Output":
        self.code = code
        return self

    def set_message(self, message: str) -> "Output":
        self.message = message
        return self

    def error(self, message: str, code: int = 424) -> "Output":
        self.code, self.message = code, message
        return self

    def add_property(self, key: str, value: str) -> "Output":
        self.properties[key] = value
        return self

    def add(self, value, key=None, batch_index: int | None = None) -> "Output":
        data = value if isinstance(value, bytes) else str(value).encode()
        self.items[batch_index] = data
        return self

    def add_as_json(self, value, key=None, batch_index: int | None = None) -> "Output":
        self.properties.setdefault("Content-Type", "application/json")
        self.items[batch_index] = json.dumps(value).encode()
        return self
