"""docs/migrating-from-soniq.md: its Python samples run as written, against PostgreSQL."""

from __future__ import annotations

from tests.test_docs import run_python


def test_migration_guide_samples_run(pg_url: str) -> None:
    run_python("migrating-from-soniq.md", pg_url)
