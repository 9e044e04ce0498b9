"""SageMaker's values as the API spells them, from either the API's or an event's spelling, and
its times as epoch seconds or the ISO-8601 strings kept in status. Events spell enums in upper
snake case ("IN_SERVICE") and times as epoch milliseconds; DescribeX answers in CamelCase with
datetimes. Everything here accepts either."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Iterable


def _spelling_key(value: str) -> str:
    return value.replace("_", "").replace("-", "").replace(" ", "").upper()


def api_spelling(value: Any, known: Iterable[str]) -> Any:
    """`value` as the SageMaker API spells it when it is one of `known` in any case or with
    underscores ("IN_SERVICE", "in_service", "InService" -> "InService"); anything else as given."""
    if not isinstance(value, str):
        return value
    key = _spelling_key(value)
    return next((k for k in known if _spelling_key(k) == key), value)


def _from_number(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"not a timestamp: {value!r}")
    # EventBridge writes millis; 1e11 seconds is the year 5138, so anything larger is millis.
    return value / 1000.0 if abs(value) > 1e11 else value


def to_epoch(value: Any) -> float | None:
    """SageMaker's timestamp as epoch seconds: a datetime (boto3), epoch millis as a number or a
    string of digits (EventBridge details: 1592411992203.0, "1583831889050"), epoch seconds, or an
    ISO-8601 string (what we keep in status; one without a zone is UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, bool):
        raise TypeError(f"not a timestamp: {value!r}")
    if isinstance(value, (int, float)):
        return _from_number(float(value))
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            return to_epoch(parsed)
        return _from_number(number)
    raise TypeError(f"not a timestamp: {value!r}")


def to_datetime(value: Any) -> dt.datetime | None:
    """SageMaker's timestamp, in any form `to_epoch` takes, as boto3 gives it: an aware UTC datetime."""
    epoch = to_epoch(value)
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso(dt.datetime.now(dt.timezone.utc).timestamp())
