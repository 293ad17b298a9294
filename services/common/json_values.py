"""Checks on parsed JSON that the gateway and score both apply to client metadata."""

from __future__ import annotations

import re
from typing import Any, Literal

MAX_METADATA_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = item
    return result


def json_issue(value: Any) -> Literal["too_deep", "lone_surrogate"] | None:
    """Why parsed JSON cannot go back to every client as UTF-8 JSON, or None.

    "too_deep": nested deeper than MAX_METADATA_DEPTH (an empty object is 1 level);
    "lone_surrogate": a key or string holds one (not UTF-8). One walk, without recursion.
    """
    deepest, surrogate, stack = 0, False, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            surrogate = surrogate or _SURROGATE.search(item) is not None
        elif isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
            stack.extend(
                (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    if deepest > MAX_METADATA_DEPTH:
        return "too_deep"
    return "lone_surrogate" if surrogate else None
