"""Plugins: packages that extend one ``Soniq`` instance through the seams our own
features use.

A plugin is any object with ``name``, ``version`` and ``install(app)``; optional
``async on_startup(app)`` / ``async on_shutdown(app)``. ``install`` runs at once
(sync, no I/O) and uses only public surfaces:

* jobs, hooks and middleware: ``app.job``, ``app.before_job``..., ``app.middleware``;
* lifecycle events (what webhooks, logs and metrics subscribe to): ``app.events``;
* CLI commands: ``app.cli.add_command(CommandSpec(...))`` — become ``soniq <name>``;
* dashboard panels: ``app.dashboard.add_panel(PanelSpec(...))``;
* SQL migrations: ``app.migrations.register_source(path, prefix="0100")``, applied
  by ``setup()`` under the same lock and bookkeeping as ours;
* storage: only ``app.backend`` (the ``StorageBackend`` protocol) — there is no other.

Install with ``Soniq(plugins=[...])`` or ``app.use(plugin)``. Entry points (group
``soniq.plugins``, each a zero-argument factory) load only when asked:
``Soniq(autoload_plugins=True)``, ``soniq --plugins=a,b ...`` or ``SONIQ_PLUGINS``.

Example::

    class AuditPlugin:
        name, version = "audit", "1.0.0"

        def install(self, app):
            @app.after_job
            def audited(job_name, job_id, duration_ms):
                audit_log.info("%s %s %.0fms", job_name, job_id, duration_ms)

            app.cli.add_command(CommandSpec(name="audit-report", help="Print the audit",
                                            handler=lambda args: print_report() or 0))

    app = Soniq(plugins=[AuditPlugin()])
"""

from __future__ import annotations

import argparse
import builtins
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from soniq.errors import PluginDuplicateError, PluginError

if TYPE_CHECKING:
    from soniq.app import Soniq

log = logging.getLogger("soniq.plugin")

ENTRY_POINT_GROUP = "soniq.plugins"


@runtime_checkable
class SoniqPlugin(Protocol):
    """``name``, ``version``, ``install(app)``; ``on_startup``/``on_shutdown`` are optional."""

    name: str
    version: str

    def install(self, app: Soniq) -> None: ...


Handler = Callable[[argparse.Namespace], "int | Awaitable[int | None] | None"]


@dataclass(frozen=True)
class CommandSpec:
    """A ``soniq <name>`` command contributed by a plugin.

    ``arguments`` are argparse-style: ``[{"args": ["--limit"], "kwargs": {"type": int,
    "default": 10}}]``. ``handler(namespace)`` (sync or async) returns the exit code.
    """

    name: str
    help: str
    handler: Handler
    description: str | None = None
    arguments: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class PanelSpec:
    """A dashboard panel: ``render(app)`` returns a dict (JSON) or a string (HTML)."""

    id: str
    title: str
    render: Callable[[Soniq], Awaitable[dict[str, Any] | str]]


class PluginRegistry:
    """The plugins of one instance, in install order (``app.plugins``; read-only view).

    ``"name" in app.plugins``, ``app.plugins["name"]``, iteration, ``len``, ``.list()``.
    """

    def __init__(self) -> None:
        self._plugins: dict[str, SoniqPlugin] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def __getitem__(self, name: str) -> SoniqPlugin:
        return self._plugins[name]

    def __iter__(self) -> Iterator[SoniqPlugin]:
        return iter(list(self._plugins.values()))

    def __len__(self) -> int:
        return len(self._plugins)

    def list(self) -> list[SoniqPlugin]:
        return list(self._plugins.values())

    def names(self) -> builtins.list[str]:
        return builtins.list(self._plugins)

    def install(self, app: Soniq, plugin: Any) -> None:
        """Check ``plugin``, refuse a second one of the same name, then ``install(app)``."""
        check_plugin(plugin)
        if plugin.name in self._plugins:
            installed = self._plugins[plugin.name]
            raise PluginDuplicateError(
                f"A plugin named {plugin.name!r} is already installed on this Soniq instance "
                f"(version {installed.version}); install each plugin once (check plugins=[...], "
                "app.use() and SONIQ_PLUGINS for a repeat).",
                context={"name": plugin.name, "version": plugin.version},
            )
        plugin.install(app)
        self._plugins[plugin.name] = plugin

    async def startup(self, app: Soniq) -> None:
        """``on_startup`` of each plugin, in install order; a failure propagates."""
        for plugin in self.list():
            hook = getattr(plugin, "on_startup", None)
            if hook is not None:
                await _maybe_await(hook(app))

    async def shutdown(self, app: Soniq) -> None:
        """``on_shutdown`` in reverse install order; failures are logged, never raised."""
        for plugin in reversed(self.list()):
            hook = getattr(plugin, "on_shutdown", None)
            if hook is None:
                continue
            try:
                await _maybe_await(hook(app))
            except Exception as exc:  # noqa: BLE001 - closing must finish
                log.warning("Plugin %s failed in on_shutdown: %r", plugin.name, exc)


