"""Input checks shared by every table operation; each raises a typed error naming the problem."""

from __future__ import annotations

import contextlib
import os
import re
from bisect import bisect_right
from collections.abc import Iterator
from decimal import Decimal
from itertools import accumulate, chain
from typing import Any

import numpy as np

from runtime.errors import DimensionMismatch, IdOutOfRange, InvalidRequest, UnsupportedMetric
from runtime.kernels.checks import (
    VALUE_LIMIT,
    first_bad_offset,
    first_out_of_range,
    first_unusable_row,
    offsets_of_lengths,
)

METRICS = ("ip", "l2", "hamming")
FP16_MAX = float(np.finfo(np.float16).max)
FLOAT32_MAX = float(np.finfo(np.float32).max)
INT64_MAX = int(np.iinfo(np.int64).max)
INT64_LIMIT_FLOAT = 2.0**63  # the first float past int64's range


def writable(arr: np.ndarray) -> np.ndarray:
    """arr itself, or a copy where it is read-only. numba compiles a read-only array as another
    type: a request body's `np.frombuffer` view would compile each kernel it reaches once more
    (seconds, on the request) beside the variants warm-up built, so request arrays reach the
    kernels writable. Request arrays are small; a copy is the price of a read-only one only."""
    return arr if arr.flags.writeable else arr.copy()


def reshaped(arr: np.ndarray, shape: list[int], what: str) -> np.ndarray:
    """arr, whose size matches `shape`, in that shape; a shape numpy cannot make (more than 64
    dimensions, or a zero beside dimensions whose product passes what an array can index) is
    the caller's error, named, not numpy's ValueError."""
    try:
        return arr.reshape(shape)
    except ValueError:
        raise InvalidRequest(f"{what}: shape {shape} is not one an array can have") from None


INT64 = np.dtype(np.int64)
FLOAT32 = np.dtype(np.float32)
"""The float32 dtype object: np.empty(shape, FLOAT32) skips resolving a dtype argument on hot paths."""


def _flat_int64(arr: Any) -> bool:
    """Whether arr is already what a kernel takes: a plain C-contiguous (n,) int64 ndarray (the
    hot paths' test; anything else goes through the general conversion). The dtype is compared by
    identity first: `==` against a type costs ~0.2 µs, a sizeable part of a one-id lookup."""
    return (
        type(arr) is np.ndarray
        and (arr.dtype is INT64 or arr.dtype == INT64)
        and arr.ndim == 1
        and arr.flags.c_contiguous
    )


def direct_gather_ids(arr: Any) -> bool:
    """Whether arr is a (n,) int64 ndarray of any strides: ids a lookup may hand its gather
    (`Codec.direct_gather`, compiled for ids of any layout) unconverted, uncopied and unchecked (the
    gather checks the bounds itself). A False only means the general path (`check_ids`) runs. No
    flags are read: building the flags object was ~7 % of a one-id lookup."""
    return type(arr) is np.ndarray and arr.dtype is INT64 and arr.ndim == 1


def direct_bag_arrays(ids: Any, offsets: Any) -> bool:
    """Whether ids and offsets are both what the one-call bag kernels take unconverted and
    unchecked (`Codec.direct_bags`, compiled for C-contiguous (n,) int64 arrays)."""
    return _flat_int64(ids) and _flat_int64(offsets)


