"""Multi-tenancy: which IAM execution roles each namespace may hand to SageMaker.

The allowlist is YAML, namespace -> list of role ARNs (shell-style wildcards allowed), with "*" as
the namespace key for rules that apply everywhere. With no allowlist configured every role is
allowed (a single-tenant install); with one, a namespace not listed may use no role at all."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class RoleAllowlist:
    rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    enforced: bool = False

    @classmethod
    def from_yaml(cls, text: str) -> "RoleAllowlist":
        data = yaml.safe_load(text) or {}
        if not isinstance(data, Mapping):
            raise ValueError("role allowlist must map namespace names to lists of IAM role ARNs")
        rules: dict[str, tuple[str, ...]] = {}
        for namespace, arns in data.items():
            if isinstance(arns, str):
                arns = [arns]
            if not isinstance(arns, list) or not all(isinstance(a, str) for a in arns):
                raise ValueError(f"role allowlist entry {namespace!r} must be a list of IAM role ARNs")
            rules[str(namespace)] = tuple(arns)
        return cls(rules=rules, enforced=True)

    @classmethod
    def from_file(cls, path: str | Path | None) -> "RoleAllowlist":
        if not path:
            return cls()
        return cls.from_yaml(Path(path).read_text())

    def check(self, namespace: str, role_arn: str) -> str | None:
        """None when allowed; otherwise the message for the resource's condition and Event."""
        if not self.enforced:
            return None
        patterns = self.rules.get(namespace, ()) + self.rules.get("*", ())
        if any(fnmatch.fnmatchcase(role_arn, p) for p in patterns):
            return None
        if not patterns:
            return (f"spec.roleArn {role_arn} is not allowed: namespace {namespace!r} has no SageMaker "
                    "execution roles in the operator's role allowlist; ask the platform team to add this "
                    "role for the namespace to the operator's role allowlist")
        return (f"spec.roleArn {role_arn} is not allowed in namespace {namespace!r}; "
                f"use one of: {', '.join(patterns)}, or ask the platform team to add this role for the "
                "namespace to the operator's role allowlist")
