"""`kubectl get`-style tables for our resources, driven by the CRDs' own printer columns, so the
demo and the embedded API's server-side tables show exactly what `kubectl get
llamafinetunes,llamaendpoints` shows in a cluster."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from llama_operator.kinds import VERSION


def _lookup(obj: Mapping[str, Any], json_path: str) -> Any:
    """The simple `.a.b.c` JSONPath subset that printer columns use."""
    value: Any = obj
    for part in json_path.lstrip(".").split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def human_age(created: str | None, now: dt.datetime | None = None) -> str:
    """Age as kubectl prints it: 45s, 7m12s, 3h5m, 2d4h."""
    if not created:
        return "<unknown>"
    now = now or dt.datetime.now(dt.timezone.utc)
    then = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    seconds = max(0, int((now - then).total_seconds()))
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs and minutes < 10 else f"{minutes}m"
    return f"{secs}s"


def _cell(value: Any, column_type: str) -> str:
    if value is None or value == "":
        return "<none>" if column_type != "number" else ""
    if column_type == "number" and isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def rows(objects: Iterable[Mapping[str, Any]], printer_columns: list[Mapping[str, Any]],
         now: dt.datetime | None = None) -> list[list[str]]:
    """Header plus one row per object: NAME, then each printer column (Age computed)."""
    header = ["NAME"] + [c["name"].upper() for c in printer_columns]
    table = [header]
    for obj in objects:
        row = [obj["metadata"]["name"]]
        for column in printer_columns:
            value = _lookup(obj, column["jsonPath"])
            row.append(human_age(value, now) if column.get("type") == "date" else _cell(value, column.get("type", "string")))
        table.append(row)
    return table


def render(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


def printer_columns(crd: Mapping[str, Any], version: str = VERSION, *, wide: bool = False
                    ) -> list[Mapping[str, Any]]:
    """The columns `kubectl get` prints (with `wide`, as `-o wide`: priority above 0 too)."""
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return [c for c in v.get("additionalPrinterColumns", []) if wide or not c.get("priority")]
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version}")
