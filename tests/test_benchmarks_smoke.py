"""Benchmarks are not tests; this seconds-long run at tiny sizes only keeps the suite from rotting
(peers that are not installed are left out of the tables)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks import perf


@pytest.mark.slow
def test_perf_suite_smoke(tmp_path: Path) -> None:
    assert (
        perf.main(
            [
                "--smoke",
                "--rows",
                "3000",
                "--reps",
                "1",
                "--out",
                str(tmp_path),
                "--sections",
                "lookup,pq,rq,quantized,exclude,hamming,compress,startup",
            ]
        )
        == 0
    )
    payload = json.loads((tmp_path / "perf.json").read_text())
    assert payload["machine"]["cores"] >= 1 and payload["copy_bandwidth_gbs"] > 0
    sections = {row["section"] for row in payload["rows"]}
    expected = {
        "lookup",
        "pq adc top-100",
        "rq adc top-100",
        "hamming top-100",
        "exact search on quantized rows, top-100",
        "search leaving 1,000 ids out, int8, top-10",
    }
    if importlib.util.find_spec("faiss") is not None:  # compression rows exist only beside their peer
        expected.add("pq compression (train + encode)")
    assert expected <= sections
    assert all(row["ours"] > 0 for row in payload["rows"])
    exact = {row["op"].split()[0] for row in payload["rows"] if row["section"].startswith("exact search")}
    assert exact == {"int8", "int4", "int2", "fp16", "fp32"}
    assert payload["startup"]["first_search_ms"] > 0
    assert "| op | threads |" in (tmp_path / "perf.md").read_text()


@pytest.mark.slow
def test_rq_bench_smoke(tmp_path: Path) -> None:
    from benchmarks import rq_bench

    args = ["--rows", "3000", "--dim", "32", "--queries", "40", "--train-rows", "1024", "--beam", "2"]
    args += ["--threads", "1,2", "--configs", "4x8,4x4", "--out", str(tmp_path)]
    assert rq_bench.main(args) == 0
    runs = json.loads((tmp_path / "rq.json").read_text())
    assert [run["threads"] for run in runs] == [1, 2]
    has_faiss = importlib.util.find_spec("faiss") is not None
    for run in runs:
        assert [(r["codebooks"], r["bits"]) for r in run["rq"]] == [(4, 8), (4, 4)]
        for r in run["rq"]:
            assert r["ours_train_s"] > 0 and r["ours_encode_s"] > 0 and r["train_sample"] == 1024
            assert (r["time_ratio"] is not None and r["time_ratio"] > 0) == has_faiss
    two = runs[1]
    # 4 codebooks of 256 codewords find some of the true top 10 among 3000 rows, not all of them
    assert all(0.05 < r["ours_recall_at_10"] < 1.0 and 0 < r["pq_recall_at_10"] <= 1.0 for r in two["rq"])
    assert all(r["ours_squared_error"] > 0 for r in two["rq"])
    assert all((r["faiss_squared_error"] is not None) == has_faiss for r in two["rq"])
    adc = two["adc"]
    assert [a["bytes_per_row"] for a in adc] == [16, 32, 16]
    assert all(a["rq_ms"] > 0 and a["pq_ms"] > 0 for a in adc)
    assert "| bytes/row | rq | pq |" in (tmp_path / "rq.md").read_text()


@pytest.mark.slow
def test_service_bench_smoke(tmp_path: Path) -> None:
    from benchmarks import service_bench

    args = ["--rows", "2000", "--seconds", "2", "--slices", "2", "--concurrency", "2", "--out", str(tmp_path)]
    assert service_bench.main(args) == 0
    rows = json.loads((tmp_path / "service.json").read_text())["results"]
    assert {row["transport"] for row in rows} == {"grpc", "http"}
    assert all(row["ours"]["rps"] > 0 and row["bare"]["rps"] > 0 for row in rows)
    assert "fraction of bare" in (tmp_path / "service.md").read_text()


@pytest.mark.slow
def test_batching_bench_smoke(tmp_path: Path) -> None:
    from benchmarks import batching_bench

    args = ["--rows", "3000", "--seconds", "1", "--slices", "1", "--concurrency", "8", "--out", str(tmp_path)]
    assert batching_bench.main(args) == 0
    result = json.loads((tmp_path / "batching.json").read_text())
    assert {row["table"] for row in result["results"]} == {"int8", "pq"}
    assert all(row[side]["rps"] > 0 for row in result["results"] for side in ("off", "on"))
    assert "on / off" in (tmp_path / "batching.md").read_text()


def test_tables_bench_smoke(tmp_path: Path) -> None:
    args = ["--smoke", "--rows", "3000", "--reps", "1", "--out", str(tmp_path), "--sections", "tables"]
    assert perf.main(args) == 0
    rows = json.loads((tmp_path / "perf.json").read_text())["rows"]
    ops = {row["op"].split(",")[0] for row in rows if row["section"] == "tables"}
    assert {"keyed lookup int8", "upsert throughput", "lookup p99 B=1024 while upserting 10000 rows/s"} <= ops
    assert any(row["op"].endswith("rows in the delta") and row["peer"] == "no delta" for row in rows)
    assert all(row["ours"] > 0 for row in rows)


@pytest.mark.external
@pytest.mark.slow
def test_workers_bench_smoke(tmp_path: Path) -> None:
    from benchmarks import workers_bench

    args = ["--rows", "2000", "--seconds", "1", "--slices", "1", "--concurrency", "4", "--out", str(tmp_path)]
    assert workers_bench.main(args) == 0
    result = json.loads((tmp_path / "workers.json").read_text())
    assert {row["transport"] for row in result["results"]} == {"grpc", "http"}
    assert all(row[f"workers_{n}"]["rps"] > 0 for row in result["results"] for n in (1, 2))
    # the two-worker server has a supervisor and two workers, each mapping the table
    assert result["memory"]["2"]["supervisor_pss"] > 0 and result["memory"]["2"]["pss"] > result["memory"]["1"]["pss"]


@pytest.mark.external
@pytest.mark.slow
def test_redis_bench_smoke(tmp_path: Path) -> None:
    from benchmarks import redis_bench
    from tests.service.conftest import require_binary

    require_binary("redis-server")
    args = ["--rows", "2000", "--seconds", "0.5", "--slices", "1", "--concurrency", "2", "--out", str(tmp_path)]
    assert redis_bench.main(args) == 0
    result = json.loads((tmp_path / "redis.json").read_text())
    (row,) = result["results"]
    assert all(row[side]["rps"] > 0 for side in ("redis", "http", "grpc", "bare_grpc"))
    # Redis holds 2000 rows of 512 bytes; embserve's table is int8 (128 + 4 bytes a row)
    assert result["memory"]["redis"]["used_memory"] > 2000 * 512
    assert result["embserve_table_bytes"] < 2000 * 512 / 3


@pytest.mark.external
@pytest.mark.slow
def test_update_bench_smoke(tmp_path: Path) -> None:
    from benchmarks import update_bench
    from tests.service.conftest import require_binary

    require_binary("redis-server")
    args = ["--rows", "3000", "--push-rows", "2000", "--seconds", "2", "--slices", "1", "--out", str(tmp_path)]
    assert update_bench.main(args) == 0
    report = json.loads((tmp_path / "update.json").read_text())
    assert report["throughput"]["rows"] == 2000 and report["throughput"]["rows_per_s"] > 0
    assert report["latency"]["quiet"]["requests"] > 0 and report["latency"]["updating"]["requests"] > 0
    assert "update throughput end to end" in (tmp_path / "update.md").read_text()


@pytest.mark.slow
def test_plan_speed_smoke(tmp_path: Path) -> None:
    from benchmarks import plan_speed

    assert plan_speed.main(["--rows", "3000", "--dim", "16", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "plan_speed.json").read_text())
    assert report["plan_s"] > 0 and report["build_s"] > 0 and report["table_bytes"] <= report["budget_bytes"]


@pytest.mark.slow
def test_dlrm_bench_smoke(tmp_path: Path) -> None:
    from benchmarks import dlrm_bench

    args = ["--max-rows", "500", "--batches", "2", "--seconds", "0.3", "--cache", str(tmp_path / "cache")]
    assert dlrm_bench.main([*args, "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "dlrm.json").read_text())
    assert len(payload["rows"]) == 26 and max(payload["rows"]) == 500
    assert {(r["codec"], r["batch"]) for r in payload["results"]} == {("int8", 2), ("pq", 2)}
    for r in payload["results"]:
        assert all(r[k]["rps"] > 0 for k in ("grpc_multi", "http_multi", "grpc_singles", "in_process"))
        assert r["ids_per_request"] > 26 * 2
    assert "multi / singles" in (tmp_path / "dlrm.md").read_text()
    # the artifacts are cached: a second build finds every one and writes nothing
    built = sorted(p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("manifest.json"))
    dlrm_bench.build_tables(tmp_path / "cache" / "rows500-d64", dlrm_bench.table_rows(500), 64, ["int8", "pq"])
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("manifest.json")) == built


def test_first_start_splits_the_servers_log_into_build_and_warm_up() -> None:
    # a real first start takes a minute of compiling, too long for the suite: its log reading is
    # held to the lines the server writes (service/demo.py, core.py, server.py)
    from benchmarks import first_start

    log = "\n".join(
        [
            "INFO:     Started server process [13303]",
            "2026-12-07 16:57:46,602 INFO embserve: building the demo table (100000 rows) in /h/demo",
            "2026-12-07 16:58:29,617 INFO embserve: no table configured: serving the built-in demo table",
            "2026-12-07 16:59:50,175 INFO embserve: loaded table 'demo': 100000 x 64 pq (12659840 bytes) from /h",
            "2026-12-07 16:59:50,175 INFO embserve: ready: serving demo",
        ]
    )
    phases = first_start.log_phases(log)
    assert phases == pytest.approx({"build_s": 43.015, "load_and_warm_s": 80.558})
    root = Path(__file__).resolve().parents[1]
    sources = "".join((root / "service" / name).read_text() for name in ("demo.py", "core.py", "server.py"))
    for said in ("building the demo table", "no table configured: serving", '"ready: serving'):
        assert said in sources
    assert first_start.log_phases("INFO:     Started server process [1]") == {}


def test_an_unknown_section_is_refused_naming_the_sections(capsys: pytest.CaptureFixture[str]) -> None:
    # found by a review: it ran the set-up, then failed with a numba traceback
    from benchmarks.perf import main

    with pytest.raises(SystemExit) as refused:
        main(["--smoke", "--sections", "lookup,nosuch"])
    assert refused.value.code == 2
    assert "no section nosuch; the sections are lookup, pq" in capsys.readouterr().err
