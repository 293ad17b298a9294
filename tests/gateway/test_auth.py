"""API key entries: parsing, hashing, and keys made by `facescore apikey`."""

from __future__ import annotations

import pytest

from gateway.auth import Scope, hash_key, new_key_entry, parse_entries


def test_new_key_entry_round_trips_without_storing_the_key() -> None:
    key, entry = new_key_entry("ops", ["read", "write"])
    assert key not in entry
    keys = parse_entries(entry)
    assert keys[hash_key(key)].name == "ops"
    assert keys[hash_key(key)].scopes == {Scope.READ, Scope.WRITE}


def test_plain_and_hashed_entries_from_env_or_file() -> None:
    keys = parse_entries(
        "a:secret:read, b:sha256:" + hash_key("other") + ":admin+read\n# comment\n\n"
    )
    assert set(keys) == {hash_key("secret"), hash_key("other")}


@pytest.mark.parametrize(
    "entry", ["justaname", "a:secret:root", "a:secret:", "a:sha256:abc:read", "a:b:c:d:e"]
)
def test_bad_entries_are_refused_with_a_message(entry: str) -> None:
    with pytest.raises(ValueError, match="API key"):
        parse_entries(entry)
