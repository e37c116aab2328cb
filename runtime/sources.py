"""Where float tables come from: `.npy` and `.npz` files, safetensors files and PyTorch checkpoints.

A source is opened once (`open_source`); it lists its tensors (key, shape, dtype) without reading
their data, and reads one tensor on demand as a numpy array. safetensors files are parsed here
(an 8-byte little-endian header length, a JSON header, then the raw little-endian data) and
memory-mapped, so they need neither torch nor the `safetensors` package; PyTorch checkpoints need
torch (the optional `embserve[torch]` extra) and are loaded with `weights_only=True`, which
refuses pickled code.

The format is told by the file's first bytes, not its name.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import InvalidRequest

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_OP = 0x80
SAFETENSORS_MAX_HEADER = 100 << 20
TORCH_EXTRA_HINT = "pip install 'embserve[torch]'"

# safetensors dtype names -> numpy dtypes; BF16 has no numpy dtype and is widened to float32
SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")

# TorchRec names a table's weight <...>.embedding_bags.<table>.weight (EmbeddingBagCollection) or
# <...>.embeddings.<table>.weight (EmbeddingCollection)
TORCHREC_KEY = re.compile(r"(?:^|\.)(?:embedding_bags|embeddings)\.(?P<table>[^.]+)\.weight$")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a source: its key, shape and dtype name ("float32", "bfloat16", "int64", ...)."""

    key: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (any shape) uint16 -> float32 of the same shape (exact: bf16 is the
    top half of a float32)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


class Source:
    """Tensors of one file, listed by `tensors` and read one at a time by `read`."""

    format = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tensors: dict[str, TensorInfo] = {}

    def read(self, key: str) -> np.ndarray:
        """The tensor's values; floating-point tensors come back as a float16/32/64 array."""
        raise NotImplementedError

    def info(self, key: str) -> TensorInfo:
        """The tensor `key`, or InvalidRequest listing the embedding-like keys there are."""
        found = self.tensors.get(key)
        if found is None:
            raise InvalidRequest(f"{self.path} has no tensor {key!r}; {describe_candidates(self.tensors.values())}")
        return found


class NpySource(Source):
    """A `.npy` file: one tensor, keyed by the file's stem."""

    format = "npy"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self.array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InvalidRequest(f"cannot read {str(path)!r} as a .npy file: {exc}") from None
        key = path.stem
        self.tensors = {key: TensorInfo(key, tuple(self.array.shape), str(self.array.dtype))}

    def read(self, key: str) -> np.ndarray:
        self.info(key)
        return np.asarray(self.array)


class NpzSource(Source):
    """A numpy `.npz` archive (`numpy.savez`): one tensor an array, keyed by its name; the arrays'
    headers are read to list them, an array's data only when it is read."""

    format = "npz"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    with archive.open(member) as fh:
                        version = np.lib.format.read_magic(fh)
                        read_header = (
                            np.lib.format.read_array_header_1_0
                            if version == (1, 0)
                            else np.lib.format.read_array_header_2_0
                        )
                        shape, _, dtype = read_header(fh)
                    key = member.removesuffix(".npy")
                    self.tensors[key] = TensorInfo(key, tuple(shape), str(dtype))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise InvalidRequest(f"cannot read {str(path)!r} as a .npz archive: {exc}") from None

    def read(self, key: str) -> np.ndarray:
        self.info(key)
        with np.load(self.path, allow_pickle=False) as archive:
            return np.asarray(archive[key])


class SafetensorsSource(Source):
    """A safetensors file, parsed and memory-mapped here (no torch, no safetensors package)."""

    format = "safetensors"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= header_len <= min(SAFETENSORS_MAX_HEADER, size - 8):
                raise InvalidRequest(f"{str(path)!r} is not a safetensors file (bad header length)")
            try:
                header = json.loads(fh.read(header_len))
            except (ValueError, RecursionError) as exc:
                raise InvalidRequest(f"{str(path)!r} is not a safetensors file: header is not JSON ({exc})") from None
        if not isinstance(header, dict):
            raise InvalidRequest(f"{str(path)!r} is not a safetensors file: header is not a JSON object")
        self.data_start = 8 + header_len
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            dtype, shape, begin, end = _header_entry(path, key, entry, size - self.data_start)
            self.entries[key] = (dtype, shape, begin, end)
            name = "bfloat16" if dtype == "BF16" else str(np.dtype(SAFETENSORS_DTYPES.get(dtype, "V1")))
            self.tensors[key] = TensorInfo(key, shape, name if dtype in SAFETENSORS_DTYPES else dtype)

    def read(self, key: str) -> np.ndarray:
        info = self.info(key)
        dtype_name, shape, begin, end = self.entries[key]
        if dtype_name not in SAFETENSORS_DTYPES:
            raise InvalidRequest(f"tensor {key!r} has dtype {dtype_name}, which embserve cannot read")
        dtype = np.dtype(SAFETENSORS_DTYPES[dtype_name])
        if end == begin:
            values = np.zeros(shape, dtype)
        else:
            values = np.memmap(self.path, dtype=dtype, mode="r", offset=self.data_start + begin, shape=shape)
        array = np.asarray(values)
        return bfloat16_to_float32(array) if info.dtype == "bfloat16" else array


