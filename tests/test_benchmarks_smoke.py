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
                "lookup,pq,quantized,hamming,compress,startup",
            ]
        )
        == 0
    )
    payload = json.loads((tmp_path / "perf.json").read_text())
    assert payload["machine"]["cores"] >= 1 and payload["copy_bandwidth_gbs"] > 0
    sections = {row["section"] for row in payload["rows"]}
    expected = {"lookup", "pq adc top-100", "hamming top-100", "exact search on quantized rows, top-100"}
    if importlib.util.find_spec("faiss") is not None:  # compression rows exist only beside their peer
        expected.add("pq compression (train + encode)")
    assert expected <= sections
    assert all(row["ours"] > 0 for row in payload["rows"])
    assert payload["startup"]["first_search_ms"] > 0
    assert "| op | threads |" in (tmp_path / "perf.md").read_text()


@pytest.mark.slow
def test_service_bench_smoke(tmp_path: Path) -> None:
    from benchmarks import service_bench

    args = ["--rows", "2000", "--seconds", "2", "--slices", "2", "--concurrency", "2", "--out", str(tmp_path)]
    assert service_bench.main(args) == 0
    rows = json.loads((tmp_path / "service.json").read_text())["results"]
    assert {row["transport"] for row in rows} == {"grpc", "http"}
    assert all(row["ours"]["rps"] > 0 and row["bare"]["rps"] > 0 for row in rows)
    assert "fraction of bare" in (tmp_path / "service.md").read_text()


def test_tables_bench_smoke(tmp_path: Path) -> None:
    args = ["--smoke", "--rows", "3000", "--reps", "1", "--out", str(tmp_path), "--sections", "tables"]
    assert perf.main(args) == 0
    rows = json.loads((tmp_path / "perf.json").read_text())["rows"]
    ops = {row["op"].split(",")[0] for row in rows if row["section"] == "tables"}
    assert {"keyed lookup int8", "upsert throughput", "lookup p99 B=1024 while upserting 10000 rows/s"} <= ops
    assert all(row["ours"] > 0 for row in rows)


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
