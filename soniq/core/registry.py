"""``JobRegistry``: the task names one ``Soniq`` instance knows, and how to call them."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import re
import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soniq.errors import InvalidTaskNameError, JobRegistrationError

if TYPE_CHECKING:
    from soniq.flow import Rate

RetryDelay = float | list[float]


@dataclass(frozen=True)
class JobDefinition:
    """Everything the enqueue path and the worker need to know about one handler."""

    name: str
    func: Callable[..., Any]
    is_async: bool
    max_retries: int
    priority: int
    queue: str
    unique: bool = False
    retry_delay: RetryDelay = 0
    retry_backoff: bool = False
    retry_max_delay: float | None = None
    timeout: float | None = None
    args_model: type[Any] | None = None
    context_param: str | None = None
    signature: inspect.Signature = field(default_factory=inspect.Signature)
    # (required, allowed or None for **kwargs) when keyword binding can be checked with
    # set operations; None for signatures only Signature.bind can judge.
    arg_names: tuple[frozenset[str], frozenset[str] | None] | None = None
    periodic: dict[str, Any] | None = None
    # Flow control (soniq/flow.py): limits enforced in the claim, and the snooze cap.
    rate_limit: Rate | None = None
    concurrency_key: Callable[[dict[str, Any]], Any] | None = None
    max_concurrency_per_key: int | None = None
    max_snoozes: int = 100
    # The published package's extras: jitter on backoff delays, and any other
    # @app.job(key=value) a custom retry policy reads back from its job_meta.
    retry_jitter: bool = False
    custom: Mapping[str, Any] = field(default_factory=dict)

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def as_dict(self) -> dict[str, Any]:
        """The documented dict shape of ``registry.get_job(name)``."""
        return {
            "name": self.name,
            "func": self.func,
            "max_retries": self.max_retries,
            "retries": self.max_retries,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "queue": self.queue,
            "unique": self.unique,
            "retry_delay": self.retry_delay,
            "retry_backoff": self.retry_backoff,
            "retry_max_delay": self.retry_max_delay,
            "timeout": self.timeout,
            "args_model": self.args_model,
            "is_async": self.is_async,
            "rate_limit": str(self.rate_limit) if self.rate_limit is not None else None,
            "max_concurrency_per_key": self.max_concurrency_per_key,
            "max_snoozes": self.max_snoozes,
            "retry_jitter": self.retry_jitter,
            **{k: v for k, v in self.custom.items() if k not in _STANDARD_KEYS},
        }


_STANDARD_KEYS = frozenset(
    ("name", "func", "max_retries", "retries", "max_attempts", "priority", "queue", "unique",
     "retry_delay", "retry_backoff", "retry_max_delay", "timeout", "args_model", "is_async",
     "rate_limit", "max_concurrency_per_key", "max_snoozes", "retry_jitter")
)  # fmt: skip
# Spellings of @app.job options a custom key must not resemble: `retires=3` is a typo to
# report, not a custom setting to keep.
_KNOWN_OPTIONS = (
    *_STANDARD_KEYS, "validate", "encrypt", "concurrency_key", "cron", "every", "timezone",
    "args",
)  # fmt: skip


class JobRegistry:
    """Task name → definition, plus handler → name for enqueue-by-callable.

    Example::

        registry = JobRegistry()
        registry.register(definition)
        registry.get_job("billing.send_invoice")["max_retries"]
    """

    def __init__(self, task_name_pattern: str | None = None) -> None:
        self._by_name: dict[str, JobDefinition] = {}
        self._by_func: dict[int, JobDefinition] = {}
        self.task_name_pattern = task_name_pattern or DEFAULT_PATTERN

    def register(self, definition: JobDefinition) -> None:
        existing = self._by_name.get(definition.name)
        if existing is not None and not _same_function(existing.func, definition.func):
            raise JobRegistrationError(
                f"Task name {definition.name!r} is already registered to "
                f"{_describe(existing.func)}; pick another name with @app.job(name=...)."
            )
        if existing is not None:
            self._by_func.pop(id(existing.func), None)
        self._by_name[definition.name] = definition
        self._by_func[id(definition.func)] = definition

    def get(self, name: str) -> JobDefinition | None:
        return self._by_name.get(name)

    def get_job(self, name: str) -> dict[str, Any] | None:
        definition = self._by_name.get(name)
        return definition.as_dict() if definition else None

    def for_function(self, func: Callable[..., Any]) -> JobDefinition | None:
        definition = self._by_func.get(id(func))
        return definition if definition is not None and definition.func is func else None

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def definitions(self) -> list[JobDefinition]:
        return [self._by_name[n] for n in sorted(self._by_name)]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    # --- the published package's registry API ---------------------------------------
    def register_job(
        self, func: Callable[..., Any], *, name: str | None = None, retries: int = 3,
        max_retries: int | None = None, args_model: type[Any] | None = None,
        validate: type[Any] | None = None, priority: int = 100, queue: str = "default",
        unique: bool = False, retry_delay: float | list[float] = 0, retry_backoff: bool = False,
        retry_max_delay: float | None = None, retry_jitter: bool = False,
        timeout: float | None = None, **custom: Any,
    ) -> Callable[..., Any]:  # fmt: skip
        """Register ``func`` without a ``Soniq`` instance; returns ``func`` (now tagged).

        ``max_retries`` wins over ``retries``; any other keyword is kept in the job's
        config (``get_job(name)[key]``) for custom retry policies. Example::

            registry.register_job(send_invoice, name="billing.send_invoice", retries=5)
        """
        definition = define_job(
            func, name=name, max_retries=retries if max_retries is None else max_retries,
            priority=priority, queue=queue, unique=unique, retry_delay=retry_delay,
            retry_backoff=retry_backoff, retry_max_delay=retry_max_delay, timeout=timeout,
            args_model=validate if validate is not None else args_model,
            retry_jitter=retry_jitter, custom=custom, pattern=self.task_name_pattern,
        )  # fmt: skip
        self.register(definition)
        tag_function(func, definition)
        return func

    def list_jobs(self) -> dict[str, dict[str, Any]]:
        """Every registered job's config by name (a copy: changing it changes nothing)."""
        return {name: self._by_name[name].as_dict() for name in self.names()}

    def remove_job(self, name: str) -> bool:
        """Forget ``name``; ``False`` if it was not registered."""
        definition = self._by_name.pop(name, None)
        if definition is None:
            return False
        if self._by_func.get(id(definition.func)) is definition:
            del self._by_func[id(definition.func)]
        return True

    def clear(self) -> None:
        """Forget every job (a test's fresh start)."""
        self._by_name.clear()
        self._by_func.clear()


