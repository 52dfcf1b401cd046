"""API keys for the serving endpoints: created once, stored as SHA-256 hashes, revocable.

A key looks like ``lml_<key_id>_<secret part>``. ``key_id`` (16 hex characters) is public: it names the key in
listings and in the invocation log. The whole key is shown once, by :func:`create_key`; the database keeps only its
SHA-256 hash, so a lost key cannot be recovered, only revoked and replaced.

Each key has **rights** (``invoke``, ``feedback``, ``hooks``: Label Studio's webhook, ``admin``: everything,
BentoML's ``/metrics`` included) and a **scope** of functions (``*``: all of them); the serving API checks both on
every route (:class:`KeyGrant`). ``loopml keys create NAME`` gives ``invoke,feedback`` on every function unless
told otherwise (``--rights``, ``--functions``).

:func:`verify` is called on every request. It caches its answers (keyed by the hash, never the key) for at
most ``ttl_s`` seconds (default 1 s), so a revocation takes effect in every serving process within about a
second, and at once in the process that revoked the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from loopml.config import Settings
from loopml.db import ApiKeyRow, as_utc, session_factory, utcnow

__all__ = [
    "KEY_PREFIX",
    "ApiKeyError",
    "ApiKeyInfo",
    "ApiKeyVerifier",
    "KeyGrant",
    "RIGHTS",
    "create_key",
    "hash_secret",
    "key_id_of",
    "list_keys",
    "revoke_key",
    "verifier_for",
    "verify",
]

KEY_PREFIX = "lml"
MAX_NAME_LENGTH = 128
_KEY_PATTERN = re.compile(r"^lml_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")


RIGHTS = ("invoke", "feedback", "hooks", "admin")
DEFAULT_RIGHTS = ("invoke", "feedback")
ALL_FUNCTIONS = "*"


class ApiKeyError(ValueError):
    """An impossible API key action (unknown key, bad name); the message says what to do."""


@dataclass(frozen=True)
class KeyGrant:
    """What a valid key may do: its ``rights`` on its ``functions`` (None: every function). ``admin`` is every
    right on the key's functions and the routes that belong to no function."""

    key_id: str
    rights: frozenset[str]
    functions: frozenset[str] | None

    def allows(self, right: str, function: str | None = None) -> bool:
        if right not in self.rights and "admin" not in self.rights:
            return False
        return function is None or self.functions is None or function in self.functions

    def sees(self, function: str) -> bool:
        return self.functions is None or function in self.functions

    def describe(self) -> str:
        scope = "every function" if self.functions is None else ", ".join(sorted(self.functions))
        return f"{','.join(r for r in RIGHTS if r in self.rights)} on {scope}"


def _grant(key_id: str, rights: str, functions: str) -> KeyGrant:
    names = {f.strip() for f in functions.split(",") if f.strip()}
    return KeyGrant(
        key_id,
        frozenset(r.strip() for r in rights.split(",") if r.strip()),
        None if ALL_FUNCTIONS in names else frozenset(names),
    )


def _checked_rights(rights: tuple[str, ...] | list[str]) -> str:
    unknown = sorted(set(rights) - set(RIGHTS))
    if unknown or not rights:
        raise ApiKeyError(f"unknown rights {unknown}: give one or more of {', '.join(RIGHTS)}")
    return ",".join(r for r in RIGHTS if r in rights)


def _checked_functions(functions: tuple[str, ...] | list[str] | None) -> str:
    if not functions or ALL_FUNCTIONS in functions:
        return ALL_FUNCTIONS
    from loopml.functions import NAME_PATTERN

    bad = sorted(f for f in functions if not NAME_PATTERN.match(f))
    if bad:
        raise ApiKeyError(f"{bad} are not function names (lower-case letters, digits and hyphens)")
    return ",".join(sorted(set(functions)))


