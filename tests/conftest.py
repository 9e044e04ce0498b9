"""Suite-wide settings. Each test folder keeps its own fixtures in its own conftest.py."""

import os
import socket
import sys
from pathlib import Path

import pytest

# Helpers shared by tests in several folders (CRD tools, spec fixtures): `import crdtools`.
sys.path.insert(0, str(Path(__file__).parent / "support"))

# Nothing in the suite may reach a real AWS account: every client gets dummy credentials unless a
# test's own fixture points it at the local services.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
