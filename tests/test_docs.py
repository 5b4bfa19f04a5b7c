"""Every code sample of the docs site, extracted from the pages and run (never copied here).

* ``python``: a page's samples run in order, in one namespace, against a fresh
  PostgreSQL database (``postgresql://localhost/<name>`` in a sample means it); top-level
  ``await`` works as in an async REPL, and a sync sample runs with no loop running (as
  sync code does). Names a page leaves to the reader (``get_user``, ``Order``...) are
  stubbed below; functions named ``test_*`` are called with an in-memory app.
* ``bash``: every ``soniq`` command is parsed by the real CLI (options and arguments
  must exist); every other program must be one the docs may name; ``pip install``
  extras must exist in pyproject.toml.
* ``yaml`` parses; ``ini`` parses (systemd units and Supervisor files).
* ``text`` is prose-like output or foreign code (a Celery "before"), not run.

And the site builds with ``mkdocs build --strict`` (``test_site_builds``).
"""

from __future__ import annotations

import ast
import asyncio
import configparser
import inspect
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]

from tests.docs_samples import DOCS, blocks

REPO = DOCS.parent
# The pages of this site whose samples are checked here (others' pages have their own tests).
PAGES = [
    "index.md",
    "quickstart.md",
    "tutorial.md",
    "guides/jobs.md",
    "guides/worker.md",
    "guides/hooks.md",
    "guides/transactional-enqueue.md",
    "guides/fastapi.md",
    "guides/sync.md",
    "guides/common-patterns.md",
    "testing.md",
    "deployment.md",
    "pgbouncer.md",
    "production.md",
    "migration/celery.md",
    "migration/rq.md",
]
PROGRAMS = {"soniq", "pip", "python", "uvicorn", "pytest", "systemctl"}
URL = re.compile(r"(postgresql(?:\+\w+)?|asyncpg|psycopg)://localhost/\w+")

STUBS = """
import types as _types

class _Stub(_types.SimpleNamespace):
    pass

async def get_user(user_id):
    return _Stub(id=user_id, email=f"user{user_id}@example.com")

async def save_user(name, email):
    return _Stub(id=1, name=name, email=email)

async def get_order(order_id):
    return _Stub(id=order_id)

async def save_order(product_id, quantity):
    return _Stub(id=1)

async def send_email(to, template):
    pass

async def fulfill(order):
    pass

async def send_invoice(order_id):
    pass

class Order:  # a Django model, in the sync guide
    objects = None
"""


def point_at(code: str, url: str) -> str:
    """``<scheme>://localhost/<name>`` → the test database, keeping the sample's scheme."""
    parts = urlsplit(url)
    rest = f"{parts.netloc}{parts.path}"
    return URL.sub(lambda m: f"{m.group(1)}://{rest}", code)


# The reader's own table, which the samples write to.
ORDERS_DDL = (
    "CREATE TABLE orders (id serial PRIMARY KEY, product_id int, quantity int, total numeric)"
)


async def create_orders(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(ORDERS_DDL)
    finally:
        await conn.close()


def run_python(page: str, url: str) -> None:
    asyncio.run(create_orders(url))
    ns: dict[str, Any] = {"__name__": f"docs_{Path(page).stem.replace('-', '_')}"}
    exec(compile(STUBS, "<stubs>", "exec"), ns)
    loop = asyncio.new_event_loop()
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        for block in blocks(page):
            if block.lang != "python":
                continue
            code = compile(point_at(block.code, url), block.where, "exec", flags=flags)
            try:
                if code.co_flags & inspect.CO_COROUTINE:
                    loop.run_until_complete(eval(code, ns))
                else:
                    exec(code, ns)
            except Exception as exc:
                raise AssertionError(f"{block.where}: {type(exc).__name__}: {exc}") from exc
        for name, fn in list(ns.items()):
            if name.startswith("test_") and inspect.iscoroutinefunction(fn):
                from soniq import testing

                app = testing.make_app()
                loop.run_until_complete(fn(app))
                loop.run_until_complete(app.close())
    finally:
        from soniq import Soniq

        for value in ns.values():
            if isinstance(value, Soniq):
                loop.run_until_complete(value.close())
        loop.close()


@pytest.fixture
def myapp_models() -> Any:
    """``myapp.models`` for the Tortoise sample (Tortoise loads models by module name)."""
    from tests import tortoise_models

    package = types.ModuleType("myapp")
    package.models = tortoise_models  # type: ignore[attr-defined]
    sys.modules["myapp"], sys.modules["myapp.models"] = package, tortoise_models
    yield
    del sys.modules["myapp"], sys.modules["myapp.models"]


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.lang == "python" for b in blocks(p))])
def test_python_samples_run(page: str, pg_url: str, myapp_models: Any) -> None:
    run_python(page, pg_url)


def test_every_block_has_a_checked_language() -> None:
    for page in PAGES:
        for block in blocks(page):
            lang = block.lang or "(none)"
            assert lang in {"python", "bash", "yaml", "ini", "text"}, (
                f"{block.where}: a ```{lang} block; use a language this test checks"
            )


def extras() -> set[str]:
    """The extras pyproject.toml declares (read as text: tomllib is 3.11+)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+) = \[", section, re.M))


def commands(code: str) -> list[list[str]]:
    """Shell lines (continuations joined, comments dropped) as words, env assignments removed."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words.pop(0)
        out.append(words)
    return out


def check_soniq(words: list[str], where: str) -> None:
    import click

    from soniq.cli import main

    ctx = main.make_context("soniq", [words[1], "--help"], resilient_parsing=True)
    command = main.get_command(ctx, words[1])
    assert command is not None, f"{where}: no `soniq {words[1]}` command"
    try:
        command.make_context(words[1], words[2:], parent=ctx)
    except click.UsageError as exc:
        raise AssertionError(f"{where}: `{' '.join(words)}`: {exc}") from None


@pytest.mark.parametrize("page", PAGES)
def test_shell_and_config_samples(page: str) -> None:
    for block in blocks(page):
        if block.lang == "bash":
            for words in commands(block.code):
                assert words[0] in PROGRAMS, f"{block.where}: unexpected program {words[0]!r}"
                if words[0] == "soniq":
                    check_soniq(words, block.where)
                if words[:2] == ["pip", "install"]:
                    for spec in words[2:]:
                        wanted = re.findall(r"\[([\w,]+)\]", spec)
                        for extra in ",".join(wanted).split(",") if wanted else []:
                            assert extra in extras(), f"{block.where}: no extra [{extra}]"
        elif block.lang == "yaml":
            assert list(yaml.safe_load_all(block.code)), block.where
        elif block.lang == "ini":
            parser = configparser.ConfigParser(strict=False, interpolation=None)
            parser.read_string(block.code)
            assert parser.sections(), block.where


def test_site_builds(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "guides" / "transactional-enqueue" / "index.html").exists()
