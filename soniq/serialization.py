"""JSON exactly as PostgreSQL's jsonb accepts it, checked before anything is written.

``json.dumps`` happily produces NaN, ``\\u0000`` and lone surrogates; jsonb
rejects all three, and a rejected row would fail a whole batch. Arguments are
checked at enqueue and results at the end of an attempt, both here.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A \u0000 escape that is not itself an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def dumps_strict(value: Any) -> str:
    """Compact JSON text; ``TypeError``/``ValueError`` for what jsonb would refuse."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise ValueError("a string holds a NUL character (\\u0000), which PostgreSQL rejects")
    if "\\ud" in text:  # surrogate escapes: fine in pairs, not alone
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    return text