class _DefaultQueue(str):
    """``"default"``, but recognisably the unset default (``queue is DEFAULT_QUEUE``), so a
    job registered without ``queue=`` can be routed by ``route_map`` while the documented
    signature still reads ``queue="default"``."""


DEFAULT_QUEUE = _DefaultQueue("default")

DEFAULT_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
"""The default ``task_name_pattern`` (``soniq.settings.DEFAULT_TASK_NAME_PATTERN``)."""


def check_task_name(name: Any, pattern: str | None = None) -> str:
    """``name`` if it is a string that fully matches ``pattern``; else ``InvalidTaskNameError``.

    Applies to names people write down (``name=``, ``task_ref``, string targets):
    they cross service boundaries, where a stray capital or dash is a silent mismatch.
    Derived ``module.qualname`` names are never checked.
    """
    pattern = pattern or DEFAULT_PATTERN
    if isinstance(name, str) and name and re.fullmatch(pattern, name):
        return name
    shown = name if isinstance(name, str) else f"{name!r} ({type(name).__name__})"
    raise InvalidTaskNameError(
        f"Invalid task name {shown!r}: task names must match {pattern} (dotted lowercase "
        "words, e.g. 'billing.send_invoice'). Rename it, or set SONIQ_TASK_NAME_PATTERN "
        "(task_name_pattern) to a pattern your names follow.",
        context={"name": name, "pattern": pattern},
    )


def define_job(
    func: Callable[..., Any], *, name: str | None, max_retries: int, priority: int,
    queue: str, unique: bool = False, retry_delay: float | list[float] = 0,
    retry_backoff: bool = False, retry_max_delay: float | None = None,
    timeout: float | None = None, args_model: type[Any] | None = None,
    retry_jitter: bool = False, custom: Mapping[str, Any] | None = None,
    pattern: str | None = None,
) -> JobDefinition:  # fmt: skip
    """Check the options of one handler and describe it: what ``@app.job`` registers."""
    from soniq.job import JobContext

    if not callable(func):
        raise JobRegistrationError(f"@app.job() decorates functions, not {func!r}")
    check_job_options(max_retries, priority, queue, retry_delay, retry_max_delay, timeout)
    _check_custom(custom or {})
    context_param = find_context_param(func, JobContext)
    signature = handler_signature(func, context_param)
    return JobDefinition(
        name=default_task_name(func) if name is None else check_task_name(name, pattern),
        func=func,
        is_async=inspect.iscoroutinefunction(func),
        max_retries=max_retries,
        priority=priority,
        queue=str(queue),  # a plain str, also for the DEFAULT_QUEUE marker
        unique=unique,
        retry_delay=list(retry_delay) if isinstance(retry_delay, (list, tuple)) else retry_delay,
        retry_backoff=retry_backoff,
        retry_max_delay=retry_max_delay,
        timeout=timeout,
        args_model=args_model,
        context_param=context_param,
        signature=signature,
        arg_names=argument_names(signature),
        retry_jitter=bool(retry_jitter),
        custom=dict(custom or {}),
    )


