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
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from soniq.core.registry import JobDefinition, JobRegistry, check_task_name
from soniq.errors import EnqueueError, JobValidationError, SerializationError, UnknownTaskError
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


def job_chunks(
    registry: JobRegistry,
    settings: SoniqSettings,
    target: Any,
    rows: Sequence[Mapping[str, Any]],
    options: EnqueueOptions,
    warned: set[str] | None,
    size: int,
) -> Iterator[list[NewJob]]:
    """``build_job`` for many argument dicts of one target, ``size`` rows at a time,
    built only when asked for.

    Every row of a batch shares its target and options, so queue, priority, attempts
    and run time are worked out once, before the first chunk; each row then costs its
    argument checks, its JSON and its id. Errors are those of ``build_job``, raised
    when the refused row's chunk is built, with its index in the whole batch. A backend
    that streams the chunks into one statement (PostgreSQL's COPY) inserts one chunk
    while the next is built.
    """
    resolved = _resolve(registry, settings, target, None, {}, warned)
    try:
        shared = _Shared.of(resolved, settings, options)
    except Exception:  # noqa: BLE001 - re-raised row by row
        # A bad option: row by row, so the error names the row it always named.
        yield _build_rows(resolved, settings, rows, options)
        return
    ids = new_job_ids(len(rows))  # one sorted run for the batch, as new_job_ids says
    for start in range(0, len(rows), size):
        yield shared.rows(rows, ids, start, start + size)


@dataclass(slots=True)
class _Shared:
    """What every row of one ``enqueue_many`` has in common, and the per-row rest.

    ``job`` runs the checks of ``_make_job`` in the same order with the same errors.
    """

    name: str
    definition: JobDefinition | None
    required: frozenset[str]
    allowed: frozenset[str] | None
    model: type[Any] | None
    queue: str
    priority: int
    max_attempts: int
    scheduled_at: datetime | None
    unique: bool
    fixed_key: str | None
    key_fn: Callable[[dict[str, Any]], Any] | None
    depends_on: tuple[str, ...]
    plain: bool = False  # no model, no key to compute: a row is its JSON and an id

    @classmethod
    def of(cls, resolved: _Target, settings: SoniqSettings, options: EnqueueOptions) -> _Shared:
        queue = _queue(resolved, options)
        priority = _priority(resolved, settings, options)
        scheduled_at = to_utc(options.scheduled_at)
        definition = resolved.definition
        unique = options.unique
        if unique is None:
            unique = definition.unique if definition else False
        names = definition.arg_names if definition is not None else None
        required, allowed = names or (frozenset(), None)
        model = resolved.ref.args_model if resolved.ref is not None else None
        key_fn = definition.concurrency_key if definition is not None else None
        plain = not unique and options.dedup_key is None and model is None and key_fn is None
        if definition is not None:
            plain = plain and names is not None and definition.args_model is None
        return cls(
            name=resolved.name, definition=definition, required=required,
            allowed=allowed, model=model, queue=queue, priority=priority,
            max_attempts=definition.max_attempts if definition else settings.max_retries + 1,
            scheduled_at=scheduled_at, unique=bool(unique),
            fixed_key=None if options.dedup_key is None else str(options.dedup_key),
            key_fn=key_fn, depends_on=options.depends_on, plain=plain,
        )  # fmt: skip

    def rows(
        self, items: Sequence[Any], batch_ids: list[str], start: int, stop: int
    ) -> list[NewJob]:
        """Rows ``start:stop`` of the batch; a refused row's error gives its batch index."""
        chunk, ids = items[start:stop], batch_ids[start:stop]
        if not self.plain:
            return [self.row(start + k, item, ids[k]) for k, item in enumerate(chunk)]
        # The common case, inline: a dict with the handler's parameters.
        name, required, allowed = self.name, self.required, self.allowed
        queue, priority, max_attempts = self.queue, self.priority, self.max_attempts
        scheduled_at, depends_on = self.scheduled_at, self.depends_on
        jobs = []
        for k, item in enumerate(chunk):
            if (
                type(item) is dict
                and required <= (keys := item.keys())
                and (allowed is None or keys <= allowed)
            ):
                job_args = item.copy()
                try:
                    args_json = _dumps_args(name, job_args)
                except EnqueueError as exc:
                    _at_row(exc, start + k)
                    raise
                jobs.append(NewJob(
                    ids[k], name, job_args, args_json, queue, priority, max_attempts,
                    scheduled_at, None, None, depends_on,
                ))  # fmt: skip
                continue
            jobs.append(self.row(start + k, item, ids[k]))
        return jobs

    def row(self, index: int, item: Any, job_id: str) -> NewJob:
        """Row ``index`` of the batch, checked; a refused row's error says which it was."""
        if type(item) is dict:
            job_args = item.copy()
        elif isinstance(item, Mapping):
            job_args = dict(item)
        else:
            _not_a_mapping(index, item)
        try:
            return self.job(job_id, job_args)
        except EnqueueError as exc:
            _at_row(exc, index)
            raise

    def job(self, job_id: str, job_args: dict[str, Any]) -> NewJob:
        name, definition = self.name, self.definition
        if definition is not None:
            _check_arguments(definition, job_args)
        if self.model is not None:
            _validate_model(name, self.model, job_args)
        args_json = _dumps_args(name, job_args)
        dedup_key = self.fixed_key
        if dedup_key is None and self.unique:
            dedup_key = _unique_key(name, job_args)
        key_fn = self.key_fn
        concurrency_key = None if key_fn is None else concurrency_key_of(name, key_fn, job_args)
        return NewJob(
            job_id, name, job_args, args_json, self.queue, self.priority, self.max_attempts,
            self.scheduled_at, dedup_key, concurrency_key, self.depends_on,
        )  # fmt: skip


