"""Migrations beyond Soniq's own: sources plugins register, and what ``setup()`` returns.

``app.migrations.register_source(path, prefix="0100")`` adds a folder of numbered
SQL files (``001_create_audit.sql``, ``002_...``). ``setup()`` hands them to the
backend's ``migrate`` with ours, so they run under the same lock, each in its own
transaction, recorded in ``soniq_migrations`` as ``prefix + number``
(``0101_create_audit``). Number ranges: 0001-0099 are Soniq's, 0100-8999 are for
plugins, 9000-9999 are reserved.

Example::

    app.migrations.register_source(Path(__file__).parent / "sql", prefix="0300")
    applied = await app.setup()       # an int: how many migrations ran now
"""

from __future__ import annotations

import re
from pathlib import Path

from soniq.backends import MigrationReport
from soniq.errors import PluginError

PLUGIN_RANGE = (100, 8999)
_FILE = re.compile(r"^(\d+)_([A-Za-z0-9_]+)\.sql$")
DIALECTS = {"postgres": "postgres", "sqlite": "sqlite", "memory": "sqlite"}
"""Backend name → SQL dialect of its migrations (memory is SQLite in memory)."""


class MigrationSources:
    """``app.migrations``: extra migration folders, applied by ``app.setup()``."""

    def __init__(self) -> None:
        self._sources: list[tuple[Path, int, str]] = []

    def register_source(
        self, path: str | Path, prefix: str = "0100", dialect: str = "postgres"
    ) -> None:
        """Apply the ``NNN_name.sql`` files of ``path`` (numbered from ``prefix``) on
        ``dialect`` backends (``"postgres"`` or ``"sqlite"``)."""
        folder = Path(path)
        if not folder.is_dir():
            raise PluginError(
                f"Migration source {str(folder)!r} is not a directory; pass the folder of "
                ".sql files."
            )
        base = int(prefix) if str(prefix).isdigit() else -1
        if not PLUGIN_RANGE[0] <= base <= PLUGIN_RANGE[1]:
            raise PluginError(
                f"Migration prefix {prefix!r} is outside the plugin range 0100-8999 "
                '(0001-0099 are Soniq\'s own, 9000-9999 reserved); pick e.g. prefix="0300".'
            )
        if dialect not in ("postgres", "sqlite"):
            raise PluginError(f"Migration dialect must be 'postgres' or 'sqlite', not {dialect!r}.")
        self._sources.append((folder, base, dialect))
        self.files(dialect)  # a clash or a bad file name fails here, at registration

    def files(self, backend_name: str) -> list[tuple[str, str]]:
        """``(name, sql)`` of every registered file for ``backend_name``'s dialect, in order."""
        dialect = DIALECTS.get(backend_name, backend_name)
        out: dict[str, str] = {}
        for folder, base, source_dialect in self._sources:
            if source_dialect != dialect:
                continue
            for file in sorted(folder.glob("*.sql")):
                match = _FILE.match(file.name)
                if match is None:
                    raise PluginError(
                        f"Migration file {file.name!r} in {str(folder)!r} must be named "
                        "NNN_name.sql (e.g. 001_create_table.sql)."
                    )
                name = f"{base + int(match.group(1)):04d}_{match.group(2)}"
                if name in out or int(name[:4]) > PLUGIN_RANGE[1]:
                    raise PluginError(
                        f"Migration {name} (from {file}) clashes with another source or leaves "
                        "the plugin range; give the source another prefix."
                    )
                out[name] = file.read_text("utf-8")
        return sorted(out.items())


class SetupReport(int):
    """What ``app.setup()`` did: an ``int`` (migrations applied now), with the details.

    An int because the published ``setup()`` returned the count; the attributes
    (``applied``, ``already_applied``, ``database_created``) are what ``soniq setup``
    prints.
    """

    applied: list[str]
    already_applied: list[str]
    database_created: bool

    def __new__(cls, report: MigrationReport) -> SetupReport:
        self = super().__new__(cls, len(report.applied))
        self.applied = list(report.applied)
        self.already_applied = list(report.already_applied)
        self.database_created = report.database_created
        return self

    def __repr__(self) -> str:
        return f"SetupReport(applied={self.applied!r}, database_created={self.database_created})"


__all__ = ["MigrationSources", "SetupReport"]
