"""Key naming: every key of a table shares one Redis Cluster slot, whatever the table's name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from service.sync import keys
from service.sync.registry import redact


def test_documented_layout() -> None:
    assert keys.version_key("items") == "embserve:{items}:version"
    assert keys.updates_key("items") == "embserve:{items}:updates"
    assert keys.deadletter_key("items") == "embserve:{items}:deadletter"
    assert keys.replica_key("pod-0") == "embserve:replica:{pod-0}"
    assert keys.hash_tag(keys.version_key("items")) == "items"
    assert keys.hash_tag("embserve:tables") == "embserve:tables"


@given(st.text(min_size=1, max_size=40).filter(lambda name: "/" not in name))
def test_a_tables_keys_share_one_slot(name: str) -> None:
    table_keys = [keys.version_key(name), keys.updates_key(name), keys.deadletter_key(name)]
    slots = {key_slot(key.encode()) for key in table_keys}
    assert len(slots) == 1, (name, table_keys)
    assert len({keys.hash_tag(key) for key in table_keys}) == 1


@pytest.mark.parametrize("name", ["items", "a}b", "{x}", "}", "{", "ünï"])
def test_slot_is_the_hash_tags_slot(name: str) -> None:
    key = keys.version_key(name)
    assert key_slot(key.encode()) == key_slot(keys.hash_tag(key).encode())


def test_different_tables_usually_spread_over_slots() -> None:
    slots = {key_slot(keys.version_key(f"table-{i}").encode()) for i in range(64)}
    assert len(slots) > 32


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:s3cret@host:6380", "rediss://user:***@host:6380"),
        ("redis://host:6379", "redis://host:6379"),
    ],
)
def test_passwords_never_shown(url: str, shown: str) -> None:
    assert redact(url) == shown
