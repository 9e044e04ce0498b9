"""What the service's parts share: region, state, event sink, S3 access, the child environment."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from llama_operator.local.sagemaker import events, names
from llama_operator.local.sagemaker.store import Store


@dataclass
class Context:
    region: str
    state_dir: Path
    store: Store
    sink: events.EventSink | None
    child_env: dict[str, str]   # AWS endpoint variables and dummy credentials for jobs and servers
    s3_factory: object          # () -> boto3 S3 client
    max_instances: int = 8
    _local: threading.local = field(default_factory=threading.local)

    @property
    def s3(self):
        # boto3 clients are not shared across threads.
        client = getattr(self._local, "s3", None)
        if client is None:
            client = self._local.s3 = self.s3_factory()
        return client

    def emit(self, kind: str, name: str, detail: dict) -> None:
        if self.sink is None:
            return
        # EventBridge carries the resource's tags in the detail, which lets a consumer map an
        # event back to what created it.
        record = self.store.get(kind, name) or {}
        detail = {**detail, "Tags": {t["Key"]: t["Value"] for t in record.get("tags", [])}}
        self.sink.emit(events.envelope(kind, names.arn(kind, name, self.region), detail, self.region))
