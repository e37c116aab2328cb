"""The update log's entry format and stream-id arithmetic (no Redis needed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import InvalidRequest
from service.sync import updates

ids = st.tuples(st.integers(0, (1 << 43) - 1), st.integers(0, (1 << updates.SEQ_BITS) - 1))


@given(ids, ids)
def test_stream_ids_become_sequences_in_order_and_back(a: tuple[int, int], b: tuple[int, int]) -> None:
    ida, idb = f"{a[0]}-{a[1]}", f"{b[0]}-{b[1]}"
    sa, sb = updates.id_to_sequence(ida), updates.id_to_sequence(idb)
    assert (sa < sb) == (a < b) and (sa == sb) == (a == b)
    assert updates.sequence_to_id(sa) == ida and sa < 1 << 63
    assert updates.id_to_sequence(ida.encode()) == sa


def test_sequence_zero_reads_the_whole_stream() -> None:
    assert updates.sequence_to_id(0) == "0-0"


@pytest.mark.parametrize("bad", ["", "12", "a-1", "1-b", f"1-{1 << updates.SEQ_BITS}", "-1-2"])
def test_malformed_stream_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        updates.id_to_sequence(bad)


def test_entries_round_trip_as_little_endian_bytes() -> None:
    keys = np.array([np.iinfo(np.int64).min, 0, 7, np.iinfo(np.int64).max])
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    fields = updates.encode_entry("upsert", keys, rows, "v1")
    assert fields["keys"] == keys.astype("<i8").tobytes() and fields["dim"] == b"3"
    got = updates.decode_entry({k.encode(): v for k, v in fields.items()}, dim=3)
    assert got.op == "upsert" and got.base_version == "v1"
    np.testing.assert_array_equal(got.keys, keys)
    np.testing.assert_array_equal(got.rows, rows)
    deleted = updates.decode_entry(updates.encode_entry("delete", keys[:2], None), dim=3)
    assert deleted.rows is None and deleted.keys.tolist() == keys[:2].tolist()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"op": b"replace"}, "op must be one of"),
        ({"keys": b"1234567"}, "whole number of int64"),
        ({"keys": b""}, "whole number of int64"),
        ({"dim": b"4"}, "dim must be the table's 3"),
        ({"dim": b"three"}, "dim must be the table's 3"),
        ({"rows": b"\x00" * 20}, "rows must be 2 x 3 float32 (24 bytes)"),
    ],
)
def test_bad_entries_are_refused_naming_the_field(change: dict[str, bytes], message: str) -> None:
    fields = updates.encode_entry("upsert", np.array([1, 2]), np.ones((2, 3), np.float32))
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        updates.decode_entry({**fields, **change}, dim=3)


def test_the_producer_refuses_what_no_replica_could_apply() -> None:
    class NoRedis:
        def pipeline(self, transaction: bool = False) -> None:
            raise AssertionError("nothing is sent for a refused batch")

    for keys, rows, message in [
        (np.array([1, 1]), np.ones((2, 3)), "keys repeat"),
        (np.array([1, 2]), np.array([[1.0, np.nan, 0], [0, 0, 0]]), "NaN"),
        (np.array([1, 2]), np.ones((3, 3)), r"rows must be a float \(2, dim\)"),
        (np.array([1.5]), None, "1-D integer"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            updates.push(NoRedis(), "t", keys, rows)
