"""SQL per dialect: named runtime statements and numbered, forward-only migrations."""

from __future__ import annotations

from importlib import resources


def migration_files(dialect: str) -> list[tuple[str, str]]:
    """(name, sql) of every packaged ``postgres`` or ``sqlite`` migration, in order."""
    folder = resources.files("soniq.sql").joinpath("migrations").joinpath(dialect)
    files = sorted(
        (f.name, f.read_text("utf-8")) for f in folder.iterdir() if f.name.endswith(".sql")
    )
    return [(name.removesuffix(".sql"), sql) for name, sql in files]
