"""The offline CLI end to end: compress -> inspect -> eval, and its error messages."""

from __future__ import annotations

import argparse
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.cli import run_command
from service.cli import main
from tests.conftest import low_rank_table


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "table.npy"
    np.save(path, low_rank_table(2000, 32, seed=5))
    return path


def test_compress_inspect_eval(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "art"
    assert (
        main(
            [
                "compress",
                str(source),
                "--codec",
                "pq",
                "--subspaces",
                "8",
                "--bits",
                "8",
                "--rerank",
                "int8",
                "--iterations",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 2000 and info["codec"] == "pq" and info["rerank"]["codec"] == "int8"
    assert info["checksums_verified"] is True and info["nbytes"] > 0
    assert info["compression_ratio"] == pytest.approx(info["fp32_nbytes"] / info["nbytes"], rel=1e-3)
    qids = tmp_path / "qids.npy"
    np.save(qids, np.arange(0, 2000, 40))
    assert (
        main(
            [
                "eval",
                str(out),
                "--source",
                str(source),
                "--query-ids",
                str(qids),
                "--k",
                "10",
                "--oversample",
                "10",
                "--exclude-self",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"recall_at_k", "rel_l2_error", "nbytes", "compression_ratio", "search_ms_per_query"}
    assert result["recall_at_k"] >= 0.9 and result["rel_l2_error"] < 0.02
    queries = tmp_path / "q.npy"
    np.save(queries, np.load(source)[:20] + 0.1)
    truth = tmp_path / "truth.npy"
    x = np.load(source)
    np.save(truth, np.argsort(-(np.load(queries) @ x.T), axis=1)[:, :10])
    assert (
        main(
            [
                "eval",
                str(out),
                "--source",
                str(source),
                "--queries",
                str(queries),
                "--truth",
                str(truth),
                "--oversample",
                "10",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["recall_at_k"] >= 0.9


def test_errors_are_one_line_with_status_2(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compress", str(source), "--codec", "int8", "--subspaces", "4", "--out", str(tmp_path / "x")]) == 2
    assert "no option 'subspaces'" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    assert main(["compress", str(bad), "--codec", "int8", "--out", str(tmp_path / "y")]) == 2
    assert "is not a .npy, .npz, safetensors or PyTorch checkpoint file" in capsys.readouterr().err
    bad.write_bytes(b"\x93NUMPY\x01\x00garbage")
    assert main(["compress", str(bad), "--codec", "int8", "--out", str(tmp_path / "y")]) == 2
    assert "as a .npy file" in capsys.readouterr().err


def test_unwritable_outputs_and_unusable_values_are_one_line_with_status_2(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by a probe: an --out below a file printed a traceback (NotADirectoryError), and a
    # value of 1e30 trained a PQ table that silently replaced its row by an unrelated codeword
    assert main(["compress", str(source), "--codec", "int8", "--out", str(source / "sub")]) == 2
    err = capsys.readouterr().err
    assert f"{str(source)!r} is not a directory" in err and len(err.splitlines()) == 1
    # an output that holds an input would be replaced with it: import's --force deleted its checkpoint,
    # plan's --out overwrote its input
    model = tmp_path / "models" / "emb.npy"
    model.parent.mkdir()
    np.save(model, np.load(source))
    assert main(["import", str(model), "--out", str(model.parent), "--force"]) == 2
    assert "is or holds the input" in capsys.readouterr().err and model.exists()
    # compress --force over the artifact its input belongs to removed the input with the old version
    assert main(["compress", str(source), "--codec", "fp32", "--out", str(tmp_path / "a")]) == 0
    inner = tmp_path / "a" / "tier0--values.npy"
    assert main(["compress", str(inner), "--codec", "int8", "--out", str(tmp_path / "a"), "--force"]) == 2
    assert "is a file of the artifact --force replaces" in capsys.readouterr().err and inner.exists()
    # the same through a link to it (a probe's --force deleted the file the link named)
    link = tmp_path / "link.npy"
    link.symlink_to(inner)
    assert main(["compress", str(link), "--codec", "int8", "--out", str(tmp_path / "a"), "--force"]) == 2
    assert "is a file of the artifact --force replaces" in capsys.readouterr().err and inner.exists()
    # import --force swaps the whole directory: one that is not an earlier import keeps its files
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    assert main(["import", str(source), "--out", str(tmp_path / "notes"), "--force"]) == 2
    assert "no tables.json" in capsys.readouterr().err and (tmp_path / "notes" / "todo.txt").exists()
    assert main(["compress", str(source), "--codec", "int8", "--out", "/proc/nope"]) == 2
    assert "'/proc/nope' cannot be made" in capsys.readouterr().err
    assert main(["plan", str(model), "--budget", "64KiB", "--out", str(model)]) == 2
    assert "is or holds the input" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(model), np.load(source))
    huge = tmp_path / "huge.npy"
    x = np.load(source)
    x[9, 0] = 1e30
    np.save(huge, x)
    assert main(["compress", str(huge), "--codec", "pq", "--subspaces", "4", "--out", str(tmp_path / "h")]) == 2
    assert "table[9] holds a value of magnitude 1e+30; values must be below 2**50" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


def test_an_existing_output_that_cannot_be_written_is_refused_before_training(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # found by a review: compress --force over an artifact on a read-only mount trained (minutes of
    # OPQ) and failed only when it wrote; the check is os.access, made to answer as a read-only
    # filesystem does here (the suite runs as root, whom permission bits do not stop)
    import runtime.importer

    out, plan = tmp_path / "a", tmp_path / "plans" / "p.json"
    assert main(["compress", str(source), "--codec", "fp32", "--out", str(out)]) == 0
    assert main(["plan", str(source), "--budget", "64KiB", "--out", str(plan)]) == 0
    capsys.readouterr()
    real_access = runtime.importer.os.access
    read_only = {out, plan.parent}
    monkeypatch.setattr(
        runtime.importer.os, "access", lambda p, mode: Path(p) not in read_only and real_access(p, mode)
    )
    assert main(["compress", str(source), "--codec", "pq", "--opq", "--out", str(out), "--force"]) == 2
    assert f"output {str(out)!r} cannot be written: {str(out)!r} is not writable" in capsys.readouterr().err
    assert main(["plan", str(source), "--budget", "64KiB", "--out", str(plan), "--force"]) == 2
    assert f"{str(plan.parent)!r} is not writable" in capsys.readouterr().err
    assert runtime.load_table(out).codec == "fp32"


def test_compress_tiers_and_keys_from_files(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = np.load(source).shape[0]
    tiers = tmp_path / "tiers.json"
    tiers.write_text(
        json.dumps(
            [
                {"rows": {"start": 0, "stop": 50}, "codec": "int8"},
                {"rows": {"start": 50, "stop": n}, "codec": "pq", "subspaces": 4, "iterations": 3, "dim": 8},
            ]
        )
    )
    keys = tmp_path / "keys.npy"
    np.save(keys, np.arange(n, dtype=np.int64) * -3)
    out = tmp_path / "tiered"
    args = ["compress", str(source), "--tiers", str(tiers), "--keys", str(keys), "--missing", "zeros"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    assert "int8 | pq" in capsys.readouterr().out
    table = runtime.load_table(out)
    assert table.keyed and table.missing == "zeros" and [t.rows for t in table.tiers] == [50, n - 50]
    assert table.tiers[1].projection is not None and table.tiers[1].projection.basis.shape[1] == 8
    assert main(["compress", str(source), "--out", str(tmp_path / "none")]) == 2
    assert "--codec or --tiers" in capsys.readouterr().err
    # eval of a tiered, keyed artifact: found by a probe, it decoded every row with tier 0's codec
    # (reading past its arrays: NaN or a bus error) and compared keys with row ids (recall ~0)
    x = np.load(source)
    qids, queries = tmp_path / "qkeys.npy", tmp_path / "q.npy"
    np.save(qids, np.arange(0, n, 97, dtype=np.int64) * -3)
    np.save(queries, x[:12] + 0.05)
    evals = {}
    for name, extra in (
        ("by_key", ["--query-ids", str(qids), "--exclude-self"]),
        ("by_vector", ["--queries", str(queries)]),
    ):
        assert main(["eval", str(out), "--source", str(source), "--k", "10", *extra]) == 0
        evals[name] = json.loads(capsys.readouterr().out)
        assert evals[name]["recall_at_k"] >= 0.6 and evals[name]["tiers"] == 2
        assert 0 < evals[name]["rel_l2_error"] < 0.5 and evals[name]["primary_rel_l2_error"] is None
    truth = tmp_path / "truth.npy"
    np.save(truth, -3 * np.argsort(-(np.load(queries) @ x.T), axis=1)[:, :10])
    assert main(["eval", str(out), "--source", str(source), "--queries", str(queries), "--truth", str(truth)]) == 0
    assert json.loads(capsys.readouterr().out)["recall_at_k"] == evals["by_vector"]["recall_at_k"]
    for bad, message in ((np.full((12, 10), 1), "truth[0][0] = 1 is not a key"), (np.ones((12, 10)), "integer ids")):
        np.save(truth, bad)
        assert main(["eval", str(out), "--source", str(source), "--queries", str(queries), "--truth", str(truth)]) == 2
        assert message in capsys.readouterr().err
    assert main(["compress", str(source), "--tiers", str(tiers), "--subspaces", "4", "--out", str(tmp_path / "z")]) == 2
    assert "inside each tier" in capsys.readouterr().err


@pytest.mark.parametrize(
    "tier",
    [
        {"rows": {"start": "0"}, "codec": "int8"},
        {"rows": {"start": -5}, "codec": "int8"},
        {"rows": {"stop": 5000}, "codec": "int8"},
        {"rows": {}, "codec": "int8", "rerank": "fp16", "rerank_options": [1]},
        {"rows": {}, "codec": "int8", "rerank_options": {}},
    ],
)
def test_ill_typed_tier_files_are_one_line_with_status_2(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str], tier: dict[str, object]
) -> None:
    tiers = tmp_path / "tiers.json"
    tiers.write_text(json.dumps([tier]))
    assert main(["compress", str(source), "--tiers", str(tiers), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "tiers[0]" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_pq_iterations_may_be_zero_as_rq_and_shared_say(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["compress", str(source), "--codec", "pq", "--subspaces", "4", "--quiet"]
    assert main([*args, "--iterations", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "pq option iterations must be a non-negative integer, got -1" in capsys.readouterr().err
    assert main([*args, "--opq", "--opq-iterations", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "pq option opq_iterations must be a non-negative integer, got -1" in capsys.readouterr().err
    assert main([*args, "--subspaces", "0", "--out", str(tmp_path / "x")]) == 2
    assert "pq option subspaces must be a positive integer, got 0" in capsys.readouterr().err
    # 0: the k-means++ seeds are the codebooks
    assert main([*args, "--iterations", "0", "--out", str(tmp_path / "zero")]) == 0


def test_sizes_against_fp32_say_smaller_or_larger() -> None:
    from runtime.planner import against_fp32

    assert against_fp32(3.77) == "3.77× smaller than fp32"
    # a small PQ table: its codeword tables outweigh its codes
    assert against_fp32(0.86) == "1.16× larger than fp32"
    assert against_fp32(1.0) == "the size of fp32"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # each ended in a traceback (found by a probe)
        (["--codec", "int8", "--seed", "-1"], "seed must be a non-negative integer"),
        (["--codec", "shared", "--centroids", "70000"], "shared centroids above 65536 cannot be trained"),
        (["--codec", "rq", "--codebooks", "1000000"], "rq option codebooks must be at most 256 to train"),
        (["--codec", "rq", "--beam", "1000000000"], "rq option beam must be at most 256 to train"),
    ],
)
def test_untrainable_options_are_one_line_with_status_2(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["compress", str(source), *args, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_hostile_json_is_one_line_with_status_2(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # an integer of 5,000 digits (ValueError past Python's limit) and deep nesting (RecursionError)
    for text in ("[" + "9" * 5000 + "]", "[" * 200_000 + "]" * 200_000):
        tiers = tmp_path / "tiers.json"
        tiers.write_text(text)
        assert main(["compress", str(source), "--tiers", str(tiers), "--out", str(tmp_path / "o")]) == 2
        assert "cannot read tiers" in capsys.readouterr().err
    assert main(["compress", str(source), "--codec", "int8", "--out", str(tmp_path / "art"), "--quiet"]) == 0
    (tmp_path / "art" / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    assert main(["inspect", str(tmp_path / "art")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_plan_and_library_refuse_what_compress_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # found by a probe: plan took an int64 .npy and printed a compress command that failed on it;
    # k=0 divided by zero; a version that is not a string failed at save, after training
    ints = tmp_path / "ints.npy"
    np.save(ints, np.arange(64).reshape(16, 4))
    assert main(["plan", str(ints), "--budget", "1MiB", "--out", str(tmp_path / "plan.json")]) == 2
    assert "an embedding table must be floating point" in capsys.readouterr().err
    x = low_rank_table(300, 16)
    with pytest.raises(runtime.InvalidRequest, match="k must be a positive integer, got 0"):
        runtime.plan(x, "64KiB", queries=x[:5], k=0)
    with pytest.raises(runtime.InvalidRequest, match="version must be a string, got int"):
        runtime.compress(x, "int8", version=3)  # type: ignore[arg-type]
    with pytest.raises(runtime.InvalidRequest, match=r"seed must be a non-negative integer, got 1\.5"):
        runtime.compress(x, "int8", seed=1.5)  # type: ignore[arg-type]


def test_special_files_and_exhausted_memory_are_one_line_with_status_2(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by a review: --tiers /dev/zero read forever (memory growing); running out of memory
    # printed numpy's traceback. A pipe (--menu <(...)) is read as a file is (a second review)
    for path in ("/dev/zero", str(tmp_path)):
        assert main(["compress", str(source), "--tiers", path, "--out", str(tmp_path / "a")]) == 2
        assert f"cannot read tiers {path!r}: not a file or a pipe" in capsys.readouterr().err
        assert main(["plan", str(source), "--budget", "1MiB", "--menu", path, "--out", str(tmp_path / "p.json")]) == 2
        assert f"cannot read menu {path!r}: not a file or a pipe" in capsys.readouterr().err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(json.dumps([{"codec": "int8"}, {"codec": "fp32"}])))
    writer.start()
    assert main(["plan", str(source), "--budget", "1MiB", "--menu", str(fifo), "--out", str(tmp_path / "p.json")]) == 0
    writer.join(10)
    assert (tmp_path / "p.json").is_file()

    def allocate(_: argparse.Namespace) -> int:
        np.empty(2**42, np.float32)  # 16 TiB: numpy's own allocation error
        return 0

    assert run_command(argparse.Namespace(command="compress", func=allocate)) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("embserve compress: error: out of memory: Unable to allocate 16.0 TiB")
        and len(err.splitlines()) == 1
    )


def test_eval_refuses_a_flag_that_does_nothing_and_an_integer_source(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by a review: --exclude-self beside --queries changed nothing, unseen; an int64 --source
    # was cast and scored (relative error 0.9), where compress refuses such an input
    art, queries, ints = tmp_path / "a", tmp_path / "q.npy", tmp_path / "ints.npy"
    assert main(["compress", str(source), "--codec", "fp32", "--out", str(art), "--quiet"]) == 0
    np.save(queries, np.load(source)[:4])
    np.save(ints, np.load(source).astype(np.int64))
    capsys.readouterr()
    assert main(["eval", str(art), "--source", str(source), "--queries", str(queries), "--exclude-self"]) == 2
    assert "--exclude-self leaves each stored query id out of its results: give --query-ids" in capsys.readouterr().err
    assert main(["eval", str(art), "--source", str(ints), "--queries", str(queries)]) == 2
    assert "has dtype int64; an embedding table must be floating point" in capsys.readouterr().err
    assert main(["eval", str(art), "--source", str(source), "--queries", str(queries)]) == 0


def test_missing_zeros_without_keys_is_refused(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by a review: --missing zeros without --keys was accepted and did nothing
    args = ["compress", str(source), "--codec", "int8", "--missing", "zeros", "--out", str(tmp_path / "a")]
    assert main(args) == 2
    assert "missing='zeros' is for keyed tables: give keys too" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    # and --version '', which became the creation time
    assert main(["compress", str(source), "--codec", "int8", "--version", "", "--out", str(tmp_path / "a")]) == 2
    assert "version must be a non-empty label" in capsys.readouterr().err
