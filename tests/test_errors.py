"""The error model: one base class, stable codes, the published framed ``str()``, and the
codes at the places that raise them (COMPAT.md §2)."""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import soniq.errors as errors
from soniq import Soniq, task_ref
from soniq.errors import (
    SONIQ_INVALID_TASK_NAME,
    SONIQ_TASK_ARGS_INVALID,
    SONIQ_UNKNOWN_TASK_NAME,
    AmbiguousAppError,
    AppFrozenError,
    DiscoveryError,
    InvalidTaskNameError,
    JobValidationError,
    MigrationError,
    SoniqError,
    UnknownTaskError,
)
from soniq.settings import SoniqSettings, worker_pool_size
from tests.test_cli import cli_env

ERROR_CLASSES = [
    obj
    for obj in vars(errors).values()
    if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
]


def test_every_error_class_is_a_soniq_error_with_its_own_stable_code() -> None:
    assert len(ERROR_CLASSES) >= 20
    codes: dict[str, type[BaseException]] = {}
    for cls in ERROR_CLASSES:
        assert issubclass(cls, SoniqError), cls
        code = cls.error_code
        assert isinstance(code, str) and code.isupper() and code, cls
        if cls is not errors.ConfigurationTypeError:  # a TypeError flavour of its parent
            assert code not in codes, f"{cls.__name__} repeats {codes.get(code)}'s code"
        codes[code] = cls


@pytest.mark.parametrize("cls", [c for c in ERROR_CLASSES if c is not MigrationError])
def test_each_class_takes_just_a_message(cls: type[SoniqError]) -> None:
    err = cls("it broke; fix it like this")
    assert err.message == "it broke; fix it like this"
    assert err.error_code == cls.error_code
    assert (err.context, err.suggestions, err.documentation_url) == ({}, [], None)
    assert str(err) == f"Soniq Error [{cls.error_code}]: it broke; fix it like this"


def test_constants_equal_their_names() -> None:
    for name in (
        "SONIQ_UNKNOWN_TASK_NAME", "SONIQ_INVALID_TASK_NAME", "SONIQ_TASK_ARGS_INVALID",
        "SONIQ_PLUGIN_DUPLICATE", "SONIQ_POOL_TOO_SMALL", "SONIQ_INIT_ERROR", "SONIQ_APP_CLOSED",
        "SONIQ_APP_FROZEN",
    ):  # fmt: skip
        assert getattr(errors, name) == name


def test_published_constructor_and_framed_str() -> None:
    err = SoniqError(
        "Something failed.",
        "MY_CODE",
        context={"task_name": "a.b", "mode": "strict"},
        suggestions=["Do this.", "Or that."],
        documentation_url="https://example.com/errors",
    )
    assert (err.message, err.error_code) == ("Something failed.", "MY_CODE")
    assert str(err) == (
        "Soniq Error [MY_CODE]: Something failed.\n\n"
        "Context:\n  task_name: a.b\n  mode: strict\n\n"
        "Suggestions:\n  - Do this.\n  - Or that.\n\n"
        "Documentation: https://example.com/errors"
    )
    assert err.describe() == "Something failed.\n  - Do this.\n  - Or that."
    assert errors.describe_error(err) == "SoniqError: Something failed."


def test_errors_pickle_with_their_state() -> None:
    err = UnknownTaskError("Unknown task.", context={"task_name": "x"}, suggestions=["fix"])
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is UnknownTaskError and isinstance(back, LookupError)
    assert (back.message, back.error_code, back.context, back.suggestions) == (
        "Unknown task.", SONIQ_UNKNOWN_TASK_NAME, {"task_name": "x"}, ["fix"],
    )  # fmt: skip


def test_migration_error_published_signature() -> None:
    err = MigrationError("0001_core", "relation exists", {"database": "app"})
    assert err.error_code == "MIGRATION_FAILED"
    assert err.message == "Migration 0001_core failed: relation exists"
    assert err.context == {
        "migration_step": "0001_core", "reason": "relation exists", "database": "app",
    }  # fmt: skip
    assert MigrationError("whole message").message == "whole message"


def test_ambiguous_app_error_is_also_a_runtime_error() -> None:
    from soniq.discovery import AmbiguousAppError as from_discovery

    assert from_discovery is AmbiguousAppError
    assert issubclass(AmbiguousAppError, DiscoveryError) and issubclass(
        AmbiguousAppError, RuntimeError
    )


# --- the codes where they are raised ------------------------------------------------------
async def test_unknown_task_name_code_and_context() -> None:
    app = Soniq(backend="memory")
    with pytest.raises(SoniqError) as info:
        await app.enqueue("billing.nobody_has_this", args={})
    err = info.value
    assert err.error_code == SONIQ_UNKNOWN_TASK_NAME
    assert err.context == {"task_name": "billing.nobody_has_this", "mode": "strict"}
    assert "billing.nobody_has_this" in err.message
    with pytest.raises(UnknownTaskError) as info:
        await app.enqueue_many("billing.nobody_has_this", [{}])
    assert info.value.error_code == SONIQ_UNKNOWN_TASK_NAME
    await app.close()


