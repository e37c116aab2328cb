"""Dynamic batching of searches (EMBSERVE_SEARCH_BATCH_MAX_QUERIES): concurrent requests answered
by one kernel call give each request what it gets alone, refuse a bad request alone, never mix
tables or search arguments, and leave nothing queued behind. In process against real tables, and
against a live server over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

import runtime
from runtime.errors import InvalidRequest, KeyNotFound
from service.batching import SearchBatcher, SearchCall
from service.core import EmbeddingService
from service.requests import SearchRequest
from service.rpc.generated import embserve_pb2 as pb
from service.rpc.generated import embserve_pb2_grpc as pb_grpc
from service.rpc.servicers import array_to_tensor, tensor_to_array
from service.settings import Settings
from tests.conftest import low_rank_table
from tests.service.live import start_server

X_INT8 = low_rank_table(3000, 32, seed=21)
X_PQ = low_rank_table(2000, 48, seed=22)
MAX_QUERIES = 16
IP_TOP3 = SearchCall(3, "ip", 1)


def make_service(**settings: Any) -> EmbeddingService:
    svc = EmbeddingService(Settings(demo=False, search_batch_max_queries=MAX_QUERIES, **settings))
    svc.store.put("items", runtime.compress(X_INT8, "int8", version="i1"))
    svc.store.put("codes", runtime.compress(X_PQ, "pq", subspaces=8, bits=8, iterations=4, rerank="int8"))
    svc.started = True
    return svc


@pytest.fixture
async def service() -> AsyncIterator[EmbeddingService]:
    svc = make_service()
    yield svc
    svc.close()


def batch_sample(svc: EmbeddingService, name: str, table: str) -> float:
    value = svc.metrics.registry.get_sample_value(name, {"table": table})
    return 0.0 if value is None else value


def queries(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


async def refusal_without_batching(service: EmbeddingService, request: SearchRequest) -> InvalidRequest:
    """The error a server without batching, serving the same table, answers the request with."""
    plain = EmbeddingService(Settings(demo=False))
    plain.store.put(request.table, service.store.get(request.table).table)
    plain.started = True
    try:
        with pytest.raises(InvalidRequest) as refused:
            await plain.search("test", request)
    finally:
        plain.close()
    return refused.value


def assert_same_answer(got: tuple[np.ndarray, np.ndarray], alone: tuple[np.ndarray, np.ndarray]) -> None:
    # a batch of 4+ queries sums its dot products in another order: scores may differ in the
    # last float bits, the ranking does not on these tables (no near-ties among the top 10)
    np.testing.assert_array_equal(got[0], alone[0])
    np.testing.assert_allclose(got[1], alone[1], rtol=1e-5, atol=1e-5)
    assert got[0].dtype == np.int64 and got[1].dtype == np.float32


@pytest.mark.parametrize(
    ("table", "dim", "fields"), [("items", 32, {"metric": "l2"}), ("codes", 48, {"oversample": 3})]
)
async def test_concurrent_searches_get_what_each_gets_alone(
    service: EmbeddingService, table: str, dim: int, fields: dict[str, Any]
) -> None:
    sizes = [1, 3, 1, 2, 5, 1, 1, 4, 1, 2, 1, 1, 6, 1, 1]  # 31 queries: batches of at most 16, none split
    sent = [queries(n, dim, seed) for seed, n in enumerate(sizes)]
    answers = await asyncio.gather(
        *(service.search("test", SearchRequest(table, queries=q, k=10, **fields)) for q in sent)
    )
    stored = service.store.get(table).table
    for q, got in zip(sent, answers, strict=True):
        assert got[0].shape == (q.shape[0], 10)
        assert_same_answer(got, stored.search(q, 10, fields.get("metric", "ip"), fields.get("oversample", 1)))
    calls = batch_sample(service, "embserve_search_batch_queries_count", table)
    assert batch_sample(service, "embserve_search_batch_queries_sum", table) == sum(sizes)
    assert batch_sample(service, "embserve_search_batch_requests_sum", table) == len(sizes)
    # every request joined the queue before the first batch ran; whole requests of at most 16
    # queries a batch: the first seven (14 queries), the next seven (16), the last one
    assert calls == 3
    assert service.search_batcher is not None and service.search_batcher.queues == 0


async def test_a_single_query_vector_and_large_requests(service: EmbeddingService) -> None:
    stored = service.store.get("items").table
    one = queries(1, 32, 1)[0]  # a 1-D query is one query, as without batching
    large = queries(MAX_QUERIES, 32, 2)  # as many as a batch holds: runs alone
    got_one, got_large = await asyncio.gather(
        service.search("test", SearchRequest("items", queries=one, k=5)),
        service.search("test", SearchRequest("items", queries=large, k=5)),
    )
    assert_same_answer(got_one, stored.search(one, 5))
    assert_same_answer(got_large, stored.search(large, 5))
    assert batch_sample(service, "embserve_search_batch_queries_sum", "items") == 1


async def test_different_search_arguments_and_tables_never_share_a_batch(service: EmbeddingService) -> None:
    requests = [
        SearchRequest("items", queries=queries(1, 32, 0), k=3),
        SearchRequest("items", queries=queries(1, 32, 1), k=7),
        SearchRequest("items", queries=queries(1, 32, 2), k=3, metric="l2"),
        SearchRequest("codes", queries=queries(1, 48, 3), k=3),
        SearchRequest("codes", queries=queries(1, 48, 4), k=3, oversample=2),
        SearchRequest("items", queries=queries(2, 32, 5), k=3),
    ]
    answers = await asyncio.gather(*(service.search("test", r) for r in requests))
    for request, got in zip(requests, answers, strict=True):
        stored = service.store.get(request.table).table
        assert_same_answer(got, stored.search(request.queries, request.k, request.metric, request.oversample))
    # items: (k=3, ip) took two requests in one call, the others one each
    assert batch_sample(service, "embserve_search_batch_requests_count", "items") == 3
    assert batch_sample(service, "embserve_search_batch_requests_sum", "items") == 4
    assert batch_sample(service, "embserve_search_batch_requests_count", "codes") == 2


BAD_REQUESTS = [
    ({"queries": queries(1, 31, 0)}, "dimension"),
    ({"queries": np.full((1, 32), np.nan, np.float32)}, "NaN"),
    ({"queries": queries(1, 32, 0), "k": 0}, "k"),
    ({"queries": queries(1, 32, 0), "metric": "cosine"}, "metric"),
    ({"queries": queries(1, 32, 0), "oversample": -1}, "oversample"),
    ({"queries": [["a"] * 32]}, "numbers"),
    ({"queries": queries(2, 32, 0).reshape(2, 1, 32)}, "2-D"),
]


@pytest.mark.parametrize(("fields", "named"), BAD_REQUESTS)
async def test_a_bad_request_is_refused_alone_with_its_own_message(
    service: EmbeddingService, fields: dict[str, Any], named: str
) -> None:
    good = [queries(1, 32, seed) for seed in range(6)]
    bad = SearchRequest("items", **{"k": 4, **fields})
    outcomes = await asyncio.gather(
        *(service.search("test", SearchRequest("items", queries=q, k=4)) for q in good[:3]),
        service.search("test", bad),
        *(service.search("test", SearchRequest("items", queries=q, k=4)) for q in good[3:]),
        return_exceptions=True,
    )
    error = outcomes[3]
    assert isinstance(error, InvalidRequest) and named in str(error), error
    # the very message the request gets from a server without batching
    assert str(await refusal_without_batching(service, bad)) == str(error)
    stored = service.store.get("items").table
    for q, got in zip(good, outcomes[:3] + outcomes[4:], strict=True):
        assert not isinstance(got, BaseException), got
        assert_same_answer(got, stored.search(q, 4))
    assert service.search_batcher is not None and service.search_batcher.queues == 0


async def test_a_cancelled_caller_leaves_the_others_answered(service: EmbeddingService) -> None:
    stored = service.store.get("items").table
    sent = [queries(1, 32, seed) for seed in range(5)]
    tasks = [asyncio.ensure_future(service.search("test", SearchRequest("items", queries=q, k=5))) for q in sent]
    await asyncio.sleep(0)  # every request has joined the queue; no batch has run yet
    tasks[1].cancel()
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(answers[1], asyncio.CancelledError)
    for i in (0, 2, 3, 4):
        assert_same_answer(answers[i], stored.search(sent[i], 5))  # type: ignore[arg-type]
    assert batch_sample(service, "embserve_search_batch_requests_sum", "items") == 4
    assert service.search_batcher is not None and service.search_batcher.queues == 0
    assert service.in_flight == 0


async def test_a_replaced_table_answers_only_the_requests_that_took_it(service: EmbeddingService) -> None:
    old = service.store.get("items").table
    first = asyncio.ensure_future(service.search("test", SearchRequest("items", queries=queries(1, 32, 0), k=5)))
    await asyncio.sleep(0)
    replacement = runtime.compress(low_rank_table(3000, 32, seed=99), "int8", version="i2")
    service.store.put("items", replacement)
    second = asyncio.ensure_future(service.search("test", SearchRequest("items", queries=queries(1, 32, 1), k=5)))
    got_first, got_second = await asyncio.gather(first, second)
    assert_same_answer(got_first, old.search(queries(1, 32, 0), 5))
    assert_same_answer(got_second, replacement.search(queries(1, 32, 1), 5))


async def test_the_delay_gathers_late_requests_and_a_full_batch_does_not_wait() -> None:
    svc = make_service(search_batch_delay_ms=400)
    try:
        stored = svc.store.get("items").table
        first = asyncio.ensure_future(svc.search("test", SearchRequest("items", queries=queries(1, 32, 0), k=5)))
        await asyncio.sleep(0.05)  # within the delay: joins the first request's batch
        second = asyncio.ensure_future(svc.search("test", SearchRequest("items", queries=queries(3, 32, 1), k=5)))
        got = await asyncio.gather(first, second)
        assert_same_answer(got[0], stored.search(queries(1, 32, 0), 5))
        assert_same_answer(got[1], stored.search(queries(3, 32, 1), 5))
        assert batch_sample(svc, "embserve_search_batch_requests_count", "items") == 1
        assert batch_sample(svc, "embserve_search_batch_requests_sum", "items") == 2
        # a batch filled before the delay is over runs at once; ten times the delay would fail
        svc.search_batcher.delay_seconds = 60.0  # type: ignore[union-attr]
        started = time.monotonic()
        await asyncio.gather(
            *(svc.search("test", SearchRequest("items", queries=queries(4, 32, s), k=5)) for s in range(4))
        )
        assert time.monotonic() - started < 30
        assert batch_sample(svc, "embserve_search_batch_queries_sum", "items") == 4 + 16
    finally:
        svc.close()


async def test_a_failing_batched_call_answers_each_request_alone() -> None:
    """The batched call itself fails (a fault past the checks): every request runs again alone,
    the one that fails alone gets its error, the others their answers. The search call is a
    stand-in here: no real table fails after the checks."""
    table = runtime.compress(X_INT8, "int8")
    poison = np.float32(1234.5)
    calls: list[int] = []

    async def run(t: runtime.Table, q: np.ndarray, call: SearchCall) -> Any:
        calls.append(q.shape[0])
        if (q == poison).any():
            raise InvalidRequest("poisoned query")
        return t.search(q, call.k, call.metric, call.oversample)

    batcher = SearchBatcher(8, 0.0, run, lambda name, requests, total: None)
    sent = [queries(1, 32, seed) for seed in range(4)]
    sent[2][0, 0] = poison
    outcomes = await asyncio.gather(*(batcher.search(table, "t", q, IP_TOP3) for q in sent), return_exceptions=True)
    assert calls == [4, 1, 1, 1, 1]
    assert isinstance(outcomes[2], InvalidRequest)
    for i in (0, 1, 3):
        assert_same_answer(outcomes[i], table.search(sent[i], 3))  # type: ignore[arg-type]
    assert batcher.queues == 0


async def test_a_caller_gone_while_its_batch_runs_leaves_the_others_answered(service: EmbeddingService) -> None:
    stored = service.store.get("items").table
    batcher = service.search_batcher
    assert batcher is not None
    running = asyncio.Event()
    real_call = batcher._run

    async def signalled(*args: Any) -> Any:
        running.set()
        return await real_call(*args)

    batcher._run = signalled
    sent = [queries(1, 32, seed) for seed in range(6)]
    tasks = [asyncio.ensure_future(service.search("test", SearchRequest("items", queries=q, k=5))) for q in sent]
    await running.wait()
    tasks[2].cancel()  # its batch is in a kernel thread now
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(answers[2], asyncio.CancelledError)
    for i in (0, 1, 3, 4, 5):
        assert_same_answer(answers[i], stored.search(sent[i], 5))  # type: ignore[arg-type]
    assert batch_sample(service, "embserve_search_batch_requests_sum", "items") == 6
    assert batcher.queues == 0
    assert service.in_flight == 0


async def test_a_fault_in_the_batcher_fails_its_requests_and_the_next_ones_are_served() -> None:
    """A fault past the kernel call (here the metrics callback) reaches every request the batch
    held as an error, not as a cancellation, and the queue is gone: later searches are answered."""
    table = runtime.compress(X_INT8, "int8")
    broken = [True]

    async def run(t: runtime.Table, q: np.ndarray, call: SearchCall) -> Any:
        return t.search(q, call.k, call.metric, call.oversample)

    def observe(name: str, requests: int, total: int) -> None:
        if broken[0]:
            raise RuntimeError("metrics are broken")

    batcher = SearchBatcher(8, 0.0, run, observe)
    sent = [queries(1, 32, seed) for seed in range(3)]
    outcomes = await asyncio.gather(*(batcher.search(table, "t", q, IP_TOP3) for q in sent), return_exceptions=True)
    # the answers were handed out before the callback ran; a fault before them would be errors
    for q, got in zip(sent, outcomes, strict=True):
        assert_same_answer(got, table.search(q, 3))  # type: ignore[arg-type]
    assert batcher.queues == 0
    broken[0] = False

    faulty = SearchBatcher(8, 0.0, run, observe)

    def broken_take(queue: Any) -> Any:
        raise RuntimeError("bookkeeping broke")

    faulty._take = broken_take  # type: ignore[method-assign]
    outcomes = await asyncio.gather(*(faulty.search(table, "t", q, IP_TOP3) for q in sent), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) and "bookkeeping" in str(o) for o in outcomes), outcomes
    assert faulty.queues == 0
    del faulty._take
    again = await faulty.search(table, "t", sent[0], IP_TOP3)
    assert_same_answer(again, table.search(sent[0], 3))


async def test_a_failing_batch_reruns_only_requests_still_waited_for() -> None:
    table = runtime.compress(X_INT8, "int8")
    calls: list[int] = []
    release = asyncio.Event()

    async def run(t: runtime.Table, q: np.ndarray, call: SearchCall) -> Any:
        calls.append(q.shape[0])
        if q.shape[0] > 1:
            await release.wait()
            raise InvalidRequest("the batch failed")
        return t.search(q, call.k, call.metric, call.oversample)

    batcher = SearchBatcher(8, 0.0, run, lambda name, requests, total: None)
    sent = [queries(1, 32, seed) for seed in range(4)]
    tasks = [asyncio.ensure_future(batcher.search(table, "t", q, IP_TOP3)) for q in sent]
    while not calls:
        await asyncio.sleep(0)
    tasks[0].cancel()
    tasks[3].cancel()
    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == [4, 1, 1]
    for i in (1, 2):
        assert_same_answer(outcomes[i], table.search(sent[i], 3))  # type: ignore[arg-type]
    assert batcher.queues == 0


async def test_wide_queries_are_checked_off_the_event_loop_with_the_same_errors() -> None:
    dim = 6000  # 15 queries x 6000 > INLINE_CHECK_VALUES: checked in a kernel thread
    x = low_rank_table(300, dim, seed=5)
    svc = EmbeddingService(Settings(demo=False, search_batch_max_queries=MAX_QUERIES))
    svc.store.put("wide", runtime.compress(x, "fp16"))
    svc.started = True
    try:
        good = queries(15, dim, 1)
        bad = queries(15, dim, 2)
        bad[9, 77] = np.inf
        outcomes: list[Any] = await asyncio.gather(
            svc.search("test", SearchRequest("wide", queries=good, k=4)),
            svc.search("test", SearchRequest("wide", queries=bad, k=4)),
            return_exceptions=True,
        )
        got, error = outcomes
        assert_same_answer(got, svc.store.get("wide").table.search(good, 4))
        assert isinstance(error, InvalidRequest) and "queries[9]" in str(error), error
    finally:
        svc.close()


async def test_keyed_tiered_tables_with_updates_are_batched_by_key() -> None:
    keys = np.arange(3000, dtype=np.int64) * 11 + (1 << 40)
    tiers: list[dict[str, Any]] = [
        {"rows": {"start": 0, "stop": 300}, "codec": "int8"},
        {"rows": {"start": 300}, "codec": "pq", "subspaces": 8, "bits": 8, "iterations": 4},
    ]
    table = runtime.compress(X_INT8, tiers=tiers, keys=keys)
    svc = EmbeddingService(Settings(demo=False, search_batch_max_queries=MAX_QUERIES))
    svc.store.put("keyed", table)
    svc.started = True
    try:
        sent = [queries(1 + s % 3, 32, s) for s in range(10)]
        first = await asyncio.gather(*(svc.search("test", SearchRequest("keyed", queries=q, k=8)) for q in sent))
        for q, got in zip(sent, first, strict=True):
            assert_same_answer(got, table.search(q, 8))
            assert np.isin(got[0], keys).all()  # keys, never row numbers
        # rows upserted (a new key, and one moved next to the first query) and a key deleted
        new_rows = np.vstack([sent[0][0] * 3, sent[1][0] * 3]).astype(np.float32)
        table.upsert(np.array([7, keys[5]], np.int64), new_rows)
        table.delete(np.array([keys[6]], np.int64))
        second = await asyncio.gather(*(svc.search("test", SearchRequest("keyed", queries=q, k=8)) for q in sent))
        for q, got in zip(sent, second, strict=True):
            assert_same_answer(got, table.search(q, 8))
            assert keys[6] not in got[0]
        assert 7 in second[0][0][0] and keys[5] in second[1][0][0]
        assert batch_sample(svc, "embserve_search_batch_requests_sum", "keyed") == 20
    finally:
        svc.close()


@pytest.mark.parametrize("exclude_self", [True, False])
async def test_searches_by_stored_id_are_batched_too(service: EmbeddingService, exclude_self: bool) -> None:
    stored = service.store.get("codes").table
    sent = [np.array(ids, np.int64) for ids in ([3], [10, 11], [1999], [0, 5, 7], [42], [42])]
    answers = await asyncio.gather(
        *(
            service.search("test", SearchRequest("codes", query_ids=q, k=6, oversample=2, exclude_self=exclude_self))
            for q in sent
        ),
        service.search("test", SearchRequest("codes", queries=queries(1, 48, 0), k=6, oversample=2)),
    )
    for q, got in zip(sent, answers[:-1], strict=True):
        assert_same_answer(got, stored.search_by_id(q, 6, "ip", 2, exclude_self))
        if exclude_self:
            assert not (q[:, None] == got[0]).any()
    assert_same_answer(answers[-1], stored.search(queries(1, 48, 0), 6, "ip", 2))
    # the by-id requests in one call, the vector search in another
    assert batch_sample(service, "embserve_search_batch_requests_sum", "codes") == 7
    assert batch_sample(service, "embserve_search_batch_requests_count", "codes") == 2


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"query_ids": [5, 4000]}, "4000"),
        ({"query_ids": [-1]}, "-1"),
        ({"query_ids": [1.5]}, "query_ids"),
        ({"query_ids": [3], "exclude_self": "yes"}, "exclude_self"),
        ({"query_ids": [3], "k": -2}, "k"),
    ],
)
async def test_a_bad_search_by_id_is_refused_alone(
    service: EmbeddingService, fields: dict[str, Any], named: str
) -> None:
    bad = SearchRequest("codes", **{"k": 4, **fields})
    outcomes = await asyncio.gather(
        service.search("test", SearchRequest("codes", query_ids=[1], k=4)),
        service.search("test", bad),
        service.search("test", SearchRequest("codes", query_ids=[2, 3], k=4)),
        return_exceptions=True,
    )
    alone = await refusal_without_batching(service, bad)
    assert type(outcomes[1]) is type(alone) and str(outcomes[1]) == str(alone)
    assert named in str(alone)
    stored = service.store.get("codes").table
    assert_same_answer(outcomes[0], stored.search_by_id([1], 4))  # type: ignore[arg-type]
    assert_same_answer(outcomes[2], stored.search_by_id([2, 3], 4))  # type: ignore[arg-type]


async def test_a_query_id_deleted_after_its_check_fails_its_request_alone() -> None:
    keys = np.arange(3000, dtype=np.int64) * 13 - 5
    table = runtime.compress(X_INT8, "int8", keys=keys)
    svc = EmbeddingService(Settings(demo=False, search_batch_max_queries=MAX_QUERIES))
    svc.store.put("keyed", table)
    svc.started = True
    try:
        sent = [keys[[1]], keys[[2, 3]], keys[[4]]]
        tasks = [asyncio.ensure_future(svc.search("test", SearchRequest("keyed", query_ids=q, k=5))) for q in sent]
        await asyncio.sleep(0)  # all three checked and queued; the batch has not run
        table.delete(keys[[3]])
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(outcomes[1], KeyNotFound) and str(keys[3]) in str(outcomes[1])
        for i in (0, 2):
            assert_same_answer(outcomes[i], table.search_by_id(sent[i], 5))  # type: ignore[arg-type]
    finally:
        svc.close()


def test_batching_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="search_batch_max_queries"):
        Settings(search_batch_max_queries=-1)
    with pytest.raises(ValueError, match="search_batch_delay_ms"):
        Settings(search_batch_delay_ms=-0.5)
    with pytest.raises(ValueError, match="finite number"):
        Settings(search_batch_delay_ms=float("nan"))
    with pytest.raises(ValueError, match="at least 2"):
        Settings(search_batch_max_queries=1)
    unbatched = EmbeddingService(Settings(demo=False))
    assert unbatched.search_batcher is None
    unbatched.close()
    with pytest.raises(ValueError, match="max_queries"):
        SearchBatcher(0, 0.0, None, None)  # type: ignore[arg-type]


# ---- a live server --------------------------------------------------------------------------------
def test_live_server_batches_concurrent_http_and_grpc_searches(tmp_path: Path) -> None:
    table = runtime.compress(X_INT8, "int8", version="b1")
    table.save(tmp_path / "items")
    server = start_server(
        tmp_path,
        ["--table", f"items={tmp_path / 'items'}"],
        env={"EMBSERVE_SEARCH_BATCH_MAX_QUERIES": "32", "EMBSERVE_SEARCH_BATCH_DELAY_MS": "20"},
    )
    try:
        sent = [queries(1 + i % 3, 32, seed=i) for i in range(24)]

        def over_http(i: int) -> Any:
            body = {"queries": sent[i].tolist(), "k": 6, "metric": "l2"}
            if i == 5:
                body["queries"] = [[1.0] * 31]
            return httpx.post(f"{server.http}/v1/tables/items/search", json=body, timeout=60)

        def over_grpc(i: int) -> Any:
            with grpc.insecure_channel(server.grpc) as channel:
                request = pb.SearchRequest(table="items", queries=array_to_tensor(sent[i]), k=6, metric="l2")
                try:
                    return pb_grpc.EmbeddingServiceStub(channel).Search(request, timeout=60)
                except grpc.RpcError as error:
                    return error

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda i: over_http(i) if i % 2 else over_grpc(i), range(24)))
        for i, got in enumerate(answers):
            if i == 5:
                assert got.status_code == 400 and "dimension" in got.json()["error"], got.text
                continue
            if i % 2:
                assert got.status_code == 200, got.text
                ids, scores = np.array(got.json()["ids"]), np.array(got.json()["scores"], np.float32)
            else:
                ids, scores = tensor_to_array(got.ids, "ids"), tensor_to_array(got.scores, "scores")
            assert_same_answer((ids.astype(np.int64), scores), table.search(sent[i], 6, "l2"))
        metrics = httpx.get(f"{server.http}/metrics", timeout=30).text
        count = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith('embserve_search_batch_requests_sum{table="items"}')
        )
        assert count == 23  # every good request went through the batcher
        # an Open Inference Protocol search joins the same batches
        oip = httpx.post(
            f"{server.http}/v2/models/items.search/infer",
            json={
                "inputs": [{"name": "queries", "datatype": "FP32", "shape": [1, 32], "data": sent[0].ravel().tolist()}],
                "parameters": {"k": 6, "metric": "l2"},
            },
            timeout=30,
        )
        assert oip.status_code == 200, oip.text
        outputs = {o["name"]: o for o in oip.json()["outputs"]}
        np.testing.assert_array_equal(outputs["ids"]["data"], table.search(sent[0], 6, "l2")[0].ravel())
        healthy = httpx.post(
            f"{server.http}/v1/tables/items/search", json={"queries": sent[0].tolist(), "k": 6}, timeout=30
        )
        assert healthy.status_code == 200
    finally:
        assert server.terminate() == 0, server.log()
