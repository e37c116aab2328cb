"""Shared fixtures: seeded data, the real MovieLens table when ../shared/data is present."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tests.side_builds import BuildCommand, Finished, SideBuilds

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMBSERVE_SHARED_DATA", ROOT.parent / "shared" / "data" / "ml1m-als64"))

settings.register_profile(
    "embserve", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("embserve")


_running: list[pytest.Item] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _running[:] = [item]


def require_external_marker(binary: str) -> None:
    """A test that runs a binary outside Python must carry the `external` marker, so that
    `pytest -m "not external"` really leaves out every such test."""
    item = _running[0] if _running else None
    if item is not None and item.get_closest_marker("external") is None:
        pytest.fail(f"{item.nodeid} runs {binary}: mark it @pytest.mark.external")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the tests that wait for a side build run last: it has the whole session to finish in
    items.sort(key=lambda item: item.get_closest_marker("side_build") is not None)


@pytest.fixture(scope="session", autouse=True)
def side_builds(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SideBuilds]:
    """Every `side_build` command of the tests this session selected (`tests/side_builds.py`),
    started before the session's first test."""
    commands: list[BuildCommand] = []
    for item in request.session.items:
        marker = item.get_closest_marker("side_build")
        wanted = "side_build" in getattr(item, "fixturenames", ()) and item.get_closest_marker("skip") is None
        if marker is not None and wanted and marker.kwargs["command"] not in commands:
            commands.append(marker.kwargs["command"])
    builds = SideBuilds(commands, lambda name: tmp_path_factory.mktemp(name), ROOT)
    builds.start_all()
    yield builds
    builds.stop()


@pytest.fixture
def side_build(request: pytest.FixtureRequest, side_builds: SideBuilds) -> Finished:
    """The finished build of this test's `side_build` marker."""
    marker = request.node.get_closest_marker("side_build")
    if marker is None:
        pytest.fail(f"{request.node.nodeid} uses the side_build fixture without a side_build marker")
    return side_builds.result(marker.kwargs["command"])


def low_rank_table(rows: int, dim: int, seed: int = 0, rank: int = 8) -> np.ndarray:
    """A float32 table that is not trivially compressible: low-rank signal plus full-rank noise."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, dim)) / np.sqrt(rank)
    return (signal + 0.3 * rng.standard_normal((rows, dim))).astype(np.float32)


@pytest.fixture(scope="session")
def small_table() -> np.ndarray:
    return low_rank_table(3000, 64, seed=1)


@pytest.fixture(scope="session")
def ml1m() -> dict[str, np.ndarray]:
    """The shared MovieLens-1M ALS tables; skipped (with a note) when the data is absent."""
    if not (SHARED_DATA / "item_emb.npy").is_file():
        pytest.skip(f"shared dataset not found at {SHARED_DATA}; quality checks need it")
    names = ["item_emb", "user_emb", "gt_item2item_queries", "gt_item2item_top10_ids", "item_freq"]
    return {name: np.load(SHARED_DATA / f"{name}.npy") for name in names}
