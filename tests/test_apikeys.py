"""API keys: shown once, hashed at rest, verified with a short cache that still honours revocation."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from loopml import apikeys
from loopml.apikeys import (
    ApiKeyError,
    ApiKeyVerifier,
    KeyGrant,
    create_key,
    hash_secret,
    key_id_of,
    list_keys,
    revoke_key,
)
from loopml.config import Settings
from loopml.db import LEGACY_RIGHTS, ApiKeyRow, get_engine, session_factory


def _id(grant: KeyGrant | None) -> str | None:
    return grant.key_id if grant is not None else None


def test_create_returns_a_secret_that_is_stored_only_as_a_hash(settings: Settings) -> None:
    key_id, secret = create_key(settings, "billing-service")
    assert secret.startswith(f"lml_{key_id}_") and key_id_of(secret) == key_id
    with session_factory(settings.database_url)() as session:
        row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_id == key_id))
    assert row is not None and row.name == "billing-service"
    assert row.key_hash == hash_secret(secret) and secret not in row.key_hash
    database = (settings.home / "loopml.db").read_bytes()
    assert secret.encode() not in database
    assert _id(apikeys.verify(settings, secret)) == key_id


def test_keys_are_unique_and_listed_without_secrets(settings: Settings) -> None:
    first = create_key(settings, "a")
    second = create_key(settings, "b")
    assert first[0] != second[0] and first[1] != second[1]
    listed = list_keys(settings)
    assert [k.key_id for k in listed] == [first[0], second[0]]
    assert all(k.active for k in listed)
    assert not any(hasattr(k, "secret") for k in listed)


@pytest.mark.parametrize("bad", ["", "   ", "x" * 129])
def test_a_key_needs_a_name(settings: Settings, bad: str) -> None:
    with pytest.raises(ApiKeyError, match="name"):
        create_key(settings, bad)


def test_wrong_malformed_and_unknown_keys_are_rejected(settings: Settings) -> None:
    key_id, secret = create_key(settings, "a")
    assert apikeys.verify(settings, None) is None
    assert apikeys.verify(settings, "") is None
    assert apikeys.verify(settings, "not-a-key") is None
    assert apikeys.verify(settings, secret + "x") is None  # right id, wrong secret part
    assert apikeys.verify(settings, f"lml_{'0' * 16}_{'a' * 43}") is None  # unknown id
    assert _id(apikeys.verify(settings, secret)) == key_id


def test_revocation_is_honoured_once_another_process_cache_expires(settings: Settings) -> None:
    key_id, secret = create_key(settings, "a")
    other_process = ApiKeyVerifier(settings, ttl_s=1.0)  # a serving process that cached the key
    assert _id(other_process.verify(secret)) == key_id
    revoke_key(settings, key_id)
    assert apikeys.verify(settings, secret) is None  # the revoking process: at once
    deadline = time.monotonic() + 30  # the cache lives 1 s; the bound only stops a cache that never expires
    while other_process.verify(secret) is not None:
        assert time.monotonic() < deadline, "a revoked key was still accepted after its cache expired"
        time.sleep(0.05)
    assert [k.active for k in list_keys(settings)] == [False]
    assert list_keys(settings, include_revoked=False) == []


def test_revoking_is_idempotent_and_unknown_ids_say_what_to_do(settings: Settings) -> None:
    key_id, _ = create_key(settings, "a")
    first = revoke_key(settings, key_id)
    again = revoke_key(settings, key_id)
    assert first.revoked_at == again.revoked_at
    with pytest.raises(ApiKeyError, match="loopml keys list"):
        revoke_key(settings, "feedfacefeedface")


def test_cache_answers_without_the_database_and_is_bounded(settings: Settings) -> None:
    key_id, secret = create_key(settings, "a")
    verifier = ApiKeyVerifier(settings, ttl_s=60.0, max_entries=3)
    assert verifier.cached(secret) == (False, None)
    assert _id(verifier.verify(secret)) == key_id
    hit, grant = verifier.cached(secret)
    assert hit and _id(grant) == key_id
    assert verifier.cached("garbage") == (True, None)  # malformed: answered without a lookup
    for i in range(10):
        verifier.verify(f"lml_{i:016x}_{'b' * 43}")
    assert len(verifier._cache) <= 3


def test_keys_carry_rights_on_a_scope_of_functions(settings: Settings) -> None:
    _, default = create_key(settings, "app")
    grant = apikeys.verify(settings, default)
    assert grant is not None and grant.functions is None
    assert grant.allows("invoke", "anything") and grant.allows("feedback", "anything")
    assert not grant.allows("hooks", "anything") and not grant.allows("admin")
    _, scoped = create_key(settings, "billing", rights=["invoke"], functions=["invoice-type", "refund-reason"])
    grant = apikeys.verify(settings, scoped)
    assert grant is not None and grant.allows("invoke", "invoice-type") and not grant.allows("invoke", "news-topic")
    assert not grant.allows("feedback", "invoice-type") and grant.sees("refund-reason") and not grant.sees("x")
    assert grant.describe() == "invoke on invoice-type, refund-reason"
    _, admin = create_key(settings, "ops", rights=["admin"])
    grant = apikeys.verify(settings, admin)
    assert grant is not None and all(grant.allows(right, "any") for right in apikeys.RIGHTS)
    listed = {k.name: (k.rights, k.functions) for k in list_keys(settings)}
    assert listed["billing"] == ("invoke", "invoice-type,refund-reason") and listed["app"] == ("invoke,feedback", "*")
    with pytest.raises(ApiKeyError, match="unknown rights"):
        create_key(settings, "x", rights=["invoke", "delete"])
    with pytest.raises(ApiKeyError, match="not function names"):
        create_key(settings, "x", functions=["Bad Name"])


def test_keys_made_before_scopes_keep_every_right(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database whose api_keys table predates the rights and functions columns gets them, with every right."""
    import sqlite3

    from loopml.config import get_settings

    home = tmp_path / "old"
    home.mkdir()
    monkeypatch.setenv("LOOPML_HOME", str(home))
    monkeypatch.delenv("LOOPML_DATABASE_URL", raising=False)
    settings = get_settings()
    digest = hash_secret("lml_00000000000000aa_" + "s" * 43)
    with sqlite3.connect(home / "loopml.db") as connection:
        connection.execute(
            "CREATE TABLE api_keys (key_id VARCHAR(32) PRIMARY KEY, key_hash VARCHAR(128) UNIQUE, name VARCHAR(128), "
            "created_at DATETIME, revoked_at DATETIME)"
        )
        connection.execute(
            "INSERT INTO api_keys VALUES ('00000000000000aa', ?, 'old', '2026-01-01 00:00:00', NULL)", (digest,)
        )
    get_engine.cache_clear()
    grant = apikeys.verify(settings, "lml_00000000000000aa_" + "s" * 43)
    assert grant is not None and grant.functions is None
    assert grant.rights == frozenset(LEGACY_RIGHTS.split(","))
