"""Query-string parsing shared by the TES and WES blueprints."""

from __future__ import annotations

from flask import request

from hpc_bridge.errors import BadRequest


def int_arg(name: str) -> int | None:
    """An integer parameter; absent or empty is None (as for every other filter), junk is a 400."""
    value = request.args.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name}: must be an integer") from None