def _build_rows(
    resolved: _Target,
    settings: SoniqSettings,
    rows: Sequence[Mapping[str, Any]],
    options: EnqueueOptions,
) -> list[NewJob]:
    """Every row through ``_make_job`` (the path a batch with a bad option takes)."""
    jobs = []
    for index, item in enumerate(rows):
        if not isinstance(item, Mapping):
            _not_a_mapping(index, item)
        try:
            jobs.append(_make_job(resolved, settings, dict(item), options))
        except EnqueueError as exc:
            _at_row(exc, index)
            raise
    return jobs


def _not_a_mapping(index: int, item: Any) -> NoReturn:
    raise TypeError(
        f"enqueue_many() takes a list of argument dicts; item {index} is a "
        f"{type(item).__name__}. Pass e.g. [{{'user_id': 1}}, {{'user_id': 2}}]"
    )


def _at_row(exc: EnqueueError, index: int) -> None:
    """Which row was refused (its arguments, options or JSON); nothing of the batch is
    written."""
    exc.context["index"] = index
    exc.message = f"Item {index}: {exc.message}"


def _make_job(
    resolved: _Target, settings: SoniqSettings, job_args: dict[str, Any], options: EnqueueOptions
) -> NewJob:
    """One job: the rules of ``_Shared.job``. A job whose arguments and options are both
    wrong is refused for its arguments, checked first as they always were."""
    try:
        shared = _Shared.of(resolved, settings, options)
    except Exception:
        if resolved.definition is not None:
            _check_arguments(resolved.definition, job_args)
        if resolved.ref is not None and resolved.ref.args_model is not None:
            _validate_model(resolved.name, resolved.ref.args_model, job_args)
        _dumps_args(resolved.name, job_args)
        raise
    return shared.job(new_job_ids(1)[0], job_args)


def new_job_ids(n: int) -> list[str]:
    """``n`` fresh job ids (canonical lower-case UUID text), in increasing order.

    UUIDv7-shaped (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits. Ids
    of one millisecond sort together, and a batch's are sorted, so inserts land at the
    right edge of every index keyed on id (the primary key, the dashboard's
    (created_at, id) indexes) instead of on random pages; the random part keeps ids
    unguessable from one another, with no counter shared between instances.
    """
    stamp = f"{time.time_ns() // 1_000_000:012x}"
    head = f"{stamp[:8]}-{stamp[8:12]}-7"
    bits = os.urandom(10 * n).hex()
    ids = [
        f"{head}{r[:3]}-{_VARIANT[int(r[3], 16) & 3]}{r[4:7]}-{r[7:19]}"
        for r in (bits[k : k + 20] for k in range(0, 20 * n, 20))
    ]
    ids.sort()
    return ids


_VARIANT = "89ab"  # the RFC variant's two bits, then two random ones


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


_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _unique_key(name: str, job_args: dict[str, Any]) -> str:
    """``unique=True``: the task name and a digest of its arguments, in key order."""
    digest = hashlib.sha256(_SORTED.encode(job_args).encode()).hexdigest()
    return f"{name}:{digest}"


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
