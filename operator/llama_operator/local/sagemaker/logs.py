"""`llama-operator logs NAME --state-dir DIR [--endpoint]`: print a local training job's or
endpoint's logs (what CloudWatch would hold for it on AWS)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def log_files(state_dir: Path, name: str, endpoint: bool) -> list[Path]:
    folder = state_dir / ("endpoints" if endpoint else "training-jobs") / name / "logs"
    pattern = "*.log" if endpoint else "algo-*.log"
    return sorted(folder.glob(pattern), key=lambda p: (len(p.name), p.name))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llama-operator logs", description=__doc__)
    p.add_argument("name", help="training job (or, with --endpoint, endpoint) name")
    p.add_argument("--state-dir", required=True, type=Path, help="the local service's --state-dir")
    p.add_argument("--endpoint", action="store_true", help="NAME is an endpoint")
    args = p.parse_args(argv)
    files = log_files(args.state_dir, args.name, args.endpoint)
    if not files:
        what = "endpoint" if args.endpoint else "training job"
        print(f"llama-operator logs: no logs for {what} {args.name!r} under {args.state_dir} "
              f"(check the name and --state-dir{'' if args.endpoint else ', or add --endpoint'})", file=sys.stderr)
        return 1
    for path in files:
        print(f"==> {path.stem} <==")
        sys.stdout.write(path.read_text(errors="replace"))
        sys.stdout.flush()
    return 0
