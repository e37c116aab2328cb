"""Tables from training checkpoints: .npy, safetensors (read without torch) and PyTorch state dicts,
`embserve compress --tensor`, `embserve import` and the tables.json it writes."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runtime
from runtime.errors import InvalidRequest
from runtime.importer import read_tables_file
from runtime.sources import embedding_keys, open_source, table_name
from service.cli import main
from tests.conftest import low_rank_table

ROOT = Path(__file__).resolve().parents[2]
EBC_KEY = "sparse_arch.embedding_bag_collection.embedding_bags.t_user.weight"


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    """A safetensors file by its published layout: u64 header length, JSON header, data."""
    header: dict[str, Any] = {"__metadata__": {"format": "np"}}
    data = b""
    for key, (dtype, shape, raw) in tensors.items():
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_safetensors_from_the_safetensors_writer_read_without_torch(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    users = low_rank_table(300, 16, seed=1)
    half = low_rank_table(50, 8, seed=2).astype(np.float16)
    path = tmp_path / "model.safetensors"
    save_file({"user_emb.weight": users, "half": half, "steps": np.arange(4, dtype=np.int64)}, str(path))
    source = open_source(path)
    assert source.format == "safetensors"
    np.testing.assert_array_equal(source.read("user_emb.weight"), users)
    np.testing.assert_array_equal(source.read("half"), half)
    assert source.tensors["steps"].dtype == "int64" and not source.tensors["steps"].is_float
    # torch made unimportable: the safetensors path must not need it
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from runtime.sources import open_source\n"
        f"print(open_source({str(path)!r}).read('user_emb.weight').sum())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout) == pytest.approx(float(users.sum()), rel=1e-5)


def test_bfloat16_safetensors_widen_exactly(tmp_path: Path) -> None:
    values = low_rank_table(20, 8, seed=3)
    bits = (values.view(np.uint32) >> 16).astype("<u2")  # truncated to bf16
    write_safetensors(tmp_path / "bf.safetensors", {"emb.weight": ("BF16", [20, 8], bits.tobytes())})
    got = open_source(tmp_path / "bf.safetensors").read("emb.weight")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (bits.astype(np.uint32) << 16).view(np.float32))
    assert np.abs(got - values).max() <= np.abs(values).max() / 128


def test_embedding_keys_follow_torch_and_torchrec_naming(tmp_path: Path) -> None:
    shapes = {
        EBC_KEY: [10, 4],
        "sparse_arch.embedding_collection.embeddings.t_ctx.weight": [10, 4],
        "user_emb.weight": [10, 4],
        "over_arch.0.weight": [4, 4],  # nn.Linear: has a bias
        "over_arch.0.bias": [4],
        "emb_proj.weight": [4, 4],
        "emb_proj.bias": [4],
        "item_embedding.weight": [10, 4, 2],  # not 2-D
    }
    tensors = {k: ("F32", v, np.zeros(int(np.prod(v)), "<f4").tobytes()) for k, v in shapes.items()}
    write_safetensors(tmp_path / "m.safetensors", tensors)
    keys = embedding_keys(open_source(tmp_path / "m.safetensors").tensors)
    assert keys == [EBC_KEY, "sparse_arch.embedding_collection.embeddings.t_ctx.weight", "user_emb.weight"]
    assert [table_name(k) for k in keys] == ["t_user", "t_ctx", "user_emb"]


def test_non_npy_input_gets_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "items.csv"
    csv.write_text("1,2,3\n4,5,6\n")
    assert main(["compress", str(csv), "--codec", "int8", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not a .npy, .npz, safetensors or PyTorch checkpoint file" in err and "pickle" not in err
    assert not (tmp_path / "out").exists()
    # eval's inputs too
    x = tmp_path / "x.npy"
    np.save(x, low_rank_table(100, 8))
    assert main(["compress", str(x), "--codec", "fp32", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "a"), "--source", str(x), "--queries", str(csv)]) == 2
    err = capsys.readouterr().err
    assert "is not a .npy file" in err and "pickle" not in err


def test_compress_refuses_to_overwrite_an_artifact_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(first, low_rank_table(100, 8, seed=1))
    np.save(second, low_rank_table(100, 8, seed=2))
    out = tmp_path / "art"
    assert main(["compress", str(first), "--codec", "fp32", "--out", str(out), "--quiet"]) == 0
    before = (out / "manifest.json").read_bytes()
    assert main(["compress", str(second), "--codec", "fp32", "--out", str(out), "--quiet"]) == 2
    assert "already holds an artifact; pass --force" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before
    assert main(["compress", str(second), "--codec", "fp32", "--out", str(out), "--quiet", "--force"]) == 0
    np.testing.assert_array_equal(runtime.load_table(out).lookup(np.arange(100)), np.load(second))


def test_compress_a_safetensors_tensor(tmp_path: Path) -> None:
    users = low_rank_table(200, 16, seed=4)
    write_safetensors(tmp_path / "m.safetensors", {EBC_KEY: ("F32", [200, 16], users.astype("<f4").tobytes())})
    out = tmp_path / "users"
    args = ["compress", str(tmp_path / "m.safetensors"), "--tensor", EBC_KEY, "--codec", "fp32", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    table = runtime.load_table(out)
    np.testing.assert_array_equal(table.lookup(np.arange(200)), users)
    assert table.provenance["source"].endswith(f"m.safetensors:{EBC_KEY}")


def test_import_safetensors_writes_tables_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users, items = low_rank_table(300, 16, seed=5), low_rank_table(120, 8, seed=6)
    tensors = {
        EBC_KEY: ("F32", [300, 16], users.tobytes()),
        "sparse_arch.embedding_bag_collection.embedding_bags.t_item.weight": ("F32", [120, 8], items.tobytes()),
        "dense.0.weight": ("F32", [8, 8], np.zeros(64, "<f4").tobytes()),
        "dense.0.bias": ("F32", [8], np.zeros(8, "<f4").tobytes()),
    }
    write_safetensors(tmp_path / "m.safetensors", tensors)
    out = tmp_path / "tables"
    assert main(["import", str(tmp_path / "m.safetensors"), "--out", str(out), "--codec", "fp32"]) == 0
    assert "wrote 2 tables" in capsys.readouterr().out
    index = json.loads((out / "tables.json").read_text())
    assert [(t["name"], t["rows"], t["dim"], t["codec"]) for t in index["tables"]] == [
        ("t_user", 300, 16, "fp32"),
        ("t_item", 120, 8, "fp32"),
    ]
    specs = dict(read_tables_file(out / "tables.json"))
    np.testing.assert_array_equal(runtime.load_table(specs["t_user"]).lookup(np.arange(300)), users)
    np.testing.assert_array_equal(runtime.load_table(specs["t_item"]).lookup(np.arange(120)), items)
    # a second import into the same directory needs --force
    assert main(["import", str(tmp_path / "m.safetensors"), "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "m.safetensors"), "--out", str(out), "--force"]) == 0
    assert json.loads((out / "tables.json").read_text())["tables"][0]["codec"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "tables"]  # no temporaries left


def test_import_npy_is_one_table_named_after_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "items.npy", low_rank_table(100, 8))
    # as the README says: no --tensor needed, whatever the file is called
    assert main(["import", str(tmp_path / "items.npy"), "--out", str(tmp_path / "t")]) == 0
    assert read_tables_file(tmp_path / "t") == [("items", tmp_path / "t" / "items")]
    assert main(["import", str(tmp_path / "items.npy"), "--out", str(tmp_path / "u"), "--tensor", "items"]) == 0
    np.save(tmp_path / "ids.npy", np.arange(40).reshape(10, 4))
    assert main(["import", str(tmp_path / "ids.npy"), "--out", str(tmp_path / "v")]) == 2
    assert "has dtype int64; an embedding table must be floating point" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ("missing.weight", f"has no tensor 'missing.weight'; embedding-like keys: {EBC_KEY}"),
        ("counts", "has shape [10]; an embedding table is 2-D"),
        ("ids.weight", "has dtype int64; an embedding table must be floating point"),
    ],
)
def test_bad_tensors_are_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tensor: str, message: str
) -> None:
    tensors = {
        EBC_KEY: ("F32", [10, 4], np.ones(40, "<f4").tobytes()),
        "counts": ("F32", [10], np.ones(10, "<f4").tobytes()),
        "ids.weight": ("I64", [10, 4], np.ones(40, "<i8").tobytes()),
    }
    write_safetensors(tmp_path / "m.safetensors", tensors)
    for command in (["import", "--tensor", EBC_KEY, "--tensor", tensor], ["compress", "--tensor", tensor]):
        args = [
            command[0],
            str(tmp_path / "m.safetensors"),
            *command[1:],
            "--codec",
            "int8",
            "--out",
            str(tmp_path / "o"),
        ]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_import_of_a_file_without_embeddings_lists_what_it_has(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "m.safetensors", {"proj": ("F32", [4, 4], np.zeros(16, "<f4").tobytes())})
    with pytest.raises(
        InvalidRequest, match="no 2-D floating-point tensor is named like an embedding table; 2-D tensors: proj"
    ):
        runtime.importer.import_tables(open_source(tmp_path / "m.safetensors"), tmp_path / "o", "int8")
    assert not (tmp_path / "o").exists()


def write_raw_header(path: Path, header: dict[str, Any], data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F32", "shape": [-4, -16], "data_offsets": [0, 256]}, "shape must be a list of non-negative"),
        ({"dtype": "F32", "shape": [4.7, 16], "data_offsets": [0, 256]}, r"shape must be .*got \[4\.7, 16\]"),
        ({"dtype": "F32", "shape": [True, 64], "data_offsets": [0, 256]}, "shape must be a list of non-negative"),
        ({"dtype": "F32", "shape": 64, "data_offsets": [0, 256]}, "shape must be a list of non-negative"),
        ({"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 0]}, "larger than any array can be"),
        ({"dtype": "F32", "shape": [2**62, 0], "data_offsets": [0, 0]}, "larger than any array can be"),
        ({"dtype": "F32", "shape": [2**30, 2**30], "data_offsets": [0, 0]}, "hold 0 bytes, but shape"),
        (
            {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 256]},
            "hold 256 bytes, but shape \\[4, 8\\] of F32 is 128",
        ),
        ({"dtype": ["F32"], "shape": [4, 16], "data_offsets": [0, 256]}, "dtype must be a string"),
        ({"dtype": "F32", "shape": [4, 16], "data_offsets": [0, "256"]}, "data_offsets must be two integers"),
        ({"dtype": "F32", "shape": [4, 16], "data_offsets": [0]}, "data_offsets must be two integers"),
        ({"dtype": "F32", "shape": [4, 16], "data_offsets": [0, 512]}, "lie outside the file's 256 data bytes"),
        ({"dtype": "F32", "shape": [4, 16], "data_offsets": [-1, 255]}, "lie outside"),
        ({"dtype": "F32", "shape": [4, 16]}, "has no 'data_offsets'"),
        ([1, 2], "header entry must be an object"),
    ],
)
def test_a_malformed_safetensors_header_entry_is_refused_naming_tensor_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: Any, message: str
) -> None:
    path = tmp_path / "m.safetensors"
    write_raw_header(path, {"emb.weight": entry}, np.ones(64, "<f4").tobytes())
    with pytest.raises(InvalidRequest, match=r"tensor 'emb\.weight': .*" + message):
        open_source(path)
    for command in (["import"], ["compress", "--tensor", "emb.weight"]):
        assert main([command[0], str(path), *command[1:], "--codec", "int8", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "emb.weight" in err and len(err.strip().splitlines()) == 1, err


def test_an_unknown_safetensors_dtype_is_listed_and_refused_when_read(tmp_path: Path) -> None:
    # a newer dtype beside the table does not keep the table from being read
    path = tmp_path / "m.safetensors"
    header = {
        "emb.weight": {"dtype": "F32", "shape": [4, 16], "data_offsets": [0, 256]},
        "scale": {"dtype": "F8_E4M3", "shape": [4, 4], "data_offsets": [256, 272]},
    }
    write_raw_header(path, header, np.ones(68, "<f4").tobytes())
    source = open_source(path)
    np.testing.assert_array_equal(source.read("emb.weight"), np.ones((4, 16), np.float32))
    assert source.tensors["scale"].dtype == "F8_E4M3"
    with pytest.raises(InvalidRequest, match="dtype F8_E4M3, which embserve cannot read"):
        source.read("scale")


def test_import_names_the_dtype_of_the_2d_tensors_it_passed_over(tmp_path: Path) -> None:
    tensors = {
        "emb.weight": ("I32", [4, 4], np.zeros(16, "<i4").tobytes()),
        "proj": ("F32", [4, 4], np.zeros(16, "<f4").tobytes()),
    }
    write_safetensors(tmp_path / "m.safetensors", tensors)
    with pytest.raises(InvalidRequest, match=r"2-D tensors: emb\.weight \(int32, not floating point\), proj$"):
        runtime.importer.import_tables(open_source(tmp_path / "m.safetensors"), tmp_path / "o", "int8")


def test_pytorch_checkpoint_without_torch_names_the_extra(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed: writing the checkpoint needs it")
    torch.save({"emb.weight": torch.zeros(4, 2)}, tmp_path / "m.pt")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from service.cli import main\n"
        f"sys.exit(main(['import', {str(tmp_path / 'm.pt')!r}, '--out', {str(tmp_path / 'o')!r}]))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2
    assert "reading it needs torch (pip install 'embserve[torch]')" in run.stderr


# ---- PyTorch checkpoints (torch is in the test extra; without it these skip) ----------------------


def _torch() -> Any:
    return pytest.importorskip("torch", reason="torch is not installed (pip install 'embserve[torch]')")


def _dlrm_like_state_dict(torch: Any) -> dict[str, Any]:
    """A state dict named as TorchRec's DLRM names it, from real torch modules."""
    nn = torch.nn
    Module: Any = nn.Module
    torch.manual_seed(0)

    class EmbeddingBagCollection(Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding_bags = nn.ModuleDict(
                {"t_user": nn.EmbeddingBag(300, 16, mode="sum"), "t_item": nn.EmbeddingBag(200, 16, mode="sum")}
            )

    class Sparse(Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding_bag_collection = EmbeddingBagCollection()

    class Model(Module):
        def __init__(self) -> None:
            super().__init__()
            self.sparse_arch = Sparse()
            self.genre_emb = nn.Embedding(20, 8)
            self.over_arch = nn.Sequential(nn.Linear(40, 8), nn.ReLU(), nn.Linear(8, 1))
            self.register_buffer("seen", torch.zeros(300, 2, dtype=torch.int64))

    return dict(Model().state_dict())


def test_import_pytorch_state_dict(tmp_path: Path) -> None:
    torch = _torch()
    state = _dlrm_like_state_dict(torch)
    torch.save({"epoch": 3, "model_state_dict": state}, tmp_path / "model.pt")
    out = tmp_path / "tables"
    assert main(["import", str(tmp_path / "model.pt"), "--out", str(out), "--codec", "fp32"]) == 0
    specs = dict(read_tables_file(out / "tables.json"))
    assert sorted(specs) == ["genre_emb", "t_item", "t_user"]
    expected = {
        "t_user": state[EBC_KEY],
        "t_item": state["sparse_arch.embedding_bag_collection.embedding_bags.t_item.weight"],
        "genre_emb": state["genre_emb.weight"],
    }
    for name, weight in expected.items():
        table = runtime.load_table(specs[name])
        np.testing.assert_array_equal(table.lookup(np.arange(table.rows)), weight.numpy())


def test_compress_tensor_from_pytorch_checkpoint_in_bfloat16(tmp_path: Path) -> None:
    torch = _torch()
    state = _dlrm_like_state_dict(torch)
    state[EBC_KEY] = state[EBC_KEY].to(torch.bfloat16)
    torch.save(state, tmp_path / "model.pt")
    out = tmp_path / "users"
    assert (
        main(["compress", str(tmp_path / "model.pt"), "--tensor", EBC_KEY, "--codec", "fp32", "--out", str(out)]) == 0
    )
    got = runtime.load_table(out).lookup(np.arange(300))
    np.testing.assert_array_equal(got, state[EBC_KEY].to(torch.float32).numpy())


def test_pytorch_checkpoint_with_pickled_objects_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch = _torch()
    # a class from the test module: an unrestricted unpickler would load it, weights_only must not
    torch.save({"emb.weight": torch.zeros(4, 2), "config": Path("/tmp")}, tmp_path / "model.pt")
    assert main(["import", str(tmp_path / "model.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "as a weights-only PyTorch checkpoint: it holds pickled objects other than tensors" in err, err
    assert not (tmp_path / "o").exists()


def test_compress_of_an_integer_npy_is_refused_as_import_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "ids.npy", np.arange(40).reshape(10, 4))
    assert main(["compress", str(tmp_path / "ids.npy"), "--codec", "int8", "--out", str(tmp_path / "o")]) == 2
    assert "has dtype int64; an embedding table must be floating point" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sparse_and_meta_tensors_are_named_not_converted(tmp_path: Path) -> None:
    # found by a probe: numpy conversion raised TypeError ("can't convert Sparse layout tensor")
    torch = _torch()
    dense = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    torch.save({"emb.weight": dense.to_sparse(), "meta.weight": torch.empty(4, 3, device="meta")}, tmp_path / "m.pt")
    source = open_source(tmp_path / "m.pt")
    with pytest.raises(InvalidRequest, match=r"'emb\.weight' is a torch\.sparse_coo tensor; save the dense table"):
        source.read("emb.weight")
    with pytest.raises(InvalidRequest, match=r"'meta\.weight' is a meta tensor \(no data\)"):
        source.read("meta.weight")


def test_import_checks_every_table_before_the_first_and_names_the_tensor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # found by a review: options a later table cannot take (pq subspaces not dividing its
    # dimension) were found after the earlier tables were compressed, and no error named the
    # tensor; a failed import left the directories it made above --out
    big = ("F32", [300, 64], np.ones(300 * 64, "<f4").tobytes())
    small = ("F32", [300, 16], np.ones(300 * 16, "<f4").tobytes())
    bad = np.ones((300, 16), "<f4")
    bad[10, 3] = np.nan
    write_safetensors(tmp_path / "m.safetensors", {"a_emb.weight": big, "b_emb.weight": small})
    write_safetensors(
        tmp_path / "nan.safetensors", {"a_emb.weight": big, "b_emb.weight": ("F32", [300, 16], bad.tobytes())}
    )
    out = tmp_path / "made" / "above" / "out"
    args = ["import", str(tmp_path / "m.safetensors"), "--codec", "pq", "--subspaces", "32", "--out", str(out)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "tensor 'b_emb.weight': pq subspaces=32 must divide the dimension 16" in captured.err
    assert "a_emb" not in captured.out  # nothing was compressed first
    assert main(["import", str(tmp_path / "nan.safetensors"), "--out", str(out)]) == 2
    assert "tensor 'b_emb.weight': table[10] contains NaN or Inf" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "nan.safetensors"]
    # the working directory (or one above it) cannot be swapped whole by a rename
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["import", str(tmp_path / "m.safetensors"), "--out", "."]) == 2
    assert "is or holds the working directory" in capsys.readouterr().err and not any(work.iterdir())
    # a link to a directory: the directory it names is replaced, the link kept
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert main(["import", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "link")]) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "tables.json").is_file()


def test_npz_archives_are_sources_of_named_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # found by a review: a .npz was taken for a PyTorch checkpoint ("enforce fail at inline_container.cc")
    users, items = low_rank_table(300, 16, seed=1), low_rank_table(200, 8, seed=2).astype(np.float64)
    np.savez(tmp_path / "tabs.npz", users=users, items=items, counts=np.arange(10))
    source = open_source(tmp_path / "tabs.npz")
    assert source.format == "npz" and source.info("users").shape == (300, 16) and source.info("counts").dtype == "int64"
    assert main(["compress", str(tmp_path / "tabs.npz"), "--codec", "fp32", "--out", str(tmp_path / "c")]) == 2
    assert "name the table with --tensor KEY" in capsys.readouterr().err
    args = [
        "compress",
        str(tmp_path / "tabs.npz"),
        "--tensor",
        "users",
        "--codec",
        "fp32",
        "--out",
        str(tmp_path / "c"),
    ]
    assert main([*args, "--quiet"]) == 0
    np.testing.assert_array_equal(runtime.load_table(tmp_path / "c").lookup(np.arange(300)), users)
    assert main(["import", str(tmp_path / "tabs.npz"), "--codec", "fp32", "--out", str(tmp_path / "i")]) == 0
    specs = dict(read_tables_file(tmp_path / "i" / "tables.json"))
    assert sorted(specs) == ["items", "users"]  # every 2-D floating-point array, named as saved
    np.testing.assert_array_equal(runtime.load_table(specs["items"]).lookup(np.arange(200)), items.astype(np.float32))


def test_checkpoint_keys_that_join_to_one_name_are_refused(tmp_path: Path) -> None:
    # found by a review: {"emb.weight": a, "emb": {"weight": b}} imported one table, b, and a was gone
    torch = _torch()
    torch.save({"emb.weight": torch.randn(3000, 8), "emb": {"weight": torch.randn(10, 8)}}, tmp_path / "m.pt")
    with pytest.raises(InvalidRequest, match=r"two tensors are both named 'emb\.weight' once nested keys are joined"):
        open_source(tmp_path / "m.pt")
