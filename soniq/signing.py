"""``app.signing``: authenticated encryption and HMAC signatures with rotating keys.

Keys come from ``SONIQ_SIGNING_KEY`` (``signing_key``), or ``SONIQ_SECRET_KEY``
(the published package's name), as a comma-separated list: the first key
encrypts and signs, every key decrypts and verifies, so a key is rotated by
putting the new one first and dropping the old one once its tokens are gone.

A key is either a Fernet key (``Fernet.generate_key()``) or a passphrase of at
least 32 characters, stretched with PBKDF2. Encryption is Fernet (AES-128-CBC
plus HMAC-SHA256, authenticated); signatures are HMAC-SHA256 hex digests under a
key derived separately from each key, so a signature never doubles as a
ciphertext key.

``@app.job(encrypt=True)`` makes the job's arguments ciphertext at rest: the
producer seals them at enqueue, the worker opens them just before the call.
Requires ``pip install soniq[signing]`` (``cryptography``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from soniq.errors import ConfigurationError, MissingExtraError, SigningError
from soniq.events import META_KEY, Subscriber, job_meta
from soniq.job import NewJob
from soniq.serialization import dumps_strict

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

    from soniq.app import Soniq
    from soniq.settings import SoniqSettings

MIN_PASSPHRASE = 32
KDF_ITERATIONS = 200_000
KDF_SALT = b"soniq-signing-v1"
KEY_ENV = "SONIQ_SIGNING_KEY"


def _fernet_module() -> Any:
    try:
        from cryptography import fernet
    except ImportError:  # pragma: no cover - exercised without the extra only
        raise MissingExtraError(
            "app.signing needs the 'cryptography' package; install it with "
            "`pip install soniq[signing]`"
        ) from None
    return fernet


def derive_key(key: str) -> bytes:
    """The 32 raw key bytes of one configured key (a Fernet key, or a long passphrase)."""
    raw = key.strip()
    try:
        decoded = base64.urlsafe_b64decode(raw.encode())
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == 32 and len(raw) == 44:
        return decoded
    if len(raw) < MIN_PASSPHRASE:
        raise ConfigurationError(
            f"A signing key must be a Fernet key or a passphrase of at least {MIN_PASSPHRASE} "
            f"characters (got {len(raw)}); set {KEY_ENV} to a longer secret, e.g. the output of "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())'`"
        )
    return hashlib.pbkdf2_hmac("sha256", raw.encode(), KDF_SALT, KDF_ITERATIONS)


class Signing:
    """Encrypt, decrypt, sign and verify with this instance's keys.

    Example::

        token = await app.signing.encrypt("4111 1111 1111 1111")
        assert await app.signing.decrypt(token) == "4111 1111 1111 1111"
        sig = app.signing.sign("order=42")
        assert app.signing.verify("order=42", sig)
    """

    def __init__(self, settings: SoniqSettings) -> None:
        self._settings = settings
        self._keys: list[bytes] | None = None
        self._fernet: MultiFernet | None = None

    # --- keys -------------------------------------------------------------
    def _configured(self) -> list[str]:
        value = self._settings.signing_key or getattr(self._settings, "secret_key", None)
        keys = [k.strip() for k in (value or "").split(",") if k.strip()]
        if not keys:
            raise ConfigurationError(
                f"No signing key is configured; set {KEY_ENV} (or SONIQ_SECRET_KEY) to a Fernet "
                "key or a passphrase of 32+ characters, or pass Soniq(signing_key=...)"
            )
        return keys

    def keys(self) -> list[bytes]:
        """Raw key bytes, newest first (derived once; the KDF is deliberately slow)."""
        if self._keys is None:
            self._keys = [derive_key(k) for k in self._configured()]
        return self._keys

    def _multi(self) -> MultiFernet:
        if self._fernet is None:
            fernet = _fernet_module()
            self._fernet = fernet.MultiFernet(
                [fernet.Fernet(base64.urlsafe_b64encode(k)) for k in self.keys()]
            )
        return self._fernet

    # --- encryption ---------------------------------------------------------
    def encrypt_sync(self, text: str) -> str:
        return str(self._multi().encrypt(text.encode()).decode())

    def decrypt_sync(self, token: str) -> str:
        fernet = _fernet_module()
        try:
            return str(self._multi().decrypt(token.encode()).decode())
        except (fernet.InvalidToken, UnicodeError, TypeError, ValueError):
            raise SigningError(
                "The token failed authentication: it was altered, truncated, or made with a key "
                f"that is no longer in {KEY_ENV}; keep the old key (after the new one) until its "
                "tokens are gone"
            ) from None

    async def encrypt(self, text: str) -> str:
        """Encrypt ``text``; the token is URL-safe text."""
        return self.encrypt_sync(text)

    async def decrypt(self, token: str) -> str:
        """Decrypt a token made by ``encrypt`` with any configured key; raises ``SigningError``."""
        return self.decrypt_sync(token)

    # --- signatures -----------------------------------------------------------
    def _mac_keys(self) -> list[bytes]:
        return [hashlib.sha256(b"soniq-hmac\0" + k).digest() for k in self.keys()]

    def sign(self, data: str | bytes) -> str:
        """HMAC-SHA256 of ``data`` under the newest key, as hex."""
        return hmac.new(self._mac_keys()[0], _bytes(data), hashlib.sha256).hexdigest()

    def verify(self, data: str | bytes, signature: str) -> bool:
        """True when ``signature`` is ``sign(data)`` under any configured key."""
        body = _bytes(data)
        return any(
            hmac.compare_digest(hmac.new(k, body, hashlib.sha256).hexdigest(), str(signature))
            for k in self._mac_keys()
        )

    # --- job arguments --------------------------------------------------------
    def seal_args(self, args: dict[str, Any]) -> str:
        return self.encrypt_sync(json.dumps(args, separators=(",", ":")))

    def open_args(self, token: str) -> dict[str, Any]:
        value = json.loads(self.decrypt_sync(token))
        if not isinstance(value, dict):
            raise SigningError("sealed job arguments are not an object; re-enqueue the job")
        return value


def _bytes(data: str | bytes) -> bytes:
    return data if isinstance(data, bytes) else str(data).encode()


class SealArguments(Subscriber):
    """Encrypts the arguments of ``@app.job(encrypt=True)`` jobs at enqueue.

    The row keeps only ``{"__soniq__": {"sealed": token}}`` (plus any other
    metadata); the dedup key was computed from the plaintext before this runs.
    A missing key fails the enqueue (``prepare_enqueue`` errors propagate):
    storing the plaintext instead would be the one unforgivable outcome.
    """

    def __init__(self, signing: Signing, tasks: set[str]) -> None:
        self.signing = signing
        self.tasks = tasks

    def wants(self, hook: str) -> bool:
        return bool(self.tasks)

    def prepare_enqueue(self, jobs: list[NewJob]) -> list[NewJob]:
        if not any(j.job_name in self.tasks for j in jobs):
            return jobs
        return [self._seal(j) if j.job_name in self.tasks else j for j in jobs]

    def _seal(self, job: NewJob) -> NewJob:
        plain = {k: v for k, v in job.args.items() if k != META_KEY}
        meta = {**job_meta(job.args), "sealed": self.signing.seal_args(plain)}
        args = {META_KEY: meta}
        return replace(job, args=args, args_json=dumps_strict(args))


def encrypt_task(app: Soniq, task: str) -> None:
    """Mark ``task`` as ``@app.job(encrypt=True)``: its arguments are sealed at enqueue."""
    sealer = app.events.find(SealArguments)
    if sealer is None:
        sealer = app.events.subscribe(SealArguments(app.signing, set()))
    sealer.tasks.add(task)
    app.events.rebuild()


def is_sealed(args: dict[str, Any]) -> bool:
    """True for stored arguments that are ciphertext (``@app.job(encrypt=True)``)."""
    return "sealed" in job_meta(args)