def check_table_input(x: Any) -> np.ndarray:
    """Return the training table as C-contiguous float32 `(n, d)`.

    Integer and float64 input is cast; complex, boolean, object or string input is refused,
    and so is a NaN, an Inf or a value of magnitude 2**50 or more (the message names the first
    bad row).
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise InvalidRequest(f"table must be numeric (float or integer), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InvalidRequest(f"table must be 2-D (rows, dim), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidRequest(f"table must have at least one row and one column, got {arr.shape}")
    refuse_beyond_float32(arr, "table")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    # the limit of every query and upserted row: past it k-means overflowed and a PQ table was
    # written with the row silently replaced by an unrelated codeword
    _refuse_unusable(arr, "table", "contains NaN or Inf")
    return arr


def refuse_beyond_float32(arr: np.ndarray, what: str) -> None:
    """Finite float64 values past float32's range would become inf in the cast (with a numpy
    warning in the log): name the first row of `what` `(n, ...)` that has one instead, as `what[row]`."""
    if arr.dtype.kind != "f" or arr.dtype.itemsize <= 4 or arr.size == 0:
        return
    flat = arr.reshape(arr.shape[0], -1)
    beyond = np.isfinite(flat) & (np.abs(flat) > FLOAT32_MAX)
    rows = beyond.any(axis=1)
    if rows.any():
        row = int(np.flatnonzero(rows)[0])
        raise InvalidRequest(f"{what}[{row}] has a value beyond float32's range (±{FLOAT32_MAX:.4g})")


def holds_integers_past_int64(arr: np.ndarray) -> bool:
    """Whether numpy kept a caller's list as Python objects because its integers do not fit 64
    bits (every value an integer)."""
    return arr.dtype.kind == "O" and all(isinstance(v, int) and not isinstance(v, bool) for v in arr.flat)


def kind_of_values(arr: np.ndarray) -> str:
    """What an array read from a caller's list holds, in the caller's words (for an array numpy
    could not read as numbers: strings, integers past 64 bits, a mix)."""
    if arr.dtype.kind in "US":
        return "strings"
    if holds_integers_past_int64(arr):
        return "integers beyond the int64 range"
    if arr.dtype.kind == "O":
        return "values that are not numbers"
    if arr.dtype.kind in "iuf":
        return "numbers"
    return "booleans" if arr.dtype.kind == "b" else f"dtype {arr.dtype}"


TABLE_NAME_MAX = 128


def check_table_name(name: Any, where: str = "") -> str:
    """A served table's name: a string of 1-128 printable characters without '/', and not '.' or
    '..' (it names the table in paths, /v1/tables/<name>, in logs and in metrics: a NUL, a newline
    or a right-to-left override would forge what they show); `where` prefixes the message."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > TABLE_NAME_MAX
        or "/" in name
        or not name.isprintable()
        or name in (".", "..")
    ):
        raise InvalidRequest(
            f"{where}table name {name!r} must be 1-{TABLE_NAME_MAX} printable characters without '/' "
            "(and not '.' or '..')"
        )
    return name


SIZE_UNITS = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgt", 1):
    SIZE_UNITS.update({_prefix: 1000**_power, f"{_prefix}b": 1000**_power})
    SIZE_UNITS.update({f"{_prefix}i": 1024**_power, f"{_prefix}ib": 1024**_power})
"""Units of a byte size, in lower case: k / kB = 1000, Ki / KiB = 1024, and M, G, T alike."""
SIZE_LIMIT = 2**63
"""Sizes from this up are no sizes: past int64, and past any memory."""
SIZE_DIGITS = 30
_SIZE_TEXT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_bytes(value: Any) -> int | None:
    """A byte size: a non-negative integer, or text: a number (1e9, 1.5) and an optional unit
    (`SIZE_UNITS`), e.g. "67108864", "64MiB", "16 MB", "1.5GiB" -> bytes; None when it is not a
    whole number of bytes ("1.5", "0.3KB"), from SIZE_LIMIT up, or not a size at all."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value) if 0 <= value < SIZE_LIMIT else None
    if not isinstance(value, str):
        return None
    match = _SIZE_TEXT.fullmatch(value)
    if match is None or match.group(2).lower() not in SIZE_UNITS:
        return None
    number = Decimal(match.group(1))
    if number.adjusted() > SIZE_DIGITS:  # 1e1000000: decimal's own limits would raise, not refuse
        return None
    size = number * SIZE_UNITS[match.group(2).lower()]  # exact: 1.1MB is 1,100,000
    if size != size.to_integral_value() or size >= SIZE_LIMIT:
        return None
    return int(size)


def check_flag(value: Any, what: str) -> bool:
    """A caller's true / false option as a bool. Anything else is refused, named: read as a truth
    value, a string such as "false" would mean the opposite, and 0 / 1 hide a mistyped field."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidRequest(f"{what} must be true or false, got {value!r}")
    return bool(value)


WALK_BUDGET = 50_000
"""Containers `refuse_booleans_among_numbers` visits before it gives up on a body (and lets it
pass); a matrix's rows, read with it at C speed, are not visits."""
JSON_SPACE = b" \t\r\n"


class _OverBudget(Exception):
    pass


