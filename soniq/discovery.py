"""Find the ``Soniq`` instance a worker should run: import ``SONIQ_JOBS_MODULES``, look inside.

Importing the modules runs their ``@app.job()`` decorators; the instance they
registered jobs on is the one found in the modules' globals. The current
directory is importable, as it is for ``python -m``, so ``SONIQ_JOBS_MODULES=jobs``
finds ``./jobs.py`` when the ``soniq`` script is run from that directory.

Example::

    app = discover_app(["jobs"])
    await app.run_worker()
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from soniq.app import Soniq
from soniq.errors import AmbiguousAppError, DiscoveryError
from soniq.utils import split_csv

MAX_TRACEBACK_FRAMES = 6
"""Frames of an import traceback shown: the innermost, where the user's bug is."""


def parse_modules(value: str | Sequence[str] | None) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``; a list passes through, stripped."""
    if value is None:
        return []
    parts: list[str] = split_csv(value) if isinstance(value, str) else list(value)
    return [p.strip() for p in parts if p and p.strip()]


def discover_app(modules: str | Sequence[str], *, cwd: str | None = None) -> Soniq:
    """Import ``modules`` and return the one ``Soniq`` instance that has registered jobs.

    Raises ``DiscoveryError`` (with what to check) when no module is given, one
    fails to import, or the modules hold no instance with jobs; ``AmbiguousAppError``
    (a ``DiscoveryError`` and, as in the published package, a ``RuntimeError``) when
    they hold several.
    """
    names = parse_modules(modules)
    if not names:
        raise DiscoveryError(
            "SONIQ_JOBS_MODULES is not set and --jobs-modules was not passed: set it to the "
            "comma-separated module(s) that define your @app.job() functions, "
            "e.g. SONIQ_JOBS_MODULES=jobs for ./jobs.py."
        )
    ensure_importable(cwd or os.getcwd())
    found: dict[int, tuple[str, Soniq]] = {}
    empty: list[str] = []
    for name in names:
        for label, instance in _instances(import_module(name)):
            if len(instance.registry) == 0:
                empty.append(label)
            else:
                found.setdefault(id(instance), (label, instance))
    return _pick(names, list(found.values()), empty)


def ensure_importable(directory: str) -> None:
    """Put ``directory`` first on ``sys.path`` (once), as ``python -m`` does for the cwd."""
    resolved = str(Path(directory).resolve())
    if not any(_same_dir(entry, resolved) for entry in sys.path):
        sys.path.insert(0, resolved)


def _same_dir(entry: str, resolved: str) -> bool:
    try:
        return str(Path(entry or ".").resolve()) == resolved
    except OSError:
        return False


def import_module(name: str) -> object:
    """Import one jobs module, turning any failure into an actionable ``DiscoveryError``."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_prefix(exc.name, name):
            raise DiscoveryError(_not_found_message(name)) from None
        raise DiscoveryError(_import_failed_message(name, exc)) from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code can raise anything
        raise DiscoveryError(_import_failed_message(name, exc)) from None


def _is_prefix(missing: str, wanted: str) -> bool:
    """Is the missing module ``wanted`` itself or one of its parent packages?"""
    return wanted == missing or wanted.startswith(missing + ".")


def _not_found_message(name: str) -> str:
    hint = ""
    if name.endswith(".py") or "/" in name or "\\" in name:
        dotted = name.removesuffix(".py").replace("/", ".").replace("\\", ".").strip(".")
        hint = f" Use a dotted module name, not a file path: {dotted!r}."
    return (
        f"Cannot import jobs module {name!r} (from SONIQ_JOBS_MODULES): no such module.{hint} "
        f"Run the command from the directory that contains it (current directory: "
        f"{os.getcwd()}), or add that directory to PYTHONPATH, and check the spelling."
    )


def _import_failed_message(name: str, exc: BaseException) -> str:
    return (
        f"Importing jobs module {name!r} (from SONIQ_JOBS_MODULES) failed:\n"
        f"{summarise_traceback(exc)}\n"
        f"Check the error above in {name!r} or a module it imports: a missing dependency "
        "(is the right virtualenv active?), an environment variable the module reads at "
        "import time, or a syntax error."
    )


def summarise_traceback(exc: BaseException) -> str:
    """The innermost frames outside importlib, then the exception line."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in frame.filename and not frame.filename.endswith("discovery.py")
    ][-MAX_TRACEBACK_FRAMES:]
    lines = ["Traceback (most recent call last):", *traceback.format_list(frames)]
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines).rstrip()


def _instances(module: object) -> list[tuple[str, Soniq]]:
    module_name = getattr(module, "__name__", "?")
    return [
        (f"{module_name}.{attr}", value)
        for attr, value in vars(module).items()
        if isinstance(value, Soniq)
    ]


def _pick(names: list[str], found: list[tuple[str, Soniq]], empty: list[str]) -> Soniq:
    if len(found) == 1:
        return found[0][1]
    modules = ", ".join(names)
    if not found:
        seen = f" Found only instances without jobs: {', '.join(empty)}." if empty else ""
        raise DiscoveryError(
            f"No Soniq instance with registered jobs in {modules}.{seen} Set SONIQ_JOBS_MODULES "
            "to the module(s) that create your `app = Soniq(...)` and define its "
            "@app.job() functions."
        )
    listed = "; ".join(f"{label} ({len(app.registry)} jobs, {app!r})" for label, app in found)
    raise AmbiguousAppError(
        f"Found {len(found)} Soniq instances with registered jobs in {modules}: {listed}. "
        "A worker runs one instance: point SONIQ_JOBS_MODULES (or --jobs-modules) at the "
        "modules of one of them, and run one worker per instance."
    )


__all__ = [
    "AmbiguousAppError",
    "discover_app",
    "ensure_importable",
    "import_module",
    "parse_modules",
    "summarise_traceback",
]