def check_plugin(plugin: Any) -> None:
    if not isinstance(plugin, SoniqPlugin) or not callable(getattr(plugin, "install", None)):
        raise PluginError(
            f"{plugin!r} is not a Soniq plugin: it needs `name` and `version` strings and an "
            "`install(app)` method (see soniq.plugin.SoniqPlugin)."
        )
    for attr in ("name", "version"):
        if not isinstance(getattr(plugin, attr), str) or not getattr(plugin, attr):
            raise PluginError(f"Plugin {plugin!r} needs a non-empty string `{attr}`.")


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class CliExtensions:
    """``app.cli``: commands plugins add to the ``soniq`` command."""

    def __init__(self) -> None:
        self.commands: dict[str, CommandSpec] = {}

    def add_command(self, spec: CommandSpec) -> CommandSpec:
        if not isinstance(spec, CommandSpec):
            raise PluginError(f"add_command() takes a CommandSpec, not {type(spec).__name__}")
        if spec.name in self.commands:
            raise PluginError(
                f"A plugin command named {spec.name!r} is already registered; give one of "
                "them another name."
            )
        self.commands[spec.name] = spec
        return spec


class DashboardExtensions:
    """``app.dashboard``: panels plugins add to the dashboard (``/api/panels``)."""

    def __init__(self) -> None:
        self._panels: dict[str, PanelSpec] = {}

    def add_panel(self, spec: PanelSpec) -> PanelSpec:
        if not isinstance(spec, PanelSpec):
            raise PluginError(f"add_panel() takes a PanelSpec, not {type(spec).__name__}")
        if spec.id in self._panels:
            raise PluginError(f"A dashboard panel with id {spec.id!r} is already registered.")
        self._panels[spec.id] = spec
        return spec

    @property
    def panels(self) -> list[PanelSpec]:
        return list(self._panels.values())

    def get_panel(self, panel_id: str) -> PanelSpec | None:
        return self._panels.get(panel_id)

    async def render(self, app: Soniq, panel_id: str) -> dict[str, Any] | str | None:
        """The panel's content, or ``None`` for an unknown id."""
        spec = self._panels.get(panel_id)
        return None if spec is None else await spec.render(app)


def install_plugins(app: Soniq, plugins: Iterable[Any] | None, autoload: bool) -> None:
    """What ``Soniq(plugins=[...], autoload_plugins=...)`` does: the given plugins in
    order, then (only with ``autoload``) the entry points named by ``SONIQ_PLUGINS``,
    or all installed ones when it is unset."""
    for plugin in plugins or ():
        app.use(plugin)
    if autoload:
        for plugin in discover_plugins(app.settings.plugins or None):
            if plugin.name not in app.plugins:  # also passed explicitly: once is enough
                app.use(plugin)


def discover_plugins(names: Iterable[str] | None = None) -> list[SoniqPlugin]:
    """Load entry-point plugins of group ``soniq.plugins`` (all, or only ``names``).

    Each entry point is a zero-argument factory (a class or function) called here.
    Never called implicitly: loading third-party code is opt-in.
    """
    found = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    wanted = list(dict.fromkeys(n.strip() for n in names if n.strip())) if names else None
    if wanted is not None:
        missing = [n for n in wanted if n not in found]
        if missing:
            available = ", ".join(sorted(found)) or "none installed"
            raise PluginError(
                f"No Soniq plugin entry point named {', '.join(map(repr, missing))} "
                f"(group {ENTRY_POINT_GROUP!r}; available: {available}). Install the plugin's "
                "package in this environment, or fix the name in --plugins / SONIQ_PLUGINS."
            )
    plugins: list[SoniqPlugin] = []
    for name in wanted if wanted is not None else sorted(found):
        plugins.append(_load(found[name]))
    return plugins


def _load(entry_point: metadata.EntryPoint) -> SoniqPlugin:
    try:
        factory = entry_point.load()
        plugin = factory()
    except Exception as exc:  # third-party code can raise anything
        raise PluginError(
            f"Loading Soniq plugin {entry_point.name!r} ({entry_point.value}) failed: "
            f"{type(exc).__name__}: {exc}. Fix or uninstall that plugin, or leave it out of "
            "--plugins / SONIQ_PLUGINS."
        ) from exc
    check_plugin(plugin)
    loaded: SoniqPlugin = plugin
    return loaded


__all__ = [
    "ENTRY_POINT_GROUP",
    "CliExtensions",
    "CommandSpec",
    "DashboardExtensions",
    "PanelSpec",
    "PluginRegistry",
    "SoniqPlugin",
    "discover_plugins",
    "install_plugins",
]
