"""Code samples of the docs pages, extracted from the Markdown (never copied into tests)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
# Every sample says postgresql://localhost/<name>; tests point it at their database.
SAMPLE_URL = re.compile(r"postgresql://localhost/(\w+)")
_FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.S | re.M
)


@dataclass(frozen=True)
class Block:
    page: str
    lang: str
    code: str
    line: int

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced blocks of ``docs/<page>`` in order (indented ones, as in admonitions, too)."""
    text = (DOCS / page).read_text()
    out = []
    for m in _FENCE.finditer(text):
        indent = len(m["indent"])
        body = "\n".join(line[indent:] for line in m["body"].splitlines())
        out.append(Block(page, m["lang"], body + "\n", text.count("\n", 0, m.start()) + 1))
    return out


def block_starting(page: str, first_line: str) -> Block:
    for b in blocks(page):
        if b.code.splitlines()[0].strip() == first_line:
            return b
    raise LookupError(f"no block of docs/{page} starts with {first_line!r}")


def pages() -> list[str]:
    return sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
