"""Plugins (COMPAT.md §10): install paths, the per-app registry, lifecycle hooks, entry
points (opt-in only), CLI commands, dashboard panels and SQL migrations, each through
the seam our own features use."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from soniq import JobContext, Soniq
from soniq.errors import SONIQ_PLUGIN_DUPLICATE, PluginDuplicateError, PluginError
from soniq.events import Subscriber
from soniq.plugin import CommandSpec, PanelSpec, SoniqPlugin, discover_plugins
from tests.test_cli import cli_env

PLUGIN_MODULE = """
from pathlib import Path

from soniq.plugin import CommandSpec


def report(args):
    print(f"audit report limit={args.limit} verbose={args.verbose}")
    return 3


async def areport(args):
    print("async audit")


class AuditPlugin:
    name = "audit"
    version = "1.0.0"

    def install(self, app):
        app.cli.add_command(CommandSpec(
            name="audit-report", help="Print the audit report.", handler=report,
            arguments=[{"args": ["--limit"], "kwargs": {"type": int, "default": 10}},
                       {"args": ["--verbose"], "kwargs": {"action": "store_true"}}],
        ))
        app.cli.add_command(CommandSpec(name="audit-async", help="Async.", handler=areport))
        app.migrations.register_source(Path(__file__).parent / "audit_sql", prefix="0100")
