"""Events as JSON that any store accepts.

Salt events may carry what JSON cannot (bytes, NaN, keys that are not
strings, sets) and NUL characters, which PostgreSQL's jsonb and many log
pipelines refuse: those are turned into text rather than failing a batch on
every retry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final


def to_json(data: Any) -> str:
    """JSON that jsonb accepts. Salt events may carry what JSON cannot (bytes,
    NaN, keys that are not strings, NUL characters, which jsonb refuses): those
    are turned into text rather than failing the batch on every retry."""
    try:
        text = _ENCODER.encode(data)
    except (TypeError, ValueError):
        return _ENCODER.encode(_jsonable(data))
    if "\\u0000" in text:
        return _ENCODER.encode(_jsonable(data))
    return text


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


_ENCODER: Final = json.JSONEncoder(allow_nan=False, separators=(",", ":"), default=_default)


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {_jsonable(_key(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence | set | frozenset) and not isinstance(value, bytes | bytearray):
        return [_jsonable(v) for v in value]
    return _jsonable(_default(value))


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode("utf-8", "backslashreplace")
    return json.dumps(key) if isinstance(key, int | float | bool) or key is None else repr(key)
