"""Turn an enqueue call (callable | task name | TaskRef, plus options) into a ``NewJob``.

All validation happens here, before anything is written: an enqueue that would
fail on the worker fails at the producer, with a message that says how to fix it.
The one exception is a task name this instance does not know, which the
``enqueue_validation`` setting may let through for services that enqueue jobs
another service runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from soniq.core.registry import JobDefinition, JobRegistry, check_task_name
from soniq.errors import JobValidationError, SerializationError, UnknownTaskError
from soniq.flow import concurrency_key_of
from soniq.job import NewJob
from soniq.serialization import dumps_strict
from soniq.settings import SoniqSettings
from soniq.task_ref import TaskRef
from soniq.utils import canonical_id, utc_now
from soniq.utils import to_utc as aware_utc

MIN_PRIORITY, MAX_PRIORITY = 1, 1000

log = logging.getLogger("soniq.enqueue")


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    priority: int | None = None
    queue: str | None = None
    scheduled_at: datetime | timedelta | float | int | None = None
    unique: bool | None = None
    dedup_key: str | None = None
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Target:
    name: str
    definition: JobDefinition | None
    ref: TaskRef | None


def build_job(
    registry: JobRegistry,
    settings: SoniqSettings,
    target: Any,
    args: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
    options: EnqueueOptions,
    warned: set[str] | None = None,
) -> NewJob:
    """Validate one enqueue and produce the row to insert.

    ``warned`` is the caller's record of unknown task names already logged under
    ``enqueue_validation="warn"`` (one set per ``Soniq`` instance, so the warning
    comes once per name without any module-level state).
    """
    resolved = _resolve(registry, settings, target, args, kwargs, warned)
    return _make_job(resolved, settings, dict(kwargs) if args is None else dict(args), options)


def build_jobs(
    registry: JobRegistry,
    settings: SoniqSettings,
    target: Any,
    items: Iterable[Mapping[str, Any]],
    options: EnqueueOptions,
    warned: set[str] | None = None,
) -> list[NewJob]:
    """``build_job`` for many argument dicts of one target, resolving the target once."""
    resolved = _resolve(registry, settings, target, None, {}, warned)
    jobs = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TypeError(
                f"enqueue_many() takes a list of argument dicts; item {index} is a "
                f"{type(item).__name__}. Pass e.g. [{{'user_id': 1}}, {{'user_id': 2}}]"
            )
        try:
            jobs.append(_make_job(resolved, settings, dict(item), options))
        except JobValidationError as exc:
            # Which row was refused; nothing of the batch is written.
            exc.context["index"] = index
            exc.message = f"Item {index}: {exc.message}"
            raise
    return jobs


def _make_job(
    resolved: _Target, settings: SoniqSettings, job_args: dict[str, Any], options: EnqueueOptions
) -> NewJob:
    if resolved.definition is not None:
        _check_arguments(resolved.definition, job_args)
    if resolved.ref is not None and resolved.ref.args_model is not None:
        _validate_model(resolved.name, resolved.ref.args_model, job_args)
    args_json = _dumps_args(resolved.name, job_args)
    return NewJob(
        id=str(uuid.uuid4()),
        job_name=resolved.name,
        args=job_args,
        args_json=args_json,
        queue=_queue(resolved, options),
        priority=_priority(resolved, settings, options),
        max_attempts=(
            resolved.definition.max_attempts if resolved.definition else settings.max_retries + 1
        ),
        scheduled_at=to_utc(options.scheduled_at),
        dedup_key=_dedup_key(resolved, options, args_json, job_args),
        concurrency_key=_concurrency_key(resolved, job_args),
        depends_on=options.depends_on,
    )


def _concurrency_key(resolved: _Target, job_args: dict[str, Any]) -> str | None:
    definition = resolved.definition
    if definition is None or definition.concurrency_key is None:
        return None
    return concurrency_key_of(definition.name, definition.concurrency_key, job_args)


def dependency_ids(depends_on: Iterable[Any] | None) -> tuple[str, ...]:
    """``depends_on=[...]`` as canonical job ids, each once, in the order given."""
    if depends_on is None:
        return ()
    if isinstance(depends_on, (str, bytes)):
        raise JobValidationError(
            "depends_on takes a list of job ids, not a single string; write depends_on=[job_id]"
        )
    ids: list[str] = []
    for value in depends_on:
        canonical = canonical_id(str(value))
        if canonical is None:
            raise JobValidationError(
                f"depends_on holds {value!r}, which is not a job id; pass the ids enqueue() "
                "returned"
            )
        if canonical not in ids:
            ids.append(canonical)
    return tuple(ids)


def _resolve(
    registry: JobRegistry,
    settings: SoniqSettings,
    target: Any,
    args: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
    warned: set[str] | None,
) -> _Target:
    if isinstance(target, TaskRef):
        _no_kwargs(kwargs, "a TaskRef")
        return _Target(target.name, registry.get(target.name), target)
    if isinstance(target, str):
        _no_kwargs(kwargs, "a task-name string")
        definition = registry.get(target)
        if definition is None:
            # Names registered here were checked (or derived) at registration.
            check_task_name(target, settings.task_name_pattern)
            _unknown_name(registry, settings, target, warned)
        return _Target(target, definition, None)
    if callable(target):
        if args is not None and kwargs:
            raise TypeError(
                "enqueue() got both args= and keyword arguments; for a callable target pass "
                "the function's arguments as keywords only, e.g. enqueue(fn, x=1)"
            )
        definition = registry.for_function(target)
        if definition is None:
            raise UnknownTaskError(
                f"{_describe(target)} is not a registered job of this Soniq instance; "
                "decorate it with @app.job() on the same instance you enqueue with",
                context={"task_name": _describe(target), "mode": settings.enqueue_validation},
            )
        return _Target(definition.name, definition, None)
    raise TypeError(
        f"enqueue() target must be a job function, a task-name string or a TaskRef, "
        f"not {type(target).__name__}"
    )


def _no_kwargs(kwargs: Mapping[str, Any], shape: str) -> None:
    if kwargs:
        names = ", ".join(sorted(kwargs))
        raise TypeError(
            f"enqueue() with {shape} takes the job's arguments in args={{...}}, "
            f"not as keywords (got {names}); keywords would collide with enqueue options"
        )


def _unknown_name(
    registry: JobRegistry, settings: SoniqSettings, name: str, warned: set[str] | None
) -> None:
    """Apply ``enqueue_validation`` to a task name no ``@app.job`` registered here.

    ``strict`` refuses it (a typo caught at the producer); ``warn`` and ``none``
    write the row for a worker elsewhere that has the handler, ``warn`` logging
    once per name so a typo still shows up without flooding the log.
    """
    mode = settings.enqueue_validation
    if mode == "strict":
        raise UnknownTaskError(
            _unknown_task_message(registry, name), context={"task_name": name, "mode": mode}
        )
    if mode == "warn" and (warned is None or name not in warned):
        if warned is not None:
            warned.add(name)
        log.warning(
            "Enqueueing unknown task name %r: no @app.job of this Soniq instance has it, so "
            "a worker elsewhere must have it (enqueue_validation='warn'). If it is a typo, "
            "fix the name; to silence this, set SONIQ_ENQUEUE_VALIDATION=none.",
            name,
        )


def _unknown_task_message(registry: JobRegistry, name: str) -> str:
    known = registry.names()
    hint = f" Registered: {', '.join(known[:10])}." if known else " No jobs are registered."
    return (
        f"Unknown task name {name!r}.{hint} Register it with @app.job(name={name!r}), "
        "import the module that defines it, enqueue through a TaskRef for a task "
        "implemented by another service, or set SONIQ_ENQUEUE_VALIDATION=warn (or none) "
        "on a producer that enqueues other services' tasks by name."
    )


def _describe(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _check_arguments(definition: JobDefinition, job_args: dict[str, Any]) -> None:
    names = definition.arg_names
    if names is not None:
        required, allowed = names
        keys = job_args.keys()
        if required <= keys and (allowed is None or keys <= allowed):
            if definition.args_model is not None:
                _validate_model(definition.name, definition.args_model, job_args)
            return
    try:
        definition.signature.bind(**job_args)
    except TypeError as exc:
        raise JobValidationError(
            f"Arguments {sorted(job_args)} do not fit {definition.name}{definition.signature}: "
            f"{exc}. Pass exactly the handler's parameters.",
            context={"task_name": definition.name, "arguments": sorted(job_args)},
        ) from None
    if definition.args_model is not None:
        _validate_model(definition.name, definition.args_model, job_args)


def _validate_model(name: str, model: type[Any], job_args: dict[str, Any]) -> None:
    try:
        model.model_validate(job_args)
    except Exception as exc:  # noqa: BLE001 - any model error, pydantic or custom
        raise JobValidationError(
            f"Arguments for {name} failed validation against {model.__name__}: {exc}",
            context={"task_name": name, "model": model.__name__},
        ) from None


def _dumps_args(name: str, job_args: dict[str, Any]) -> str:
    try:
        return dumps_strict(job_args)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"Arguments for {name} are not JSON-serialisable ({exc}); pass plain values "
            "(str, int, float, bool, None, lists, dicts) such as ids instead of objects"
        ) from None


def _queue(resolved: _Target, options: EnqueueOptions) -> str:
    """Explicit ``queue=``, then the TaskRef's default, then the registered queue.

    The ref's default wins over a local registration of the same name: the producer
    that wrote the ref routes its own enqueues (the published package's rule).
    """
    if options.queue is not None:
        if not isinstance(options.queue, str) or not options.queue:
            raise JobValidationError("queue= must be a non-empty string")
        return options.queue
    if resolved.ref is not None and resolved.ref.default_queue:
        return resolved.ref.default_queue
    if resolved.definition is not None:
        return resolved.definition.queue
    return "default"


def _priority(resolved: _Target, settings: SoniqSettings, options: EnqueueOptions) -> int:
    priority = options.priority
    if priority is None and resolved.definition is not None:
        priority = resolved.definition.priority
    if priority is None and resolved.ref is not None:
        priority = resolved.ref.default_priority
    if priority is None:
        priority = settings.priority
    check_priority(priority)
    return priority


def check_priority(priority: Any) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise JobValidationError(f"priority must be an int from 1 to 1000, got {priority!r}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise JobValidationError(
            f"priority {priority} is out of range; use 1 (most urgent) to 1000 (least urgent)"
        )


def _dedup_key(
    resolved: _Target, options: EnqueueOptions, args_json: str, job_args: dict[str, Any]
) -> str | None:
    if options.dedup_key is not None:
        return str(options.dedup_key)
    unique = options.unique
    if unique is None:
        unique = resolved.definition.unique if resolved.definition else False
    if not unique:
        return None
    canonical = json.dumps(job_args, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{resolved.name}:{digest}"


def to_utc(value: datetime | timedelta | float | int | None) -> datetime | None:
    """Aware datetimes convert to UTC; naive ones are taken as UTC; numbers and
    ``timedelta`` are an offset from now."""
    if value is None:
        return None
    try:
        if isinstance(value, datetime):
            return aware_utc(value)
        if isinstance(value, timedelta):
            return utc_now() + value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return utc_now() + timedelta(seconds=float(value))
    except (OverflowError, ValueError):  # NaN, or past year 9999 in UTC
        raise JobValidationError(
            f"scheduled_at/run_at {value!r} is not a time that can be stored; pass a datetime "
            "between years 1 and 9999, or a finite number of seconds from now"
        ) from None
    raise JobValidationError(
        "scheduled_at/run_at must be a datetime, a timedelta or seconds from now, got "
        f"{type(value).__name__}"
    )
