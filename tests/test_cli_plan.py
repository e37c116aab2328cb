"""`embserve plan` and `embserve compress --budget` end to end, and their refusals (exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import runtime
from service.cli import main
from tests.conftest import low_rank_table

MENU = [{"codec": "fp16"}, {"codec": "int4"}, {"codec": "int2", "dim": 8}, {"codec": "shared", "centroids": 16}]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {name: tmp_path / f"{name}.npy" for name in ("x", "freq", "queries")}
    np.save(paths["x"], low_rank_table(1200, 16, seed=1))
    np.save(paths["freq"], rng.zipf(1.3, 1200).astype(np.float64))
    np.save(paths["queries"], rng.standard_normal((20, 16)).astype(np.float32))
    paths["menu"] = tmp_path / "menu.json"
    paths["menu"].write_text(json.dumps(MENU))
    return paths


def test_plan_then_compress_with_its_tiers(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    tiers = tmp_path / "tiers.json"
    args = ["plan", str(files["x"]), "--budget", "30KB", "--freq", str(files["freq"]), "--menu", str(files["menu"])]
    assert main([*args, "--queries", str(files["queries"]), "--out", str(tiers)]) == 0
    printed = capsys.readouterr().out
    assert "share" in printed and "est. error" in printed and "recall@10" in printed
    spec = json.loads(tiers.read_text())
    assert sum(len(t["rows"]) if isinstance(t["rows"], list) else 1200 for t in spec) == 1200
    out = tmp_path / "art"
    assert main(["compress", str(files["x"]), "--tiers", str(tiers), "--out", str(out), "--quiet"]) == 0
    assert runtime.load_table(out).nbytes <= 30_000


def test_compress_to_a_budget_stores_the_plan(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "art"
    args = ["compress", str(files["x"]), "--budget", "24KiB", "--freq", str(files["freq"])]
    assert main([*args, "--menu", str(files["menu"]), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    plan = info["plan"]
    assert info["nbytes"] == plan["built_nbytes"] == plan["nbytes"] <= 24 * 1024 == plan["budget"]
    assert len(info["tiers"]) == len(plan["tiers"]) and 0 <= plan["measured_error"] < 1
    assert [t["codec"] for t in info["tiers"]] == [t["codec"] for t in plan["tiers"]]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget", "-1"], "budget must be a size"),
        (["--budget", "abc"], "budget must be a size"),
        (["--budget", "10"], "no plan fits 10 bytes"),
        (["--budget", "1MiB", "--freq", "short"], "entries for a table of 1200"),
        (["--budget", "1MiB", "--freq", "negative"], "frequencies must be finite and >= 0"),
        (["--budget", "1MiB", "--freq", "nan"], "freq[5] = nan"),
        (["--budget", "1MiB", "--menu", "unknown"], "unknown codec 'lz4'"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    bad = {
        "short": np.ones(1199),
        "negative": np.where(np.arange(1200) == 5, -2.0, 1.0),
        "nan": np.where(np.arange(1200) == 5, np.nan, 1.0),
    }
    for name, values in bad.items():
        np.save(tmp_path / f"{name}.npy", values)
    (tmp_path / "unknown.json").write_text(json.dumps([{"codec": "int8"}, {"codec": "lz4"}]))
    args = [a if a not in bad else str(tmp_path / f"{a}.npy") for a in extra]
    args = [str(tmp_path / "unknown.json") if a == "unknown" else a for a in args]
    out = tmp_path / "out"
    assert main(["plan", str(files["x"]), *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()
    assert main(["compress", str(files["x"]), *args, "--out", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_budget_excludes_codec_flags(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "art"
    assert main(["compress", str(files["x"]), "--budget", "1MiB", "--codec", "int8", "--out", str(out)]) == 2
    assert "--budget plans the tiers" in capsys.readouterr().err and not out.exists()
    assert main(["compress", str(files["x"]), "--freq", str(files["freq"]), "--codec", "int8", "--out", str(out)]) == 2
    assert "give --budget too" in capsys.readouterr().err and not out.exists()
    # found by a review: plan's --out into a missing directory named a temporary file it could
    # not write; compress and import make missing directories, and plan now does too
    missing_dir = tmp_path / "no" / "such" / "plan.json"
    assert main(["plan", str(files["x"]), "--budget", "1MiB", "--out", str(missing_dir)]) == 0
    assert json.loads(missing_dir.read_text())
    # a file there already is replaced only with --force (a review's plan overwrote an artifact's manifest)
    assert main(["plan", str(files["x"]), "--budget", "1MiB", "--out", str(missing_dir)]) == 2
    assert "already exists; pass --force to replace it" in capsys.readouterr().err
    assert main(["plan", str(files["x"]), "--budget", "1MiB", "--out", str(missing_dir), "--force"]) == 0


def test_a_keyed_plan_refuses_repeated_keys_and_prints_a_command_with_its_keys(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # found by a review: a plan took keys that repeat (compress then refused them), and the
    # command it printed left --keys out, so following it built an unkeyed table
    keys, repeated = tmp_path / "keys.npy", tmp_path / "repeated.npy"
    np.save(keys, np.arange(1200, dtype=np.int64) * 7)
    np.save(repeated, np.where(np.arange(1200) == 900, 14, np.arange(1200) * 7).astype(np.int64))
    tiers = tmp_path / "tiers.json"
    args = ["plan", str(files["x"]), "--budget", "1MiB", "--out", str(tiers)]
    assert main([*args, "--keys", str(repeated)]) == 2
    assert "keys[900] = 14 repeats an earlier key" in capsys.readouterr().err and not tiers.exists()
    assert main([*args, "--keys", str(keys)]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    assert printed.endswith(f"embserve compress {files['x']} --tiers {tiers} --keys {keys} --out DIR")
    out = tmp_path / "art"
    command = printed.split(": ", 1)[1].split()[2:-1]
    assert main(["compress", *command, str(out), "--quiet"]) == 0
    assert runtime.load_table(out).keyed