def _header_entry(path: Path, key: str, entry: Any, data_bytes: int) -> tuple[str, tuple[int, ...], int, int]:
    """A safetensors header entry checked field by field: (dtype, shape, begin, end).

    Every tensor is checked at open, not only the one read, as the safetensors package does: a
    header that lies about one tensor is not one to trust about the others."""
    where = f"{str(path)!r}: tensor {key!r}"
    if not isinstance(entry, dict):
        raise InvalidRequest(f"{where}: header entry must be an object, got {entry!r}")
    missing = [field for field in ("dtype", "shape", "data_offsets") if field not in entry]
    if missing:
        raise InvalidRequest(f"{where}: header entry has no {missing[0]!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise InvalidRequest(f"{where}: dtype must be a string such as 'F32', got {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise InvalidRequest(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise InvalidRequest(f"{where}: data_offsets must be two integers [begin, end], got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes:
        raise InvalidRequest(
            f"{where}: data_offsets {offsets} lie outside the file's {data_bytes} data bytes (truncated?)"
        )
    # sizes in Python ints: a numpy product wraps (2**62 × 2**62 is 0 in int64) and would pass
    known = dtype in SAFETENSORS_DTYPES
    itemsize = np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize if known else 1
    if math.prod(max(d, 1) for d in shape) * itemsize > np.iinfo(np.intp).max:
        raise InvalidRequest(f"{where}: shape {shape} is larger than any array can be")
    if known and math.prod(shape) * itemsize != end - begin:
        raise InvalidRequest(
            f"{where}: data_offsets hold {end - begin} bytes, but shape {shape} of {dtype} is "
            f"{math.prod(shape) * itemsize} bytes"
        )
    return dtype, tuple(shape), begin, end


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TorchSource(Source):
    """A PyTorch checkpoint (`torch.save` of a state dict, or of a dict holding one), loaded with
    `weights_only=True`; nested dicts are flattened with dots, as `state_dict()` names them."""

    format = "torch"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            import torch
        except ImportError:
            raise InvalidRequest(
                f"{str(path)!r} is a PyTorch checkpoint; reading it needs torch ({TORCH_EXTRA_HINT}), "
                "or save the tables as safetensors"
            ) from None
        self.torch = torch
        # zip checkpoints (torch >= 1.6) are memory-mapped: only the tables read are paged in
        mmap = zipfile.is_zipfile(path)
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for a bad file
            raise InvalidRequest(
                f"cannot load {str(path)!r} as a weights-only PyTorch checkpoint: {_reason(exc)}"
            ) from None
        self.values: dict[str, Any] = {}
        for key, tensor in _flatten_tensors(loaded, "", torch.Tensor):
            if key in self.values:
                # {"emb.weight": a, "emb": {"weight": b}}: the one read last replaced the other unseen
                raise InvalidRequest(
                    f"{str(path)!r}: two tensors are both named {key!r} once nested keys are joined by '.'"
                )
            self.values[key] = tensor
        if not self.values:
            raise InvalidRequest(f"{str(path)!r} holds no tensors (expected a state dict)")
        self.tensors = {
            key: TensorInfo(key, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for key, t in self.values.items()
        }

    def read(self, key: str) -> np.ndarray:
        info = self.info(key)
        tensor = self.values[key].detach()
        if tensor.layout != self.torch.strided or tensor.is_meta:
            # a sparse or meta tensor has no dense values to read (numpy conversion raised TypeError)
            kind = "a meta tensor (no data)" if tensor.is_meta else f"a {tensor.layout} tensor"
            raise InvalidRequest(f"{str(self.path)!r}: {key!r} is {kind}; save the dense table (tensor.to_dense())")
        if info.dtype == "bfloat16":
            tensor = tensor.to(self.torch.float32)
        return np.asarray(tensor.numpy())


def _reason(exc: Exception) -> str:
    """The line of torch's multi-paragraph load error that says what is wrong."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    unpickler = next((line for line in lines if line.startswith("WeightsUnpickler error:")), None)
    if unpickler is not None:
        # a pickled object other than tensors: say so, and how to save a checkpoint we can read
        what = unpickler.removeprefix("WeightsUnpickler error:").split(". ")[0].strip()
        return f"it holds pickled objects other than tensors ({what}); save model.state_dict() instead"
    return next((line for line in lines if line), type(exc).__name__)


def _flatten_tensors(value: Any, prefix: str, tensor_type: type) -> Iterator[tuple[str, Any]]:
    if isinstance(value, tensor_type):
        yield prefix, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flatten_tensors(item, f"{prefix}.{key}" if prefix else str(key), tensor_type)


def open_source(path: str | os.PathLike[str]) -> Source:
    """Open a `.npy`, `.npz`, safetensors or PyTorch checkpoint file, told apart by its first bytes
    (and a zip file's members: numpy's .npy arrays, or PyTorch's pickle)."""
    file = Path(path)
    if file.is_dir():
        raise InvalidRequest(
            f"{str(file)!r} is a directory; expected a .npy, .npz, .safetensors or PyTorch checkpoint file"
        )
    if not file.is_file():
        raise InvalidRequest(f"input file {str(file)!r} does not exist")
    with file.open("rb") as fh:
        head = fh.read(9)
    if head.startswith(NPY_MAGIC):
        return NpySource(file)
    if head.startswith(ZIP_MAGIC) and _is_npz(file):
        return NpzSource(file)
    if head.startswith(ZIP_MAGIC) or (head[:1] and head[0] == PICKLE_PROTOCOL_OP):
        return TorchSource(file)
    if len(head) == 9 and head[8:9] == b"{" and file.suffix != ".npy":
        return SafetensorsSource(file)
    raise InvalidRequest(
        f"{str(file)!r} is not a .npy, .npz, safetensors or PyTorch checkpoint file "
        "(save the table with numpy.save, safetensors or torch.save)"
    )


def _is_npz(file: Path) -> bool:
    """Whether a zip file is numpy's archive of .npy members (a PyTorch checkpoint holds data.pkl)."""
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def embedding_keys(tensors: Mapping[str, TensorInfo]) -> list[str]:
    """Keys that look like embedding tables: 2-D floating-point weights named as TorchRec names
    them, or as `nn.Embedding` / `nn.EmbeddingBag` modules whose name mentions "emb" and that have
    no bias (which tells them from `nn.Linear`)."""
    found = []
    for key, info in tensors.items():
        if len(info.shape) != 2 or not info.is_float:
            continue
        if TORCHREC_KEY.search(key):
            found.append(key)
            continue
        module, sep, leaf = key.rpartition(".")
        if leaf == "weight" and f"{module}.bias" not in tensors and "emb" in (module if sep else "").lower():
            found.append(key)
    return found


def table_name(key: str) -> str:
    """The table a weight key names: TorchRec's table name, else the owning module's attribute."""
    match = TORCHREC_KEY.search(key)
    if match:
        return match.group("table")
    module = key.removesuffix(".weight")
    return module.rpartition(".")[2] or module


def describe_candidates(tensors: Any) -> str:
    """A sentence naming the embedding-like keys (or, failing those, the 2-D tensors) of a source."""
    infos = {t.key: t for t in tensors}
    keys = embedding_keys(infos)
    if keys:
        return "embedding-like keys: " + ", ".join(keys)
    # a 2-D tensor passed over for its dtype is named with it: its key alone would leave one
    # wondering why `emb.weight` was not taken
    matrices = [
        k if t.is_float else f"{k} ({t.dtype}, not floating point)" for k, t in infos.items() if len(t.shape) == 2
    ]
    if matrices:
        return "no 2-D floating-point tensor is named like an embedding table; 2-D tensors: " + ", ".join(matrices)
    return "it holds no 2-D tensor"


def read_table(source: Source, key: str) -> np.ndarray:
    """Tensor `key` of `source` as an embedding table: refused unless 2-D and floating point."""
    info = source.info(key)
    if len(info.shape) != 2:
        raise InvalidRequest(
            f"tensor {key!r} has shape {list(info.shape)}; an embedding table is 2-D (rows, dim). "
            + describe_candidates(source.tensors.values())
        )
    if not info.is_float:
        raise InvalidRequest(f"tensor {key!r} has dtype {info.dtype}; an embedding table must be floating point")
    return source.read(key)
