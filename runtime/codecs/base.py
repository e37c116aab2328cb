"""The codec protocol: train, encode, decode, prepare, scan, score, and count bytes.

    state = Codec.train(sample, **options)          # codebooks, rotation: nothing row-specific
    rows = Codec.encode(state, x)                   # {name: (n, ...) array} encoded against it
    codec = Codec.from_parts(state, rows)           # a codec instance over those rows
    prepared = codec.prepare(metric, queries=q)     # or ids=stored ids: LUTs, query words, ...
    ids, scores = codec.scan(prepared, k, exclude)  # top k over all rows but `exclude`
    scores = codec.score(prepared, candidates)      # given candidates only

Callers (`runtime.table.Table`) validate ids, queries, k and metric before calling a codec, so
codecs assume clean input: ids int64 in range, queries float32 C-contiguous `(q, dim)`, 1 <= k <= rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import numba
import numpy as np

from runtime.errors import InvalidRequest, RowRefused
from runtime.kernels import dense, hashmap
from runtime.kernels.hashmap import KeySet
from runtime.kernels.intrinsics import start_threading_layer
from runtime.kernels.rowwise import DEFAULT_PARALLEL_MIN_IDS, PARALLEL_MIN_IDS
from runtime.kernels.scan import chunk_count
from runtime.validation import unusable_value

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called while fitting, for a progress bar."""


def scan_chunks(rows: int) -> int:
    """How many row chunks a fused scan kernel splits the table into: one a thread, and no more
    than one per 32,768 rows (rounded up). A chunk fills a heap of its own and its top k are
    merged; numba hands each thread a contiguous run of chunks, so more chunks balanced nothing.
    On an AMD EPYC (1M × 128, nq 1 and 64, 1 and 2 threads) four chunks a thread took 6-13 %
    longer than one for PQ M=16 8-bit, and 1-6 % longer for the int8 / int4 / fp16 row scans in
    14 of 16 cases (in two, one chunk a thread was 1 % and 5 % slower, and faster when rerun)."""
    start_threading_layer()  # the kernel reads the thread count by the layer's symbol
    return int(chunk_count(rows))


