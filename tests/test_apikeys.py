"""API keys: shown once, hashed at rest, verified with a short cache that still honours revocation."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from loopml import apikeys
from loopml.apikeys import (
    ApiKeyError,
    ApiKeyVerifier,
    create_key,
    hash_secret,
    key_id_of,
    list_keys,
    revoke_key,
)
from loopml.config import Settings
from loopml.db import ApiKeyRow, session_factory


def test_create_returns_a_secret_that_is_stored_only_as_a_hash(settings: Settings) -> None:
    key_id, secret = create_key(settings, "billing-service")
    assert secret.startswith(f"lml_{key_id}_") and key_id_of(secret) == key_id
    with session_factory(settings.database_url)() as session:
        row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_id == key_id))
    assert row is not None and row.name == "billing-service"
    assert row.key_hash == hash_secret(secret) and secret not in row.key_hash
    database = (settings.home / "loopml.db").read_bytes()
    assert secret.encode() not in database
    assert apikeys.verify(settings, secret) == key_id


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
    assert apikeys.verify(settings, secret) == key_id


def test_revocation_is_honoured_once_another_process_cache_expires(settings: Settings) -> None:
    key_id, secret = create_key(settings, "a")
    other_process = ApiKeyVerifier(settings, ttl_s=1.0)  # a serving process that cached the key
    assert other_process.verify(secret) == key_id
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
    assert verifier.verify(secret) == key_id
    assert verifier.cached(secret) == (True, key_id)
    assert verifier.cached("garbage") == (True, None)  # malformed: answered without a lookup
    for i in range(10):
        verifier.verify(f"lml_{i:016x}_{'b' * 43}")
    assert len(verifier._cache) <= 3