def _boolean_in_array(raw: bytes, most: int = 1000) -> bool:
    """Whether a JSON body may hold true or false inside an array: one follows `[` or `,` (an
    object's members follow `:`). Each literal is found at C speed and the bytes before it read
    back over whitespace; past `most` literals, or a long run of whitespace, the answer is yes
    (the walk that follows is bounded)."""
    seen = 0
    for word in (b"true", b"false"):
        at = raw.find(word)
        while at >= 0:
            before = raw[max(at - 64, 0) : at].rstrip(JSON_SPACE)
            if not before or before[-1:] in (b"[", b","):
                return True
            seen += 1
            if seen > most:
                return True
            at = raw.find(word, at + len(word))
    return False


def refuse_booleans_in_json(raw: bytes, value: Any, where: str = "") -> None:
    """`refuse_booleans_among_numbers` for a JSON body `raw` parsed into `value`, walked only when
    `raw` may hold true or false inside an array (ordinary bodies, whose flags are object
    members, cost a byte search). A body of more than WALK_BUDGET containers that hold containers
    is let through unread, as before this check: the check is for mistakes, and fields keep their
    own checks."""
    if not _boolean_in_array(raw):
        return
    with contextlib.suppress(_OverBudget):
        refuse_booleans_among_numbers(value, where, budget=WALK_BUDGET)


def refuse_booleans_among_numbers(value: Any, where: str = "", budget: int | None = None) -> None:
    """Refuse an array, anywhere in a parsed JSON value, that holds true or false beside numbers,
    naming the first such entry in document order by its path (`ids[1]`, `queries[1][0]`,
    `inputs[0].data[3]`). An array is a list with its nested lists (a matrix is one): numpy reads
    [1, true] as [1, 1] and [[0.5, 0.25], [true, false]] as [[0.5, 0.25], [1.0, 0.0]], so a
    mistyped id or value would pass every later check. An array of booleans alone is left to the
    field's own check, and members named "parameters" (OIP's, whose unknown entries are ignored)
    are not looked into. budget: containers to read at most (then _OverBudget).

    Two depth-first passes, each linear in the value's size: the first finds the arrays that mix,
    the second (only when one does) names the first boolean of those in document order. The path
    is one list of steps pushed and popped on the way (paths built for every nested list or object
    cost a small, deep body hundreds of MB and seconds, found by probes)."""
    if not isinstance(value, (dict, list)):
        return
    mixed = _mixed_arrays(value, budget)
    if mixed:
        _raise_first_boolean(value, mixed, where)


def _rows(node: list[Any], kinds: set[type]) -> list[Any]:
    """node's values with every one that is not a list as an empty row (positions kept)."""
    return node if kinds == LISTS_ONLY else [v if type(v) is list else () for v in node]


def _leaf_rows(node: list[Any], kinds: set[type]) -> set[type] | None:
    """For a list whose values (of types `kinds`) include lists: the types of its rows' values
    when no row holds a container (a matrix: read with its list, not visited row by row), else
    None. Read at C speed: no Python frame a row."""
    if dict in kinds:
        return None
    inner = set(map(type, chain.from_iterable(_rows(node, kinds))))
    return None if inner & CONTAINERS else inner


def _walk(value: Any, budget: int | None) -> Iterator[tuple[str, Any, set[type] | None]]:
    """Depth first over the dicts and lists of a JSON value, in document order: ("enter", node,
    kinds) on the way in and ("leave", None, None) on the way out. A list's kinds are the types of
    its values, and of its rows' values where no row holds a container (such rows are read with
    their list and not visited, so a 60,000-row matrix is one visit of the budget); a dict's are
    None. Empty containers and members named "parameters" are passed over."""
    visits = 0
    stack: list[Iterator[tuple[Any, Any]]] = []

    def enter(node: Any) -> tuple[set[type] | None, Iterator[tuple[Any, Any]]]:
        # children lazily: a walk stopped by its budget reads no further into a long list
        if isinstance(node, dict):
            return None, _walked_members(node)
        kinds = set(map(type, node))  # at C speed: most lists hold numbers only
        if not kinds & CONTAINERS:
            return kinds, iter(())
        rows = _leaf_rows(node, kinds)
        if rows is not None:
            return kinds | rows, iter(())
        return kinds, ((i, v) for i, v in enumerate(node) if type(v) in CONTAINERS and v)

    kinds, children = enter(value)
    yield "enter", value, kinds
    stack.append(children)
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            yield "leave", None, None
            continue
        visits += 1
        if budget is not None and visits > budget:
            raise _OverBudget
        child = item[1]
        kinds, children = enter(child)
        yield "enter", child, kinds
        stack.append(children)