"""


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed-looking distribution with a ``soniq.plugins`` entry point."""
    site = tmp_path / "site"
    (site / "audit_sql").mkdir(parents=True)
    (site / "audit_plugin.py").write_text(PLUGIN_MODULE)
    (site / "audit_sql" / "001_create_audit.sql").write_text(
        "CREATE TABLE plugin_audit (id serial PRIMARY KEY, note text);"
    )
    (site / "audit_sql" / "002_add_seen.sql").write_text(
        "ALTER TABLE plugin_audit ADD COLUMN seen boolean NOT NULL DEFAULT false;"
    )
    dist = site / "audit_plugin-1.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: audit-plugin\nVersion: 1.0.0\n")
    (dist / "entry_points.txt").write_text("[soniq.plugins]\naudit = audit_plugin:AuditPlugin\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("audit_plugin", None)


class Recorder:
    """A plugin that records its lifecycle in a shared list."""

    def __init__(self, name: str, log: list[str], *, fail_startup: bool = False) -> None:
        self.name, self.version, self.log, self.fail_startup = name, "0.1", log, fail_startup

    def install(self, app: Soniq) -> None:
        self.log.append(f"install {self.name}")

    async def on_startup(self, app: Soniq) -> None:
        self.log.append(f"startup {self.name}")
        if self.fail_startup:
            raise RuntimeError(f"{self.name} cannot start")

    async def on_shutdown(self, app: Soniq) -> None:
        self.log.append(f"shutdown {self.name}")
        raise RuntimeError("shutdown errors are logged, not raised")


async def test_install_order_registry_view_and_lifecycle() -> None:
    log: list[str] = []
    first, second = Recorder("first", log), Recorder("second", log)
    app = Soniq(backend="memory", plugins=[first])
    assert app.use(second) is second
    assert isinstance(first, SoniqPlugin)
    assert "first" in app.plugins and app.plugins["second"] is second and len(app.plugins) == 2
    assert (
        [p.name for p in app.plugins] == ["first", "second"] == [p.name for p in app.plugins.list()]
    )
    with pytest.raises(KeyError):
        app.plugins["missing"]
    assert await app.setup() >= 0
    await app.close()
    assert log == ["install first", "install second", "startup first", "startup second",
                   "shutdown second", "shutdown first"]  # fmt: skip


async def test_on_shutdown_runs_without_setup_and_startup_failure_propagates() -> None:
    log: list[str] = []
    app = Soniq(backend="memory", plugins=[Recorder("a", log)])
    await app.close()
    assert log == ["install a", "shutdown a"]
    broken = Soniq(backend="memory", plugins=[Recorder("bad", log, fail_startup=True)])
    with pytest.raises(RuntimeError, match="bad cannot start"):
        await broken.setup()
    await broken.close()


def test_duplicates_and_non_plugins_are_refused() -> None:
    log: list[str] = []
    app = Soniq(backend="memory", plugins=[Recorder("audit", log)])
    with pytest.raises(PluginDuplicateError) as info:
        app.use(Recorder("audit", log))
    assert info.value.error_code == SONIQ_PLUGIN_DUPLICATE
    assert info.value.context == {"name": "audit", "version": "0.1"}
    with pytest.raises(PluginDuplicateError):
        Soniq(backend="memory", plugins=[Recorder("x", log), Recorder("x", log)])
    with pytest.raises(PluginError, match="not a Soniq plugin"):
        app.use(object())
    assert log.count("install audit") == 1  # the refused one never installed


class Counting(Subscriber):
    """A plugin's event subscriber: the seam webhooks, logs and metrics use."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    def on_finished(self, job: Any, outcome: Any, duration: float) -> None:
        self.finished.append(job.job_name)


class JobsPlugin:
    name, version = "jobs", "1.0"

    def __init__(self) -> None:
        self.counting = Counting()
        self.calls: list[str] = []

    def install(self, app: Soniq) -> None:
        @app.job(name="plugin.ping")
        async def ping() -> str:
            return "pong"

        @app.before_job
        def before(ctx: JobContext) -> None:
            self.calls.append(f"before {ctx.job_name}")

        @app.middleware
        async def around(ctx: JobContext, call_next: Any) -> Any:
            self.calls.append("middleware")
            return await call_next(ctx)

        app.events.subscribe(self.counting)
        app.dashboard.add_panel(PanelSpec("jobs", "Jobs plugin", render=self.render))

    async def render(self, app: Soniq) -> dict[str, Any]:
        return {"registered": len(app.registry)}


async def test_a_plugin_extends_the_app_through_public_seams(soniq_app: Soniq) -> None:
    plugin = JobsPlugin()
    soniq_app.use(plugin)
    job_id = await soniq_app.enqueue("plugin.ping", args={})
    await soniq_app.run_worker(run_once=True)
    assert await soniq_app.get_result(job_id) == "pong"
    assert plugin.calls == ["before plugin.ping", "middleware"]
    assert plugin.counting.finished == ["plugin.ping"]
    assert [p.id for p in soniq_app.dashboard.panels] == ["jobs"]
    assert await soniq_app.dashboard.render(soniq_app, "jobs") == {"registered": 1}
    assert await soniq_app.dashboard.render(soniq_app, "nope") is None


def test_entry_points_load_only_when_asked(
    plugin_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(Soniq(backend="memory").plugins) == 0  # nothing loads by default
    [plugin] = discover_plugins(["audit"])
    assert (plugin.name, plugin.version) == ("audit", "1.0.0")
    assert "audit" in [p.name for p in discover_plugins()]
    with pytest.raises(PluginError, match="No Soniq plugin entry point named 'nope'"):
        discover_plugins(["nope"])
    monkeypatch.setenv("SONIQ_PLUGINS", "audit")
    assert len(Soniq(backend="memory").plugins) == 0  # SONIQ_PLUGINS alone does not load
    loaded = Soniq(backend="memory", autoload_plugins=True)
    assert "audit" in loaded.plugins
    assert set(loaded.cli.commands) == {"audit-report", "audit-async"}


async def test_plugin_migrations_apply_with_ours_once(plugin_site: Path, pg_url: str) -> None:
    [plugin] = discover_plugins(["audit"])
    app = Soniq(database_url=pg_url, plugins=[plugin], pool_min_size=1)
    applied = await app.setup()
    assert applied.applied == ["0101_create_audit", "0102_add_seen"]
    assert await app.setup() == 0
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("INSERT INTO plugin_audit (note) VALUES ('x')")
        assert await conn.fetchval("SELECT seen FROM plugin_audit") is False
        names = {r["name"] for r in await conn.fetch("SELECT name FROM soniq_migrations")}
        assert {"0101_create_audit", "0102_add_seen"} <= names
    finally:
        await conn.close()
    await app.close()


async def test_migration_sources_are_checked_and_follow_the_dialect(tmp_path: Path) -> None:
    app = Soniq(backend="memory")
    sql = tmp_path / "sql"
    sql.mkdir()
    (sql / "001_notes.sql").write_text("CREATE TABLE plugin_notes (id integer PRIMARY KEY);")
    for prefix in ("0050", "9000", "abc"):
        with pytest.raises(PluginError, match="plugin range"):
            app.migrations.register_source(sql, prefix=prefix)
    with pytest.raises(PluginError, match="not a directory"):
        app.migrations.register_source(tmp_path / "missing")
    app.migrations.register_source(sql, prefix="0200", dialect="sqlite")
    assert [n for n, _ in app.migrations.files("postgres")] == []
    assert [n for n, _ in app.migrations.files("memory")] == ["0201_notes"]
    assert (await app.setup()).applied[-1] == "0201_notes"  # after ours
    assert await app.setup() == 0
    (sql / "oops.sql").write_text("SELECT 1;")
    with pytest.raises(PluginError, match=r"NNN_name\.sql"):
        app.migrations.files("sqlite")
    await app.close()


def test_command_specs_are_validated() -> None:
    app = Soniq(backend="memory")
    spec = CommandSpec(name="x", help="x", handler=lambda args: 0)
    app.cli.add_command(spec)
    with pytest.raises(PluginError, match="already registered"):
        app.cli.add_command(spec)
    with pytest.raises(PluginError):
        app.cli.add_command("x")  # type: ignore[arg-type]


# --- CLI ----------------------------------------------------------------------------------
def soniq_cli(*args: str, site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soniq.cli.main", *args],
        env=cli_env(PYTHONPATH=str(site), **env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_plugin_commands_in_the_cli(plugin_site: Path, tmp_path: Path) -> None:
    ran = soniq_cli(
        "--plugins=audit", "audit-report", "--limit", "3", "--verbose", site=plugin_site,
        cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 3, ran.stderr  # the handler's return value is the exit code
    assert "audit report limit=3 verbose=True" in ran.stdout
    by_env = soniq_cli("audit-async", site=plugin_site, cwd=tmp_path, SONIQ_PLUGINS="audit")
    assert by_env.returncode == 0 and "async audit" in by_env.stdout
    listed = soniq_cli("--plugins", "audit", "--help", site=plugin_site, cwd=tmp_path)
    assert "audit-report" in listed.stdout and "Soniq CLI" in listed.stdout
    helped = soniq_cli("--plugins=audit", "audit-report", "--help", site=plugin_site, cwd=tmp_path)
    assert "--limit LIMIT" in helped.stdout
    absent = soniq_cli("audit-report", site=plugin_site, cwd=tmp_path)
    assert absent.returncode == 2 and "No such command" in absent.stderr
    unknown = soniq_cli("--plugins=nope", "status", site=plugin_site, cwd=tmp_path)
    assert unknown.returncode == 1 and "No Soniq plugin entry point named 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_broken_plugin_is_one_clear_error(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (site / "broken_plugin.py").write_text("raise ImportError('missing dependency zzz')\n")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[soniq.plugins]\nbroken = broken_plugin:Plugin\n")
    result = soniq_cli("--plugins=broken", "status", site=site, cwd=tmp_path)
    assert result.returncode == 1
    assert "Loading Soniq plugin 'broken'" in result.stderr and "zzz" in result.stderr
    assert "Traceback" not in result.stderr
    assert textwrap.dedent(result.stderr).count("error:") == 1


async def test_panels_are_served_by_the_dashboard_api() -> None:
    import httpx

    from soniq.dashboard import create_dashboard_app

    app = Soniq(backend="memory")
    app.use(JobsPlugin())
    web = create_dashboard_app(app, allowed_hosts=["*"])
    transport = httpx.ASGITransport(app=web, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        listed = await client.get("/api/panels")
        assert listed.status_code == 200, listed.text
        assert listed.json() == {"panels": [{"id": "jobs", "title": "Jobs plugin"}]}
        one = await client.get("/api/panels/jobs")
        assert one.json() == {"id": "jobs", "title": "Jobs plugin", "content": {"registered": 1}}
        missing = await client.get("/api/panels/nope")
        assert missing.status_code == 404 and "No dashboard panel" in missing.json()["detail"]
    await app.close()