@pytest.mark.parametrize("name", ["Billing.Send", "billing-send", "billing..send", "", "1abc"])
async def test_invalid_task_name_everywhere_a_name_is_written(name: str) -> None:
    app = Soniq(backend="memory")
    with pytest.raises(InvalidTaskNameError) as info:
        app.job(name=name)(_handler)
    assert info.value.error_code == SONIQ_INVALID_TASK_NAME
    assert info.value.context == {"name": name, "pattern": app.settings.task_name_pattern}
    with pytest.raises(InvalidTaskNameError):
        task_ref(name)
    with pytest.raises(InvalidTaskNameError):
        task_ref(name=name)
    with pytest.raises(InvalidTaskNameError):
        app.registry.register_job(_handler, name=name)
    for mode in ("strict", "none"):  # the pattern applies whatever enqueue_validation says
        producer = Soniq(backend="memory", enqueue_validation=mode)
        with pytest.raises(InvalidTaskNameError):
            await producer.enqueue(name, args={})
        with pytest.raises(InvalidTaskNameError):
            await producer.enqueue_many(name, [{}])
        with pytest.raises(InvalidTaskNameError):
            await producer.scheduler.add(name, every=60)
        await producer.close()
    await app.close()


async def test_task_name_pattern_setting_and_derived_names_are_exempt() -> None:
    app = Soniq(backend="memory", task_name_pattern=r"^[A-Z][A-Za-z.]*$")

    @app.job(name="Billing.Send")
    async def send() -> None: ...

    @app.job()  # derived module.qualname names are never judged
    async def derived_one() -> None: ...

    assert "Billing.Send" in app.registry
    with pytest.raises(InvalidTaskNameError):
        app.job(name="billing.send")(_handler)
    assert task_ref("Other.Name", pattern=r"^[A-Z].*$").name == "Other.Name"
    await app.close()


class _Order(BaseModel):
    order_id: int


async def test_task_args_invalid_code_with_index_in_enqueue_many() -> None:
    app = Soniq(backend="memory")

    @app.job(name="billing.charge", validate=_Order)
    async def charge(order_id: int) -> None: ...

    with pytest.raises(JobValidationError) as info:
        await app.enqueue(charge, order_id="not a number")
    assert info.value.error_code == SONIQ_TASK_ARGS_INVALID
    with pytest.raises(JobValidationError) as info:
        await app.enqueue(charge, wrong=1)  # our stricter check: arguments bind at enqueue
    assert info.value.error_code == SONIQ_TASK_ARGS_INVALID
    ref = task_ref("billing.charge_elsewhere", _Order)
    with pytest.raises(JobValidationError) as info:
        await app.enqueue(ref, args={"order_id": "x"})
    assert info.value.error_code == SONIQ_TASK_ARGS_INVALID
    with pytest.raises(JobValidationError) as info:
        await app.enqueue_many(charge, [{"order_id": 1}, {"order_id": 2}, {"order_id": "x"}])
    assert info.value.context["index"] == 2 and info.value.message.startswith("Item 2:")
    assert await app.list_jobs() == []  # nothing of the batch was written
    with pytest.raises(TypeError, match="list of argument dicts"):
        await app.enqueue_many(charge, [{"order_id": 1}, ("order_id", 2)])  # type: ignore[list-item]
    await app.close()


def test_pool_too_small_quotes_the_published_words() -> None:
    settings = SoniqSettings(pool_max_size=10, pool_headroom=2)
    with pytest.raises(SoniqError) as info:
        worker_pool_size(settings, 9)
    err = info.value
    assert err.error_code == errors.SONIQ_POOL_TOO_SMALL
    assert err.message.startswith(
        "Connection pool too small: worker concurrency (9) plus reserved headroom (2) requires 11"
    )
    assert err.context["required"] == 11


async def test_frozen_after_initialisation() -> None:
    app = Soniq(backend="memory")
    app.retry_policy = None  # fine before first use
    await app.ensure_initialized()
    with pytest.raises(AppFrozenError) as info:
        app.retry_policy = None
    assert info.value.error_code == "SONIQ_APP_FROZEN"
    with pytest.raises(AppFrozenError):
        app.metrics_sink = None
    await app.close()


async def test_database_unavailable_carries_the_init_code(tmp_path: Path) -> None:
    app = Soniq(database_url="postgresql://nobody@127.0.0.1:1/nothing", pool_min_size=1)
    with pytest.raises(SoniqError) as info:
        await app.ensure_initialized()
    assert info.value.error_code == errors.SONIQ_INIT_ERROR
    await app.close()


def test_the_cli_prints_message_and_suggestions_not_the_frame(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "soniq", "worker", "--run-once"],
        env=cli_env("postgresql://nobody@127.0.0.1:1/nothing"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "SONIQ_JOBS_MODULES is not set" in result.stderr
    assert "Soniq Error [" not in result.stderr and "Traceback" not in result.stderr


def _handler(**_: Any) -> None: ...