def _mixed_arrays(value: Any, budget: int | None) -> set[int]:
    """ids of the arrays (outermost lists: an array's nested lists belong to it) that hold true or
    false beside a number."""
    mixed: set[int] = set()
    scopes: list[tuple[int, list[bool]]] = []  # (id of the array, [holds a boolean, holds a number])
    opened: list[bool] = []  # for each open node, whether it opened an array
    parents: list[Any] = [None]
    for event, node, kinds in _walk(value, budget):
        if event == "leave":
            parents.pop()
            if opened.pop():
                array, (has_boolean, has_number) = scopes.pop()
                if has_boolean and has_number:
                    mixed.add(array)
            continue
        opens = isinstance(node, list) and not isinstance(parents[-1], list)
        opened.append(opens)
        parents.append(node)
        if opens:
            scopes.append((id(node), [False, False]))
        if kinds is not None:
            flags = scopes[-1][1]
            flags[0] = flags[0] or bool in kinds
            flags[1] = flags[1] or int in kinds or float in kinds
    return mixed


def _first_boolean_of_matrix(node: list[Any], kinds: set[type]) -> list[int] | None:
    """For a list (its values of types `kinds`, lists among them) whose rows hold no container:
    the steps to its first true / false in document order ([i] for a value of its own, [i, j] for
    one in row i), [] if it has none; None if a row holds a container. At C speed: the rows'
    values read once into a flat list of types, the row found by bisection."""
    rows = _rows(node, kinds)
    flat = list(map(type, chain.from_iterable(rows)))
    if dict in kinds or not CONTAINERS.isdisjoint(flat):
        return None
    own = list(map(type, node)).index(bool) if bool in kinds else len(node)
    if bool not in flat:
        return [] if own == len(node) else [own]
    at = flat.index(bool)
    ends = list(accumulate(map(len, rows)))
    row = bisect_right(ends, at)
    if own < row:
        return [own]
    return [row, at - (ends[row - 1] if row else 0)]


def _raise_first_boolean(value: Any, mixed: set[int], where: str) -> None:
    """Name the first true / false, in document order, that lies in one of the `mixed` arrays."""
    steps: list[Any] = []

    def refuse(found: list[Any]) -> None:
        *above, last = [*steps, *found]
        path = where + "".join(f".{s}" if isinstance(s, str) else f"[{s}]" for s in above)
        word = "true" if _at(value, [*steps, *found]) else "false"
        raise InvalidRequest(f"{path.removeprefix('.')}[{last}] is {word} among numbers; send numbers only")

    def frame(node: Any, inside: bool) -> tuple[Any, Iterator[Any], bool]:
        """node, the keys or positions to visit in order, whether node lies in a mixed array."""
        if isinstance(node, dict):
            return node, (k for k, _ in _walked_members(node)), False
        if inside:
            kinds = set(map(type, node))
            # a matrix: its first boolean found at C speed, not by a frame a row
            found = _first_boolean_of_matrix(node, kinds) if list in kinds else None
            if found:
                refuse(found)
            if found is not None:
                return node, iter(()), inside
        wanted = (bool, list, dict) if inside else (list, dict)
        return node, iter([i for i, kind in enumerate(map(type, node)) if kind in wanted]), inside

    stack = [frame(value, isinstance(value, list) and id(value) in mixed)]
    while stack:
        node, positions, inside = stack[-1]
        step = next(positions, None)
        if step is None:
            stack.pop()
            if stack:
                steps.pop()
            continue
        child = node[step]
        if isinstance(child, bool):
            refuse([step])
        steps.append(step)
        if isinstance(child, list):
            stack.append(frame(child, inside if isinstance(node, list) else id(child) in mixed))
        else:
            stack.append(frame(child, False))


def _at(value: Any, steps: list[Any]) -> Any:
    for step in steps:
        value = value[step]
    return value


CONTAINERS = frozenset({dict, list})
LISTS_ONLY = frozenset({list})