def keys_to_scores(keys: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Turn dense-scan keys back into scores. For ip the key is the score; for l2 the key is
    2<q, x> - |x|^2, so the squared distance is |q|^2 - key (clamped at 0 against rounding)."""
    if metric == "ip":
        return keys
    qn = np.einsum("qd,qd->q", queries, queries)[:, None]
    return np.maximum(qn - keys, 0).astype(np.float32)


@dataclass(frozen=True)
class Option:
    """One keyword option of a codec, declared once: `compress(**options)`, the CLI flag
    `--<name>` (help text from here), the warm-up list and the test matrix all derive from it.

    choices: the values worth compiling and testing apart (bits 4 and 8); bool options vary both.
    quick: a cheap value used where only coverage matters (warm-up, tests), e.g. few iterations."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    quick: Any = None


@dataclass(frozen=True)
class TrainedState:
    """What `train` learns: the codec's params and its row-independent arrays (codebooks,
    rotation). Rows encoded later with the same state decode and score alike."""

    codec: str
    params: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """Queries prepared once for scans and scores: metric, count, the query vectors when the
    codec scans them as such (`queries` (q, dim) float32), and the codec's own form (`data`:
    a `LutQuery`, packed query words, ...)."""

    metric: str
    count: int
    queries: np.ndarray | None = None
    data: Any = None


def query_vectors(prepared: Prepared) -> np.ndarray:
    if prepared.queries is None:
        raise InvalidRequest(f"this scan needs query vectors; the prepared {prepared.metric} query has none")
    return prepared.queries


def check_rotation(rotation: np.ndarray | None, dim: int, option: str, enabled: bool) -> str | None:
    """A message when a codec's optional rotation array does not match its `option` (present
    exactly when enabled, float32 (dim, dim)), else None."""
    if not enabled:
        return None if rotation is None else f"a rotation array is stored but {option}=false"
    if rotation is None or rotation.dtype != np.float32 or rotation.shape != (dim, dim):
        got = "missing" if rotation is None else f"{rotation.dtype} {rotation.shape}"
        return f"{option}=true needs a float32 {(dim, dim)} rotation array, got {got}"
    return None


def read_only(array: np.ndarray) -> np.ndarray:
    """array itself where it is read-only, else a read-only view of it. A codec holds its arrays
    read-only whether they were loaded (memory-mapped, read-only) or just encoded: numba compiles
    a read-only array as another type, so a table compressed in the process and one loaded from
    disk would otherwise each compile every kernel they reach (twice the warm-up), and stored rows
    are never written in place (updates go to a delta)."""
    if not array.flags.writeable:
        return array
    view = array.view()
    view.flags.writeable = False
    return view


def _bound_entry_point(kernel: Any, bound: tuple[Any, ...], sample: tuple[Any, ...]) -> Callable[..., int]:
    """kernel with its leading arguments `bound`, as its compiled entry point for the types of
    `sample` (the call-time arguments; the kernel is run on them once, so they must make it write
    nothing). The entry point skips the dispatcher, which resolves every argument's type on every
    call (0.2 µs of a 2 µs one-id lookup); the dispatcher itself where numba keeps none."""
    start_threading_layer()  # the kernels read the thread count by the layer's symbol
    kernel(*bound, *sample)
    compiled = kernel.overloads.get(tuple(numba.typeof(value) for value in (*bound, *sample)))
    entry = getattr(compiled, "entry_point", None)
    return partial(entry if entry is not None else kernel, *bound)


def bind_direct_gather(kernel: Any, dim: int, *bound: Any) -> Callable[[np.ndarray, np.ndarray], int]:
    """`Codec.direct_gather` of a numba kernel(*bound, ids, out): bound are the codec's own arrays
    and values. Compiled (or loaded from numba's cache) now for ids of any layout (numba's 'A'),
    so callers need not read the ids' flags to prove them contiguous
    (`validation.direct_gather_ids`); out is a fresh C-contiguous float32 (b, dim)."""
    ids = np.full(4, -1, dtype=np.int64)[::2]  # two strided ids, typed as an array of any layout
    out = np.empty((2, dim), dtype=np.float32)  # (out of range: the kernel writes nothing)
    return _bound_entry_point(kernel, bound, (ids, out))


def bind_direct_bags(kernel: Any, dim: int, *bound: Any) -> Callable[[np.ndarray, np.ndarray, bool, np.ndarray], int]:
    """`Codec.direct_bags` of a numba kernel(*bound, ids, offsets, mean, out), as
    `bind_direct_gather` but for C-contiguous ids and offsets (`validation.direct_bag_arrays`):
    bags of 16,384 int8 ids typed as any layout took 3-9 % longer, more than reading the flags
    costs; out is a fresh C-contiguous float32 (B, dim)."""
    ids = np.full(2, -1, dtype=np.int64)  # out of range: the kernel writes nothing
    offsets = np.zeros(2, dtype=np.int64)
    out = np.empty((2, dim), dtype=np.float32)
    return _bound_entry_point(kernel, bound, (ids, offsets, False, out))


ENCODE_BLOCK = 65536
"""Rows `Codec.encode` hands `_encode_rows` at a time (its temporaries stay a block's size)."""


class Codec(ABC):
    """One compressed representation of an `(rows, dim)` float32 table."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = ("ip", "l2")
    rank_metric: ClassVar[str | None] = None
    """The metric this codec ranks candidates by when a rerank codec rescores them (binary:
    Hamming); None ranks by the requested metric."""
    code_space_metrics: ClassVar[tuple[str, ...]] = ()
    """Metrics scored between codes in the codec's own space (binary: Hamming, a count of
    differing bits): a score ranks only against scores of codes of the same length."""
    required_arrays: ClassVar[tuple[str, ...]] = ()
    optional_arrays: ClassVar[tuple[str, ...]] = ()
    """Arrays some options add (a rotation); a loaded artifact holding any other is refused."""
    row_arrays: ClassVar[tuple[str, ...]] = ()
    """Arrays with one entry a row along axis 0 (codes, scales); every other array is trained state."""
    options: ClassVar[tuple[Option, ...]] = ()
    parallel_min_ids: int = DEFAULT_PARALLEL_MIN_IDS
    """Lookups of fewer ids gather on the calling thread (set per table by `load_table`)."""

    def __init__(
        self,
        rows: int,
        dim: int,
        params: dict[str, Any],
        arrays: dict[str, np.ndarray],
        shared: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.rows = rows
        self.dim = dim
        self.params = dict(params)
        self.arrays = {name: read_only(array) for name, array in arrays.items()}
        self.derived: dict[str, np.ndarray] = {}
        self.shared = shared or {}
        """Derived state of the trained state alone (inner-product tables), handed over from a
        codec of the same state so `with_rows` need not rebuild it."""
        self._decoding_gather: tuple[int, Callable[[np.ndarray, np.ndarray], int]] | None = None
        """`direct_gather` as `decode_by_direct_gather` bound it, with the parallel_min_ids it holds."""
        problem = self.check_arrays()
        if problem:
            raise InvalidRequest(f"codec {self.name!r}: {problem}")
        self._prepare()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {option.name: option.default for option in cls.options}

    @classmethod
    def check_options(cls, dim: int, options: dict[str, Any]) -> dict[str, Any]:
        """Merge options over the defaults, refusing unknown names; codecs add value checks."""
        known = cls.defaults()
        unknown = sorted(set(options) - set(known))
        if unknown:
            allowed = ", ".join(sorted(known)) or "none"
            raise InvalidRequest(f"codec {cls.name!r} has no option {unknown[0]!r} (options: {allowed})")
        params = dict(known)
        params.update({k: v for k, v in options.items() if v is not None})
        return params

    @classmethod
    def train(
        cls, sample: np.ndarray, *, seed: int = 0, progress: Progress | None = None, **options: Any
    ) -> TrainedState:
        """Learn the row-independent state from sample (n, d) float32 (already validated)."""
        params = cls.check_options(sample.shape[1], options)
        arrays = cls._train(sample, params, np.random.default_rng(seed), progress)
        return TrainedState(cls.name, params, arrays)

    @classmethod
    def _train(
        cls, sample: np.ndarray, params: dict[str, Any], rng: np.random.Generator, progress: Progress | None
    ) -> dict[str, np.ndarray]:
        """sample (n, d) float32 -> the trained arrays (none for codecs that learn nothing)."""
        return {}

    @classmethod
    def encode(cls, state: TrainedState, x: np.ndarray, progress: Progress | None = None) -> dict[str, np.ndarray]:
        """x (n, d) float32 -> the row arrays, each (n, ...), encoded against `state`."""
        step = ENCODE_BLOCK
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, max(1, x.shape[0]), step):
            stop = min(x.shape[0], start + step)
            try:
                parts.append(cls._encode_rows(state, np.ascontiguousarray(x[start:stop], dtype=np.float32)))
            except RowRefused as exc:
                raise exc.moved(start + exc.row) from None
            if progress is not None:
                progress("encode", stop, x.shape[0])
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    @classmethod
    def refuse_unstorable(cls, x: np.ndarray) -> None:
        """Refuse (RowRefused) a block of rows x (b, d) float32 this codec cannot store as they
        are, whatever it is trained on: fp16 codecs, values past fp16's range or too small for
        it. `_encode_rows` calls it on what it stores; the planner, on a table's suspect rows."""

    @classmethod
    @abstractmethod
    def _encode_rows(cls, state: TrainedState, x: np.ndarray) -> dict[str, np.ndarray]:
        """One block of rows x (b, d) float32 -> the row arrays, each (b, ...)."""

    @classmethod
    def from_parts(cls, state: TrainedState, rows: dict[str, np.ndarray], dim: int) -> Codec:
        """A codec over encoded rows; state and rows as `train` and `encode` return them."""
        count = next(iter(rows.values())).shape[0] if rows else 0
        return cls(count, dim, state.params, {**state.arrays, **rows})

    @classmethod
    def fit(cls, x: np.ndarray, *, seed: int = 0, progress: Progress | None = None, **options: Any) -> Codec:
        """Train on x (n, d) float32 (already validated; codecs sample it) and encode all of it."""
        state = cls.train(x, seed=seed, progress=progress, **options)
        return cls.from_parts(state, cls.encode(state, x, progress), x.shape[1])

    @property
    def state(self) -> TrainedState:
        """The trained state this codec's rows were encoded against."""
        trained = {name: a for name, a in self.arrays.items() if name not in self.row_arrays}
        return TrainedState(self.name, dict(self.params), trained)

    def with_rows(self, rows: dict[str, np.ndarray]) -> Codec:
        """A codec of the same trained state over other encoded rows (a delta, a compacted table)."""
        count = next(iter(rows.values())).shape[0] if rows else 0
        state = self.state
        codec = type(self)(count, self.dim, state.params, {**state.arrays, **rows}, self.state_derived())
        codec.parallel_min_ids = self.parallel_min_ids
        return codec

    def state_derived(self) -> dict[str, np.ndarray]:
        """The derived arrays that depend on the trained state only (none by default)."""
        return {}

    def _prepare(self) -> None:
        """Build derived state (held in memory, not persisted) after load or fit."""

    def check_arrays(self) -> str | None:
        """A message when the loaded arrays do not fit rows/dim/params, else None."""
        return None

    def check_values(self) -> str | None:
        """A message when a stored array holds a value no kernel can use (NaN, Inf; in float32 a
        magnitude of 2**50 or more, past which scores overflow), else None. Run on loaded
        artifacts only (a full pass over their float arrays): what embserve encodes never fails
        it, but a table whose codebook holds a NaN answered searches with no results."""
        for name, array in self.arrays.items():
            where = unusable_value(array)
            if where is not None:
                return f"array {name!r} holds {where}"
        return None

    # ---- size -----------------------------------------------------------------------------
    @classmethod
    def held_bytes(cls, rows: int, dim: int, params: dict[str, Any]) -> int:
        """The `nbytes` a codec of `rows` rows of `dim` dims with these checked params will report,
        known before training: what the budget planner counts (tests hold it equal to `nbytes`)."""
        raise NotImplementedError(f"codec {cls.name!r} does not declare its byte count (held_bytes)")

    def held_arrays(self) -> dict[str, np.ndarray]:
        """The arrays requests read: persisted and derived, less any a derived layout replaces."""
        return {**self.arrays, **self.derived}

    @property
    def nbytes(self) -> int:
        """Bytes of every array this codec holds in memory."""
        return int(sum(a.nbytes for a in self.held_arrays().values()))

    # ---- lookup ---------------------------------------------------------------------------
    @abstractmethod
    def decode(self, ids: np.ndarray) -> np.ndarray:
        """ids (b,) int64 -> (b, dim) float32 reconstructions."""

    def direct_gather(self) -> Callable[[np.ndarray, np.ndarray], int] | None:
        """A kernel that decodes a batch of ids (b,) int64 (not yet checked) into out (b, dim)
        float32 in one call, checking the bounds and choosing the threads (`parallel_min_ids`, as
        bound now) as it goes: -> the position of the first id outside [0, rows) (out untouched),
        or -1. The table's own arrays are bound once here, so a lookup pays one kernel call and
        little else; None where the codec has no such kernel (lookups then check the ids first
        and decode)."""
        return None

    def direct_bags(self) -> Callable[[np.ndarray, np.ndarray, bool, np.ndarray], int] | None:
        """`direct_gather` of pooled lookups: a kernel that pools ids (m,) int64 by offsets (B,)
        int64 (neither checked yet; mean when the bool says so, else sum) into out (B, dim) float32
        in one call -> -1, or a non-negative number, out untouched, when an id or an offset is
        wrong. None where the codec has no such kernel (bags then check their input and decode)."""
        return None

    def decode_keys(self, slots: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray | None, int]:
        """keys (b,) int64 through a key map's slot table (`hashmap.build`) -> their rows (b, dim)
        float32, None when some key is absent, and how many are. Codecs whose gather can probe
        as it goes override this to do both in one pass."""
        rows, absent = hashmap.lookup(slots, keys)
        return (self.decode(rows) if absent == 0 else None), int(absent)

    def decode_merged(self, rows: np.ndarray, slots: np.ndarray, delta: Codec | None) -> np.ndarray:
        """Rows from this codec's rows and from `delta`'s (the same trained state over a delta's
        rows): rows (b,) int64, slots (b,) int64 -> (b, dim) float32. Position i is
        delta.decode(slots[i]) where slots[i] >= 0, else decode(rows[i]) where rows[i] >= 0, else
        zeros. Codecs that can gather from both in one pass override this."""
        # one gather for every position (row 0 standing in for the others), then the few that
        # live in the delta or are missing overwritten: cheaper than scattering the many
        from_delta = np.flatnonzero(slots >= 0) if delta is not None else np.zeros(0, np.int64)
        absent = np.flatnonzero((rows < 0) & (slots < 0))
        if from_delta.size or absent.size:
            rows = rows.copy()
            rows[from_delta] = 0
            rows[absent] = 0
        out = self.decode(rows)
        if delta is not None and from_delta.size:
            out[from_delta] = delta.decode(slots[from_delta])
        out[absent] = 0
        return out

    def decode_range(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 reconstructed, (stop - start, dim) float32."""
        return self.decode(np.arange(start, stop, dtype=np.int64))

    def decode_bags(self, ids: np.ndarray, offsets: np.ndarray, mean: bool) -> np.ndarray:
        """EmbeddingBag pooling: ids (m,) int64, offsets (B,) int64 -> (B, dim) float32."""
        return dense.pool(self.decode(ids), offsets, mean, self.parallel_min_ids)

    # ---- search: prepare once, scan and score many times -------------------------------------
    def prepare(self, metric: str, queries: np.ndarray | None = None, ids: np.ndarray | None = None) -> Prepared:
        """Queries (q, dim) float32, or stored ids (q,) int64 as queries -> a Prepared.
        The default keeps the query vectors (ids decoded), for scans that read them as they are."""
        vectors = self.decode(ids) if queries is None and ids is not None else queries
        if vectors is None:
            raise InvalidRequest("prepare needs queries or ids")
        return Prepared(metric, vectors.shape[0], queries=vectors)

    def scan(
        self, prepared: Prepared, k: int, exclude: np.ndarray | KeySet | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top k rows for each prepared query, rows in `exclude` (distinct int64, or a KeySet)
        left out. -> ids (q, k') int64, scores (q, k') float32, best first,
        k' = min(k, rows - len(exclude))."""
        if exclude is None or exclude.size == 0:
            return self._scan(prepared, min(k, self.rows))
        left_out = exclude if isinstance(exclude, KeySet) else KeySet(exclude)
        width = min(k, self.rows - left_out.size)
        if width <= 0:
            return np.zeros((prepared.count, 0), np.int64), np.zeros((prepared.count, 0), np.float32)
        # ask for a few more than k, drop the left-out rows, and ask again for more only when a
        # query kept fewer than k: exact (the scan's order is the true order), and the kernels
        # stay free of per-row checks on the path of tables without updates
        extra = min(left_out.size, max(k, 32))
        while True:
            want = min(self.rows, k + extra)
            ids, scores = self._scan(prepared, want)
            keep = ~left_out.contains(ids)
            if want == self.rows or int(keep.sum(axis=1).min()) >= width:
                break
            extra *= 4
        order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)

    @abstractmethod
    def _scan(self, prepared: Prepared, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k (<= rows) over every row for the prepared queries -> ids (q, k) int64, scores
        (q, k) float32, best first; ties to the lower id."""

    def score(self, prepared: Prepared, candidates: np.ndarray) -> np.ndarray:
        """candidates (q, c) int64 -> (q, c) float32 scores of each prepared query."""
        queries = query_vectors(prepared)
        nq, nc = candidates.shape
        rows = self.decode(candidates.reshape(-1)).reshape(nq, nc, self.dim)
        if prepared.metric == "ip":
            return np.einsum("qcd,qd->qc", rows, queries).astype(np.float32)
        diff = rows - queries[:, None, :]
        return np.einsum("qcd,qcd->qc", diff, diff).astype(np.float32)

    # ---- conveniences over the protocol ----------------------------------------------------
    def search(self, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """queries (q, dim) float32 -> ids (q, k) int64, scores (q, k) float32, best first."""
        return self.scan(self.prepare(metric, queries=queries), k)

    def search_by_id(self, query_ids: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """query_ids (q,) int64 -> ids (q, k) int64, scores (q, k) float32, best first."""
        return self.scan(self.prepare(metric, ids=query_ids), k)

    def decode_by_direct_gather(self, ids: np.ndarray) -> np.ndarray:
        """`decode` by the kernel `direct_gather` binds, for codecs whose rows it gathers: lookups,
        rescoring and bags of updated rows then share one compiled gather (its own serial and
        parallel entry points were 7 s more of an int8 table's cold start).
        ids (b,) int64 in [0, rows) -> (b, dim) float32."""
        bound = self._decoding_gather
        if bound is None or bound[0] != self.parallel_min_ids:
            gather = self.direct_gather()
            if gather is None:
                raise TypeError(f"codec {self.name!r} has no direct gather")
            bound = self._decoding_gather = (self.parallel_min_ids, gather)
        # the bound entry point reads its arguments as the types it was compiled for
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        out = np.empty((ids.shape[0], self.dim), dtype=np.float32)
        outside = bound[1](ids, out)
        if outside >= 0:
            raise IndexError(f"row {int(ids[outside])} is outside [0, {self.rows})")
        return out

    def warmup(
        self, reads: bool = True, scanned: Collection[str] | None = None, rescored: Collection[str] = ()
    ) -> None:
        """Run every kernel this codec uses once on tiny input, so no request pays JIT compile.

        A tier with a rerank codec (`Tier.warmup`) asks each of its codecs for its part only:
        lookups and rescoring read the rerank codec's rows and only the primary codec scans. So the
        primary skips its reads (reads=False), scans only by the metrics its searches rank by
        (`scanned`; None: every metric of its own), and skips the stored-row queries and candidate
        scores of the metrics the rerank codec rescores (`rescored`); the rerank codec scans by
        none (scanned=()). Each kernel left out is seconds of a cold start."""
        scanned = self.metrics if scanned is None else scanned
        ids = np.array([0, self.rows - 1], dtype=np.int64)
        q = np.random.default_rng(0).standard_normal((2, self.dim)).astype(np.float32)
        # an update encodes its rows against the trained state (rq's beam search is a kernel)
        type(self).encode(self.state, q)
        if reads:
            self._warm_reads(ids)
        for metric in self.metrics:
            if metric in rescored and metric not in scanned:
                continue
            prepared = [self.prepare(metric, queries=q)]
            if metric not in rescored:
                prepared.append(self.prepare(metric, ids=ids))
            for each in prepared:
                if metric in scanned:
                    self.scan(each, 1)
                    self.scan(each, 1, exclude=ids[:1])
                if metric not in rescored:
                    self.score(each, ids.reshape(2, 1))

    def _warm_reads(self, ids: np.ndarray) -> None:
        """The kernels of lookups and bags, serial and parallel, before and after updates."""
        self.decode(ids)
        # large batches take the parallel kernels, small ones the serial twins: compile both
        self.decode(np.arange(PARALLEL_MIN_IDS, dtype=np.int64) % self.rows)
        direct = self.direct_gather()
        if direct is not None:
            direct(ids, np.empty((ids.shape[0], self.dim), np.float32))
        direct_bags = self.direct_bags()
        if direct_bags is not None:
            direct_bags(ids, np.array([0, 1], dtype=np.int64), True, np.empty((2, self.dim), np.float32))
        self.decode_bags(ids, np.array([0, 1], dtype=np.int64), True)
        # lookups from the first update on read base and delta rows together (`decode_merged`):
        # compiled now, not in the first lookup after an update (a delta's codec holds its rows
        # read-only as every codec does, so any of the base's rows stand in for them)
        delta = self.with_rows({name: self.arrays[name][:1] for name in self.row_arrays})
        for n in (2, PARALLEL_MIN_IDS):
            slots = np.full(n, -1, dtype=np.int64)
            slots[0] = 0
            self.decode_merged(np.zeros(n, dtype=np.int64), slots, delta)
        many = np.arange(PARALLEL_MIN_IDS, dtype=np.int64) % self.rows
        self.decode_bags(many, np.arange(0, PARALLEL_MIN_IDS, 32, dtype=np.int64), False)
