"""`llama-operator logs NAME --state-dir DIR [--endpoint | --inference-component]`: print a local
training job's, endpoint's or inference component's logs (what CloudWatch would hold for it on AWS)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


# what NAME is -> (its folder in the state dir, its log files there)
KINDS = {"training job": ("training-jobs", "algo-*.log"), "endpoint": ("endpoints", "*.log"),
         "inference component": ("inference-components", "*.log")}


def log_files(state_dir: Path, name: str, kind: str = "training job") -> list[Path]:
    folder, pattern = KINDS[kind]
    return sorted((state_dir / folder / name / "logs").glob(pattern), key=lambda p: (len(p.name), p.name))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llama-operator logs", description=__doc__)
    p.add_argument("name", help="training job (or endpoint, or inference component) name")
    p.add_argument("--state-dir", required=True, type=Path, help="the local service's --state-dir")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--endpoint", action="store_true", help="NAME is an endpoint")
    which.add_argument("--inference-component", action="store_true",
                       help="NAME is an inference component (status.inferenceComponent.name): its copies' logs")
    args = p.parse_args(argv)
    what = "endpoint" if args.endpoint else "inference component" if args.inference_component else "training job"
    files = log_files(args.state_dir, args.name, what)
    if not files:
        hint = "" if what != "training job" else ", or add --endpoint or --inference-component"
        print(f"llama-operator logs: no logs for {what} {args.name!r} under {args.state_dir} "
              f"(check the name and --state-dir{hint})", file=sys.stderr)
        return 1
    for path in files:
        print(f"==> {path.stem} <==")
        sys.stdout.write(path.read_text(errors="replace"))
        sys.stdout.flush()
    return 0