def _walked_members(node: dict[Any, Any]) -> Iterator[tuple[Any, Any]]:
    """An object's members the boolean check reads into, in order: non-empty lists and objects,
    save OIP's "parameters" (unknown ones are ignored)."""
    return ((k, v) for k, v in node.items() if type(v) in CONTAINERS and v and k != "parameters")


def refuse_outside_int64(arr: np.ndarray, field: str) -> None:
    """Refuse, by position, a value of a 1-D uint64 or float64 array (n,) outside int64's range.

    JSON parsers hand integers past int64 over as uint64 or float64: casting those would wrap to a
    wrong id or key (and log a numpy warning), and a later check would name the wrapped value."""
    if arr.dtype.kind == "u":
        beyond = arr > np.uint64(INT64_MAX)
    elif arr.dtype.kind == "f":
        beyond = (arr < -INT64_LIMIT_FLOAT) | (arr >= INT64_LIMIT_FLOAT)
    else:
        return
    if beyond.any():
        pos = int(np.flatnonzero(beyond)[0])
        value = f"{arr[pos]:g}" if arr.dtype.kind == "f" else str(arr[pos])
        raise InvalidRequest(f"{field}[{pos}] = {value} is out of the int64 range (|value| < 2**63)")


def check_int_array(value: Any, field: str) -> np.ndarray:
    """A caller's flat list or array of integers -> (n,) int64; nesting, ragged rows, floats and
    values past int64 are refused, named by `field`."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequest(f"{field} must be a flat array of integers: {exc}") from None
    if arr.shape == (0,):
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise InvalidRequest(f"{field} must be a flat array of integers, got dtype {arr.dtype} shape {arr.shape}")
    refuse_outside_int64(arr, field)
    return arr.astype(np.int64, copy=False)


def summed(total: int) -> str:
    """The sum of a request's lengths in words: `checks.offsets_of_lengths` stops it at the end of
    int64, where numpy's sum would wrap, perhaps to the count of values."""
    return "past the int64 range" if total == INT64_MAX else f"to {total}"


def check_lengths(lengths: Any, n_values: int, field: str = "lengths", values: str = "ids") -> np.ndarray:
    """lengths (B,) of groups of a flat array of n_values `values`: non-negative, summing to
    n_values -> offsets (B,) int64, each group's start."""
    arr = writable(np.ascontiguousarray(check_int_array(lengths, field)))
    offsets, negative, total = offsets_of_lengths(arr)
    if negative >= 0:
        raise InvalidRequest(f"{field}[{negative}] = {int(arr[negative])} is negative")
    if total != n_values:
        raise InvalidRequest(f"{field} sum {summed(total)} but {n_values} {values} were given")
    return offsets


