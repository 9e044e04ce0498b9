"""The `llama-operator` command. Each verb lives in its own module and is imported only when
chosen, so `local-sagemaker` never pays for kopf and `run` never pays for moto."""

from __future__ import annotations

import importlib
import sys

# verb -> (module, function, one-line help)
VERBS: dict[str, tuple[str, str, str]] = {
    "run": ("llama_operator.runner", "main", "run the operator (kopf) against the current cluster"),
    "demo": ("llama_operator.local.demo.demo", "main", "fine-tune, deploy and invoke a tiny Llama on the embedded default"),
    "local-sagemaker": ("llama_operator.local.sagemaker.server", "main", "serve SageMaker, S3 and SQS locally"),
    "logs": ("llama_operator.local.sagemaker.logs", "main", "print a local training job's or endpoint's logs"),
    "image-envs": ("llama_operator.local.sagemaker.imageenv", "main",
                   "build the local environments of the container images (once; the local service needs them)"),
}


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: llama-operator VERB [options]", "", "verbs:"]
    lines += [f"  {verb.ljust(width)}  {help_}" for verb, (_, _, help_) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"llama-operator: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = VERBS[verb]
    try:
        entry = getattr(importlib.import_module(module), func)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("llama_operator"):
            print(f"llama-operator: {verb!r} is not available in this build ({exc.name} missing)", file=sys.stderr)
            return 2
        raise
    return int(entry(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
