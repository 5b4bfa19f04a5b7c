"""app.signing: authenticated encryption, HMAC signatures, key rotation, @app.job(encrypt=True)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from cryptography.fernet import Fernet

from soniq import JobContext, Soniq
from soniq.errors import ConfigurationError, SigningError
from tests.helpers import FAST_SETTINGS

PASSPHRASE = "correct horse battery staple and long enough"
OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()


def signing_app(key: str | None, **settings: Any) -> Soniq:
    return Soniq(backend="memory", signing_key=key, **settings)


async def test_encrypt_round_trip_with_a_fernet_key_and_with_a_passphrase() -> None:
    for key in (NEW, PASSPHRASE):
        app = signing_app(key)
        token = await app.signing.encrypt("4111 1111 1111 1111")
        assert "4111" not in token
        assert await app.signing.decrypt(token) == "4111 1111 1111 1111"
        # Fresh IV each time: equal plaintexts do not give equal tokens.
        assert await app.signing.encrypt("x") != await app.signing.encrypt("x")


async def test_a_tampered_token_raises_signing_error() -> None:
    app = signing_app(NEW)
    token = await app.signing.encrypt("secret")
    flipped = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    with pytest.raises(SigningError, match="failed authentication"):
        await app.signing.decrypt(flipped)
    with pytest.raises(SigningError):
        await app.signing.decrypt("not a token")


async def test_rotation_first_key_encrypts_every_key_decrypts() -> None:
    old_app = signing_app(OLD)
    old_token = await old_app.signing.encrypt("before rotation")
    old_sig = old_app.signing.sign("order=42")

    rotated = signing_app(f"{NEW},{OLD}")
    assert await rotated.signing.decrypt(old_token) == "before rotation"
    assert rotated.signing.verify("order=42", old_sig)
    new_token = await rotated.signing.encrypt("after rotation")
    new_sig = rotated.signing.sign("order=42")
    assert new_sig != old_sig  # signed with the first (new) key

    with pytest.raises(SigningError):  # the old key alone cannot read new tokens
        await old_app.signing.decrypt(new_token)
    assert not old_app.signing.verify("order=42", new_sig)
    dropped = signing_app(NEW)
    with pytest.raises(SigningError):
        await dropped.signing.decrypt(old_token)


def test_sign_and_verify() -> None:
    app = signing_app(PASSPHRASE)
    sig = app.signing.sign("payload")
    assert len(sig) == 64 and app.signing.verify("payload", sig)
    assert app.signing.verify(b"payload", sig)
    assert not app.signing.verify("payload!", sig)
    assert not app.signing.verify("payload", "0" * 64)
    assert not signing_app(NEW).signing.verify("payload", sig)


async def test_missing_and_short_keys_are_clear_configuration_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SONIQ_SIGNING_KEY", raising=False)
    monkeypatch.delenv("SONIQ_SECRET_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="SONIQ_SIGNING_KEY"):
        await signing_app(None).signing.encrypt("x")
    with pytest.raises(ConfigurationError, match="at least 32"):
        signing_app("short").signing.sign("x")


async def test_keys_come_from_the_environment_with_the_published_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SONIQ_SIGNING_KEY", raising=False)
    monkeypatch.setenv("SONIQ_SECRET_KEY", PASSPHRASE)
    token = await Soniq(backend="memory").signing.encrypt("from env")
    monkeypatch.setenv("SONIQ_SIGNING_KEY", f"{NEW},{PASSPHRASE}")
    assert await Soniq(backend="memory").signing.decrypt(token) == "from env"


async def test_two_instances_never_share_keys() -> None:
    a, b = signing_app(OLD), signing_app(NEW)
    with pytest.raises(SigningError):
        await b.signing.decrypt(await a.signing.encrypt("mine"))


async def test_encrypted_job_arguments_are_ciphertext_at_rest(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, signing_key=PASSPHRASE, **FAST_SETTINGS)
    seen: list[tuple[str, int, str]] = []

    @app.job(encrypt=True, unique=True)
    async def charge(card: str, cents: int, ctx: JobContext) -> None:
        seen.append((card, cents, ctx.job_id))

    try:
        job_id = await app.enqueue(charge, card="4111-1111", cents=995)
        conn = await asyncpg.connect(pg_url)
        try:
            stored = await conn.fetchval("SELECT args::text FROM soniq_jobs WHERE id = $1", job_id)
        finally:
            await conn.close()
        assert "4111" not in stored and "995" not in stored
        assert set(json.loads(stored)) == {"__soniq__"}
        # Dedup still works: the key was computed from the plaintext arguments.
        assert await app.enqueue(charge, card="4111-1111", cents=995) == job_id
        record = await app.get_job(job_id)
        assert record is not None and "card" not in record["args"]  # shown as encrypted

        await app.run_worker(run_once=True)
        assert seen == [("4111-1111", 995, job_id)]
    finally:
        await app.close()


async def test_a_worker_without_the_key_fails_the_attempt_instead_of_crashing(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SONIQ_SIGNING_KEY", raising=False)
    monkeypatch.delenv("SONIQ_SECRET_KEY", raising=False)
    producer = Soniq(database_url=pg_url, signing_key=PASSPHRASE, **FAST_SETTINGS)
    worker = Soniq(database_url=pg_url, **FAST_SETTINGS)
    for app in (producer, worker):

        @app.job(name="secret.job", encrypt=app is producer, retries=0)
        async def job(token: str) -> None: ...

    try:
        job_id = await producer.enqueue("secret.job", args={"token": "t"})
        await worker.run_worker(run_once=True)
        dead = await worker.get_job(job_id)
        assert dead is not None and dead["status"] == "dead_letter"
        assert "SONIQ_SIGNING_KEY" in dead["last_error"]
    finally:
        await producer.close()
        await worker.close()


async def test_encrypt_without_a_key_refuses_the_enqueue(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SONIQ_SIGNING_KEY", raising=False)
    monkeypatch.delenv("SONIQ_SECRET_KEY", raising=False)
    app = Soniq(database_url=pg_url, **FAST_SETTINGS)

    @app.job(encrypt=True)
    async def charge(card: str) -> None: ...

    try:
        with pytest.raises(ConfigurationError, match="SONIQ_SIGNING_KEY"):
            await app.enqueue(charge, card="4111")
        assert await app.list_jobs() == []  # never stored in plaintext
    finally:
        await app.close()