def check_ids(ids: Any, rows: int, field: str = "ids") -> np.ndarray:
    """Return ids as a C-contiguous int64 `(n,)` array, every one in `[0, rows)`."""
    if _flat_int64(ids):
        # the hot path of a lookup (a few µs a call matter): the bounds in one kernel pass
        ids = writable(ids)
        pos = first_out_of_range(ids, rows)
        if pos >= 0:
            raise IdOutOfRange(int(ids[pos]), pos, rows, field)
        return ids
    arr = np.asarray(ids)
    if arr.shape == (0,):
        # JSON's [] reads as float64; [[]] or [[], []] is a 2-D array with no ids, refused below
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise InvalidRequest(f"{field} must be integers")
    elif arr.dtype.kind not in "iu":
        raise InvalidRequest(f"{field} must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise InvalidRequest(f"{field} must be 1-D, got shape {arr.shape}")
    refuse_outside_int64(arr, field)
    out = np.ascontiguousarray(arr, dtype=np.int64)
    # two reductions on the hot path; the position is looked for only when something is wrong
    if out.min() < 0 or out.max() >= rows:
        pos = int(np.flatnonzero((out < 0) | (out >= rows))[0])
        raise IdOutOfRange(int(out[pos]), pos, rows, field)
    return writable(out)


def check_keys(keys: Any, field: str = "keys") -> np.ndarray:
    """Return keys as a C-contiguous int64 `(n,)` array (any int64 value is a key)."""
    arr = np.asarray(keys)
    if arr.shape == (0,):
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise InvalidRequest(f"{field} must be 1-D, got shape {arr.shape}")
    # before the dtype check: JSON integers past uint64 arrive as floats, named as out of range
    # (as a dense table's ids are), not as "not integers"
    refuse_outside_int64(arr, field)
    if arr.dtype.kind not in "iu":
        raise InvalidRequest(f"{field} must be integers, got dtype {arr.dtype}")
    return writable(np.ascontiguousarray(arr, dtype=np.int64))


def check_id_matrix(ids: Any, rows: int, field: str = "candidate_ids") -> np.ndarray:
    """Return a `(q, c)` int64 id matrix, every id in `[0, rows)`."""
    arr = np.asarray(ids)
    if arr.ndim != 2:
        raise InvalidRequest(f"{field} must be 2-D (queries, candidates), got shape {arr.shape}")
    try:
        flat = check_ids(arr.reshape(-1), rows, field)
    except IdOutOfRange as exc:
        # the caller sent a matrix: name the id by its row and column, not its flat position
        row, column = divmod(exc.position, arr.shape[1])
        raise IdOutOfRange(exc.value, column, rows, f"{field}[{row}]") from None
    return flat.reshape(arr.shape)


def check_queries(queries: Any, dim: int, field: str = "queries") -> np.ndarray:
    """Return queries as C-contiguous float32 `(q, dim)`: finite, every value below VALUE_LIMIT
    in magnitude (so that no score overflows)."""
    if _float32_rows(queries, dim) and first_unusable_row(queries) < 0:
        return queries  # a search's hot path: one kernel pass; the checks below name what is wrong
    arr = np.asarray(queries)
    if arr.dtype.kind not in "iuf":
        raise InvalidRequest(f"{field} must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1 and arr.size in (0, dim):
        # one vector, or none: JSON's [] reads as shape (0,), and an empty octet body as (0, dim)
        arr = arr.reshape(-1, dim)
    if arr.ndim != 2:
        raise InvalidRequest(f"{field} must be 2-D (q, dim), got shape {arr.shape}")
    if arr.shape[1] != dim and arr.shape[0] != 0:
        raise DimensionMismatch(int(arr.shape[1]), dim, field)
    refuse_beyond_float32(arr, field)
    out = np.ascontiguousarray(arr, dtype=np.float32).reshape(arr.shape[0], dim)
    _refuse_unusable(out, field, "contains NaN or Inf")
    return writable(out)


def _refuse_unusable(rows: np.ndarray, field: str, nonfinite: str) -> None:
    """Name the first row of rows (n, k) float32 that holds a NaN or an Inf (`nonfinite` says so)
    or a value of magnitude VALUE_LIMIT or more, past which scores overflow float32."""
    usable = (np.abs(rows) < VALUE_LIMIT).all(axis=1)  # NaN compares False
    if usable.all():
        return
    row = int(np.flatnonzero(~usable)[0])
    if not np.isfinite(rows[row]).all():
        raise InvalidRequest(f"{field}[{row}] {nonfinite}")
    largest = float(np.abs(rows[row]).max())
    raise InvalidRequest(
        f"{field}[{row}] holds a value of magnitude {largest:.4g}; values must be below 2**50 "
        f"({VALUE_LIMIT:.4g}), past which scores overflow float32"
    )


def _float32_rows(arr: Any, dim: int) -> bool:
    """Whether arr is already what the scans take: a writable C-contiguous (q, dim) float32 ndarray."""
    return (
        type(arr) is np.ndarray
        and arr.dtype is FLOAT32
        and arr.ndim == 2
        and arr.shape[1] == dim
        and arr.flags.c_contiguous
        and arr.flags.writeable
    )


def check_k(k: Any, field: str = "k") -> int:
    """Return k as a positive Python int; floats, bools and k <= 0 are refused."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidRequest(f"{field} must be a positive integer, got {k!r}")
    if int(k) <= 0:
        raise InvalidRequest(f"{field} must be a positive integer, got {int(k)}")
    return int(k)


def check_path(path: Any, what: str) -> None:
    """A path argument: a str or os.PathLike, not empty (None, bytes or a number raised TypeError
    deep in pathlib)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InvalidRequest(f"{what} must be a non-empty str or os.PathLike, got {path!r}")


def check_seed(seed: Any) -> int:
    """A training seed: an integer from 0 to 2**63 - 1 (numpy's generators take no negative one)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidRequest(f"seed must be a non-negative integer, got {seed!r}")
    if not 0 <= int(seed) <= INT64_MAX:
        raise InvalidRequest(f"seed must be a non-negative integer below 2**63, got {int(seed)}")
    return int(seed)


def check_metric(metric: Any, supported: tuple[str, ...]) -> str:
    if metric not in METRICS:
        raise UnsupportedMetric(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric not in supported:
        raise UnsupportedMetric(f"metric {metric!r} is not available for this table; use one of {', '.join(supported)}")
    return str(metric)


def check_offsets(offsets: Any, n_ids: int) -> np.ndarray:
    """Return EmbeddingBag offsets as int64 `(bags,)`: non-decreasing, starting at 0, <= n_ids."""
    if _flat_int64(offsets):
        # a bag lookup's hot path: one kernel pass (numpy's diff and reductions cost ~15 µs a call);
        # the checks below run only to name what is wrong
        offsets = writable(offsets)
        if first_bad_offset(offsets, n_ids) < 0:
            return offsets
    arr = np.asarray(offsets)
    if arr.ndim == 1 and arr.size == 0:
        # no bags, whatever the ids: torch's embedding_bag answers (0, dim) too
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise InvalidRequest(f"offsets must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise InvalidRequest(f"offsets must be 1-D, got shape {arr.shape}")
    out = writable(np.ascontiguousarray(arr, dtype=np.int64))
    if out.size == 0:
        return out
    if out[0] != 0:
        raise InvalidRequest(f"offsets[0] must be 0, got {int(out[0])}")
    down = out[1:] < out[:-1]  # not np.diff, which wraps past int64: [0, 2**63 - 1, -2] would pass
    if down.any():
        pos = int(np.flatnonzero(down)[0]) + 1
        raise InvalidRequest(f"offsets must be non-decreasing; offsets[{pos}] = {int(out[pos])}")
    if out[-1] > n_ids:
        raise InvalidRequest(f"offsets[-1] = {int(out[-1])} exceeds the number of ids ({n_ids})")
    return out


def check_weights(weights: Any, n_ids: int, field: str = "per_sample_weights") -> np.ndarray:
    """Return per-sample weights as C-contiguous float32 `(n_ids,)`, every one finite and below
    VALUE_LIMIT in magnitude."""
    arr = np.asarray(weights)
    if arr.dtype.kind not in "iuf":
        raise InvalidRequest(f"{field} must be numbers, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != n_ids:
        raise InvalidRequest(f"{field} must have one weight per id ({n_ids}), got shape {arr.shape}")
    refuse_beyond_float32(arr.reshape(-1, 1), field)
    out = np.ascontiguousarray(arr, dtype=np.float32)
    _refuse_unusable(out.reshape(-1, 1), field, "is NaN or Inf")
    return writable(out)


FLOAT16_EXPONENT = 0x7C00  # all ones: Inf or NaN
UNUSABLE_SCAN_ELEMENTS = 1 << 22
"""Elements a block of `unusable_value`'s scan (its temporaries stay a few MiB)."""


def unusable_value(array: np.ndarray) -> str | None:
    """Where a stored float array (any shape; memory-mapped or not) holds a value no kernel can
    use, e.g. "nan at [3, 0, 1]": NaN or Inf, or in float32 / float64 a magnitude of VALUE_LIMIT
    or more (scores with it overflow float32). None when there is none or the array is not float.
    One pass in blocks along axis 0."""
    if array.dtype.kind != "f" or array.size == 0:
        return None
    flat = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(-1, 1)
    step = max(1, UNUSABLE_SCAN_ELEMENTS // max(1, flat.shape[1]))
    for start in range(0, flat.shape[0], step):
        block = np.ascontiguousarray(flat[start : start + step])
        if block.dtype == np.float16:
            bad = (block.view(np.uint16) & FLOAT16_EXPONENT) == FLOAT16_EXPONENT
        else:
            bad = ~(np.abs(block) < VALUE_LIMIT)  # NaN compares False
        if bad.any():
            position = np.unravel_index(start * flat.shape[1] + int(np.flatnonzero(bad)[0]), array.shape)
            return f"{array[position]} at {[int(i) for i in position]}"
    return None
