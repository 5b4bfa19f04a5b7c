"""JSON exactly as PostgreSQL's jsonb accepts it, checked before anything is written.

``json.dumps`` happily produces NaN, ``\\u0000`` and lone surrogates; jsonb
rejects all three, and a rejected row would fail a whole batch. Arguments are
checked at enqueue and results at the end of an attempt, both here.
"""

from __future__ import annotations

import json
import json.encoder
import re
from typing import Any

# A \u0000 escape that is not itself an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


# Every reader of a stored value (a worker's json.loads, get_job, the dashboard) must
# decode it without running out of stack; json.loads gives up near 1,000 levels.
MAX_DEPTH = 100

# json.dumps with any non-default option builds a new encoder on every call; one built
# once gives the same text for a fraction of the cost on small values.
_COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
# The C encoder under it, made once and without the circular-reference table (which a
# shared encoder could not share between threads): the same text again for about half
# the cost of a small dict. Whatever it refuses (a circular value, NaN, an object) goes
# through _COMPACT, which raises the error it always raised.
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_FAST: Any = None
if _make_encoder is not None:
    _FAST = _make_encoder(
        None, _COMPACT.default, json.encoder.encode_basestring_ascii, None, ":", ",",
        False, False, False,
    )  # fmt: skip


def _compact(value: Any) -> str:
    if _FAST is not None:
        try:
            return "".join(_FAST(value, 0))
        except Exception:  # noqa: BLE001 - the checked encoder below says what
            pass
    return _COMPACT.encode(value)


def dumps_strict(value: Any) -> str:
    """Compact JSON text; ``TypeError``/``ValueError`` for what jsonb would refuse."""
    try:
        text = _compact(value)
    except RecursionError:
        raise ValueError(f"it is nested more than {MAX_DEPTH} levels deep") from None
    # Counting brackets is cheap and only an upper bound (strings may hold some).
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise ValueError(f"it is nested more than {MAX_DEPTH} levels deep")
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise ValueError("a string holds a NUL character (\\u0000), which PostgreSQL rejects")
    if "\\ud" in text:  # surrogate escapes: fine in pairs, not alone
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    return text


def _depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (stops counting past MAX_DEPTH)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest
