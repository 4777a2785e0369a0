"""JSON from clients (request bodies, WES form fields, token segments), parsed with a depth limit.

Python's parser raises RecursionError (a 500) on a document nested about a thousand levels deep,
and every recursive walk over a parsed document (pydantic, json.dumps, the WES parameter
resolution, cwltool) fails at a much lower depth; real tasks, run requests and tokens nest a few
levels. A deeper document is a ValueError here, so callers refuse it like any malformed JSON.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


class TooDeep(ValueError):
    def __init__(self) -> None:
        super().__init__(f"nested more than {MAX_DEPTH} levels deep, the maximum here")


def loads(text: str | bytes) -> Any:
    """json.loads, refusing (TooDeep) a document with containers more than MAX_DEPTH levels deep."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep() from None
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(MAX_DEPTH):  # one level at a time: no recursion of our own
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, dict | list)]
        if not level:
            return value
    raise TooDeep()