def check_job_options(
    retries: int | None, priority: int | None, queue: str, retry_delay: Any,
    retry_max_delay: float | None, timeout: float | None,
) -> None:  # fmt: skip
    if retries is not None and (not isinstance(retries, int) or retries < 0):
        raise JobRegistrationError(f"retries must be an int >= 0, got {retries!r}")
    if priority is not None:
        from soniq.enqueue import check_priority  # enqueue imports this module

        try:
            check_priority(priority)
        except ValueError as exc:
            raise JobRegistrationError(getattr(exc, "message", str(exc))) from None
    if not isinstance(queue, str) or not queue:
        raise JobRegistrationError(f"queue must be a non-empty string, got {queue!r}")
    delays = retry_delay if isinstance(retry_delay, (list, tuple)) else [retry_delay]
    if not all(isinstance(d, (int, float)) and d >= 0 for d in delays):
        raise JobRegistrationError(
            f"retry_delay must be seconds >= 0 or a list of them, got {retry_delay!r}"
        )
    for label, value in (("retry_max_delay", retry_max_delay), ("timeout", timeout)):
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise JobRegistrationError(f"{label} must be seconds >= 0, got {value!r}")


def _check_custom(custom: Mapping[str, Any]) -> None:
    for key in custom:
        close = difflib.get_close_matches(key, _KNOWN_OPTIONS, n=1, cutoff=0.8)
        if close:
            raise JobRegistrationError(
                f"@app.job() got {key}=, which looks like a misspelled {close[0]}=; fix the "
                "spelling (other custom keys are kept in the job's config for retry policies)",
                context={"key": key, "meant": close[0]},
            )


def route_queue(name: str, route_map: Mapping[str, str]) -> str:
    """The queue of a job registered without ``queue=``: its longest matching name prefix."""
    best = ""
    for prefix in route_map:
        if name.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return route_map[best] if best else "default"


def tag_function(func: Callable[..., Any], definition: JobDefinition) -> None:
    """``func._soniq_name`` / ``func._soniq_config``, as the published decorator sets them.

    Set on the function itself (we return it unwrapped, so calling it directly in a
    test stays a plain call). Callables that refuse attributes are left alone.
    """
    with contextlib.suppress(AttributeError, TypeError):
        func._soniq_name = definition.name  # type: ignore[attr-defined]
        func._soniq_config = definition.as_dict()  # type: ignore[attr-defined]


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """Re-registering the same code (a module imported twice, a reload) is not a clash."""
    return a is b or _describe(a) == _describe(b)


def _describe(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)!s}"


def default_task_name(func: Callable[..., Any]) -> str:
    """``f"{module}.{qualname}"``; a script run as ``__main__`` uses its importable name.

    ``python jobs.py`` runs the module as ``__main__`` while the worker imports
    it as ``jobs``; both must derive the same task name.
    """
    module = getattr(func, "__module__", None) or "__main__"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", "job")
    if module == "__main__":
        module = _main_module_name()
    return f"{module}.{qualname}"


def _main_module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None):
        name = str(spec.name)
        return name[: -len(".__main__")] if name.endswith(".__main__") else name
    path = getattr(main, "__file__", None)
    return Path(path).stem if path else "__main__"


def find_context_param(func: Callable[..., Any], context_type: type[Any]) -> str | None:
    """The parameter annotated ``JobContext``, resolving string annotations properly."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable names: fall back to the raw strings
        hints = {}
    for pname, param in inspect.signature(func).parameters.items():
        hint = hints.get(pname, param.annotation)
        if hint is context_type or _is_optional_of(hint, context_type):
            return pname
        if isinstance(hint, str) and hint.replace("soniq.job.", "").replace("soniq.", "").strip(
            "'\""
        ) in ("JobContext", "JobContext | None", "Optional[JobContext]"):
            return pname
    return None


def _is_optional_of(hint: Any, context_type: type[Any]) -> bool:
    return context_type in getattr(hint, "__args__", ())


def handler_signature(func: Callable[..., Any], context_param: str | None) -> inspect.Signature:
    """The handler's signature without the injected context, for binding enqueue arguments."""
    sig = inspect.signature(func)
    if context_param is None:
        return sig
    params = [p for n, p in sig.parameters.items() if n != context_param]
    return sig.replace(parameters=params)


def argument_names(sig: inspect.Signature) -> tuple[frozenset[str], frozenset[str] | None] | None:
    """Required and allowed keyword names, so enqueue can check arguments without ``bind``."""
    required: set[str] = set()
    allowed: set[str] | None = set()
    for name, param in sig.parameters.items():
        if param.kind == param.VAR_KEYWORD:
            allowed = None
        elif param.kind == param.VAR_POSITIONAL:
            continue
        elif param.kind == param.POSITIONAL_ONLY:
            return None
        else:
            if param.default is param.empty:
                required.add(name)
            if allowed is not None:
                allowed.add(name)
    return frozenset(required), (frozenset(allowed) if allowed is not None else None)
