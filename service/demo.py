"""The built-in demo table: deterministic, generated on first start and cached on disk.

rows × 64 float32 with a Zipf(1.1) popularity whose vector norms grow with log popularity (as in
real recommender tables), compressed as PQ (M=16, 8 bits) with an int8 rerank codec."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.errors import ArtifactError
from runtime.table import compress, load_table
from service.settings import Settings

log = logging.getLogger("embserve")
DEMO_DIM = 64
DEMO_SEED = 20261122


def demo_embeddings(rows: int, dim: int = DEMO_DIM, seed: int = DEMO_SEED) -> tuple[np.ndarray, np.ndarray]:
    """-> table (rows, dim) float32, popularity (rows,) float64 summing to 1."""
    rng = np.random.default_rng(seed)
    rank = 16
    signal = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, dim)) / np.sqrt(rank)
    x = signal + 0.35 * rng.standard_normal((rows, dim))
    popularity = 1.0 / np.arange(1, rows + 1) ** 1.1
    popularity = popularity[rng.permutation(rows)]
    popularity /= popularity.sum()
    norms = 0.3 + 0.15 * np.log1p(popularity * rows * 10)
    x *= (norms / np.linalg.norm(x, axis=1))[:, None]
    return x.astype(np.float32), popularity


def demo_table_path(settings: Settings) -> Path:
    """The demo artifact directory for these settings, built when missing or unreadable."""
    path = settings.demo_dir / f"demo-{settings.demo_rows}x{DEMO_DIM}-pq16x8-int8-v1"
    try:
        load_table(path, verify=True)
        return path
    except ArtifactError:
        pass
    log.info("building the demo table (%d rows) in %s; later starts reuse it", settings.demo_rows, path)
    x, popularity = demo_embeddings(settings.demo_rows)
    table = compress(
        x, "pq", subspaces=16, bits=8, iterations=12, rerank="int8", seed=0, version="demo-v1", source="embserve demo"
    )
    table.save(path)
    np.save(path.parent / f"{path.name}.popularity.npy", popularity)
    return path