@dataclass(frozen=True)
class ApiKeyInfo:
    """What a listing shows of a key: never the key itself."""

    key_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    rights: str = ",".join(DEFAULT_RIGHTS)
    functions: str = ALL_FUNCTIONS

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest stored for ``secret``."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The ``key_id`` inside a well-formed key, else None (no database access)."""
    match = _KEY_PATTERN.match(secret)
    return match.group(1) if match else None


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite gives datetimes back naive (stored in UTC): make them aware."""
    if moment is None:
        return None
    return as_utc(moment)


def _info(row: ApiKeyRow) -> ApiKeyInfo:
    created = _utc(row.created_at)
    assert created is not None
    return ApiKeyInfo(row.key_id, row.name, created, _utc(row.revoked_at), row.rights, row.functions)


def create_key(
    settings: Settings,
    name: str,
    rights: tuple[str, ...] | list[str] = DEFAULT_RIGHTS,
    functions: tuple[str, ...] | list[str] | None = None,
) -> tuple[str, str]:
    """Create a key named ``name`` with ``rights`` on ``functions`` (None or ``*``: every function) and return
    ``(key_id, secret)``; the secret is not stored anywhere."""
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ApiKeyError(f"give the key a name of 1-{MAX_NAME_LENGTH} characters (for example the caller's name)")
    rights_text, functions_text = _checked_rights(list(rights)), _checked_functions(functions)
    sessions = session_factory(settings.database_url)
    for _ in range(5):  # a key_id collision is astronomically unlikely; retry anyway
        key_id = secrets.token_hex(8)
        secret = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        with sessions.begin() as session:
            if session.get(ApiKeyRow, key_id) is not None:
                continue
            session.add(
                ApiKeyRow(
                    key_id=key_id,
                    key_hash=hash_secret(secret),
                    name=name,
                    created_at=utcnow(),
                    rights=rights_text,
                    functions=functions_text,
                )
            )
        return key_id, secret
    raise ApiKeyError("could not allocate a unique key id; try again")


def list_keys(settings: Settings, include_revoked: bool = True) -> list[ApiKeyInfo]:
    """All keys, oldest first (revoked ones too unless ``include_revoked`` is False)."""
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        return [_info(row) for row in session.scalars(query)]


def revoke_key(settings: Settings, key_id: str) -> ApiKeyInfo:
    """Revoke ``key_id`` (idempotent); serving processes stop accepting it within about a second."""
    sessions = session_factory(settings.database_url)
    with sessions.begin() as session:
        row = session.get(ApiKeyRow, key_id)
        if row is None:
            known = ", ".join(k.key_id for k in list_keys(settings)) or "none"
            raise ApiKeyError(f"unknown API key id {key_id!r} (known ids: {known}); list them with `loopml keys list`")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        info = _info(row)
    verifier = _VERIFIERS.get(settings.database_url)
    if verifier is not None:
        verifier.clear()
    return info


STALE_GRANT_SECONDS = 3600.0  # while the database is down, a key it confirmed this recently still works
UNREACHABLE_RETRY_SECONDS = 5.0  # ... and is looked up again this often


class KeyStoreUnavailable(RuntimeError):
    """A key could not be checked: the platform database does not answer."""


class ApiKeyVerifier:
    """Checks keys against the database, remembering each answer for at most ``ttl_s`` seconds.

    The cache holds SHA-256 hashes, not keys, and at most ``max_entries`` of them (least recently used
    dropped first), so random keys cannot grow it without bound. Malformed keys never reach the database.
    """

    def __init__(self, settings: Settings, ttl_s: float = 1.0, max_entries: int = 10_000) -> None:
        self._sessions = session_factory(settings.database_url)
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[KeyGrant | None, float]] = OrderedDict()
        self._confirmed: dict[str, float] = {}  # digest -> when the database last confirmed the key (monotonic)
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def cached(self, secret: str | None) -> tuple[bool, KeyGrant | None]:
        """``(True, answer)`` when :meth:`verify` can answer without the database, else ``(False, None)``.

        Lets an event loop call :meth:`verify` inline on a hit and in a thread on a miss.
        """
        if not secret or key_id_of(secret) is None:
            return True, None
        digest = hash_secret(secret)
        with self._lock:
            entry = self._cache.get(digest)
            if entry is not None and entry[1] > time.monotonic():
                self._cache.move_to_end(digest)
                return True, entry[0]
        return False, None

    def verify(self, secret: str | None) -> KeyGrant | None:
        """What ``secret`` may do when it is a valid, unrevoked key, else None."""
        hit, answer = self.cached(secret)
        if hit:
            return answer
        assert secret is not None
        key_id = key_id_of(secret)
        assert key_id is not None
        digest = hash_secret(secret)
        now = time.monotonic()
        try:
            result = self._lookup(key_id, digest)
        except SQLAlchemyError:
            return self._while_unreachable(digest, now)
        with self._lock:
            self._cache[digest] = (result, now + self.ttl_s)
            self._cache.move_to_end(digest)
            if result is not None:
                self._confirmed[digest] = now
            else:
                self._confirmed.pop(digest, None)
            while len(self._cache) > self.max_entries:
                dropped, _ = self._cache.popitem(last=False)
                self._confirmed.pop(dropped, None)
        return result

    def _while_unreachable(self, digest: str, now: float) -> KeyGrant | None:
        """The database does not answer: a key it confirmed within :data:`STALE_GRANT_SECONDS` keeps its grant
        (looked up again after :data:`UNREACHABLE_RETRY_SECONDS`), so that serving goes on through an outage;
        any other key cannot be checked."""
        with self._lock:
            entry = self._cache.get(digest)
            confirmed = self._confirmed.get(digest)
            if entry is not None and entry[0] is not None and confirmed is not None:
                if now - confirmed <= STALE_GRANT_SECONDS:
                    self._cache[digest] = (entry[0], now + UNREACHABLE_RETRY_SECONDS)
                    return entry[0]
        raise KeyStoreUnavailable("the key store (the platform database) does not answer; retry shortly")

    def _lookup(self, key_id: str, digest: str) -> KeyGrant | None:
        with self._sessions() as session:
            row = session.get(ApiKeyRow, key_id, populate_existing=True)
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.key_hash, digest):
                return None
            return _grant(key_id, row.rights, row.functions)


_VERIFIERS: dict[str, ApiKeyVerifier] = {}
_VERIFIERS_LOCK = threading.Lock()


def verifier_for(settings: Settings) -> ApiKeyVerifier:
    """The process-wide verifier of this database."""
    verifier = _VERIFIERS.get(settings.database_url)
    if verifier is None:
        with _VERIFIERS_LOCK:
            verifier = _VERIFIERS.setdefault(settings.database_url, ApiKeyVerifier(settings))
    return verifier


def verify(settings: Settings, secret: str | None) -> KeyGrant | None:
    """What ``secret`` may do when it is a valid, unrevoked key, else None (cached up to 1 s)."""
    return verifier_for(settings).verify(secret)
