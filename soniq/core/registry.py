"""``JobRegistry``: the task names one ``Soniq`` instance knows, and how to call them."""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soniq.errors import JobRegistrationError

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
        }


class JobRegistry:
    """Task name → definition, plus handler → name for enqueue-by-callable.

    Example::

        registry = JobRegistry()
        registry.register(definition)
        registry.get_job("billing.send_invoice")["max_retries"]
    """

    def __init__(self) -> None:
        self._by_name: dict[str, JobDefinition] = {}
        self._by_func: dict[int, JobDefinition] = {}

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
