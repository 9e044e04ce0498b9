"""The training package's modules import each other without cycles, counting the imports made
inside functions too (a cycle there works only by the order things happen to run in)."""

from __future__ import annotations

import ast
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[2] / "workloads" / "train"


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(alias.name for alias in node.names)
    return out


def test_workloads_train_has_no_import_cycle():
    graph = {p.stem: imports_of(p) & {q.stem for q in TRAIN.glob("*.py")} for p in TRAIN.glob("*.py")}
    assert graph["hf_trainer"] and graph["job"], "the scan should see the package's own imports"
    done, path = set(), []

    def visit(module: str) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path[path.index(module):] + [module])}"
        if module in done:
            return
        path.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
