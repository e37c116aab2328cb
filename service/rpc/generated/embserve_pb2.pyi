from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListTablesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TableInfo(_message.Message):
    __slots__ = ("name", "rows", "dim", "codec", "params_json", "rerank_codec", "nbytes", "fp32_nbytes", "compression_ratio", "version", "loaded_at", "metrics", "keyed", "missing", "tiers", "delta_rows", "delta_slots", "delta_capacity", "sequence", "last_update_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    RERANK_CODEC_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    FP32_NBYTES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_RATIO_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    KEYED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    DELTA_ROWS_FIELD_NUMBER: _ClassVar[int]
    DELTA_SLOTS_FIELD_NUMBER: _ClassVar[int]
    DELTA_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    rows: int
    dim: int
    codec: str
    params_json: str
    rerank_codec: str
    nbytes: int
    fp32_nbytes: int
    compression_ratio: float
    version: str
    loaded_at: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    keyed: bool
    missing: str
    tiers: _containers.RepeatedCompositeFieldContainer[TierInfo]
    delta_rows: int
    delta_slots: int
    delta_capacity: int
    sequence: int
    last_update_id: str
    def __init__(self, name: _Optional[str] = ..., rows: _Optional[int] = ..., dim: _Optional[int] = ..., codec: _Optional[str] = ..., params_json: _Optional[str] = ..., rerank_codec: _Optional[str] = ..., nbytes: _Optional[int] = ..., fp32_nbytes: _Optional[int] = ..., compression_ratio: _Optional[float] = ..., version: _Optional[str] = ..., loaded_at: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., keyed: _Optional[bool] = ..., missing: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[TierInfo, _Mapping]]] = ..., delta_rows: _Optional[int] = ..., delta_slots: _Optional[int] = ..., delta_capacity: _Optional[int] = ..., sequence: _Optional[int] = ..., last_update_id: _Optional[str] = ...) -> None: ...

class TierInfo(_message.Message):
    __slots__ = ("rows", "codec", "params_json", "rerank_codec", "dim", "nbytes")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    RERANK_CODEC_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    rows: int
    codec: str
    params_json: str
    rerank_codec: str
    dim: int
    nbytes: int
    def __init__(self, rows: _Optional[int] = ..., codec: _Optional[str] = ..., params_json: _Optional[str] = ..., rerank_codec: _Optional[str] = ..., dim: _Optional[int] = ..., nbytes: _Optional[int] = ...) -> None: ...

class ListTablesResponse(_message.Message):
    __slots__ = ("tables",)
    TABLES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableInfo]
    def __init__(self, tables: _Optional[_Iterable[_Union[TableInfo, _Mapping]]] = ...) -> None: ...

class DescribeTableRequest(_message.Message):
    __slots__ = ("table",)
    TABLE_FIELD_NUMBER: _ClassVar[int]
    table: str
    def __init__(self, table: _Optional[str] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("table", "ids", "offsets", "mode", "lengths", "per_sample_weights")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    PER_SAMPLE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    table: str
    ids: Tensor
    offsets: Tensor
    mode: str
    lengths: Tensor
    per_sample_weights: Tensor
    def __init__(self, table: _Optional[str] = ..., ids: _Optional[_Union[Tensor, _Mapping]] = ..., offsets: _Optional[_Union[Tensor, _Mapping]] = ..., mode: _Optional[str] = ..., lengths: _Optional[_Union[Tensor, _Mapping]] = ..., per_sample_weights: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("embeddings",)
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: Tensor
    def __init__(self, embeddings: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("table", "queries", "query_ids", "k", "metric", "oversample", "exclude_self", "exclude_ids", "exclude_lengths")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    QUERY_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    OVERSAMPLE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SELF_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    table: str
    queries: Tensor
    query_ids: Tensor
    k: int
    metric: str
    oversample: int
    exclude_self: bool
    exclude_ids: Tensor
    exclude_lengths: Tensor
    def __init__(self, table: _Optional[str] = ..., queries: _Optional[_Union[Tensor, _Mapping]] = ..., query_ids: _Optional[_Union[Tensor, _Mapping]] = ..., k: _Optional[int] = ..., metric: _Optional[str] = ..., oversample: _Optional[int] = ..., exclude_self: _Optional[bool] = ..., exclude_ids: _Optional[_Union[Tensor, _Mapping]] = ..., exclude_lengths: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("ids", "scores")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ids: Tensor
    scores: Tensor
    def __init__(self, ids: _Optional[_Union[Tensor, _Mapping]] = ..., scores: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("table", "candidate_ids", "queries", "query_ids", "metric")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    QUERY_IDS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    table: str
    candidate_ids: Tensor
    queries: Tensor
    query_ids: Tensor
    metric: str
    def __init__(self, table: _Optional[str] = ..., candidate_ids: _Optional[_Union[Tensor, _Mapping]] = ..., queries: _Optional[_Union[Tensor, _Mapping]] = ..., query_ids: _Optional[_Union[Tensor, _Mapping]] = ..., metric: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: Tensor
    def __init__(self, scores: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("table", "keys", "rows", "sequence")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: Tensor
    rows: Tensor
    sequence: int
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[_Union[Tensor, _Mapping]] = ..., rows: _Optional[_Union[Tensor, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class DeleteKeysRequest(_message.Message):
    __slots__ = ("table", "keys", "sequence")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: Tensor
    sequence: int
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[_Union[Tensor, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class UpdateResponse(_message.Message):
    __slots__ = ("applied", "sequence", "delta_rows", "delta_slots", "delta_capacity")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DELTA_ROWS_FIELD_NUMBER: _ClassVar[int]
    DELTA_SLOTS_FIELD_NUMBER: _ClassVar[int]
    DELTA_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    applied: int
    sequence: int
    delta_rows: int
    delta_slots: int
    delta_capacity: int
    def __init__(self, applied: _Optional[int] = ..., sequence: _Optional[int] = ..., delta_rows: _Optional[int] = ..., delta_slots: _Optional[int] = ..., delta_capacity: _Optional[int] = ...) -> None: ...

class MultiLookupEntry(_message.Message):
    __slots__ = ("table", "ids", "lengths", "offsets", "weights", "mode")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    table: str
    ids: Tensor
    lengths: Tensor
    offsets: Tensor
    weights: Tensor
    mode: str
    def __init__(self, table: _Optional[str] = ..., ids: _Optional[_Union[Tensor, _Mapping]] = ..., lengths: _Optional[_Union[Tensor, _Mapping]] = ..., offsets: _Optional[_Union[Tensor, _Mapping]] = ..., weights: _Optional[_Union[Tensor, _Mapping]] = ..., mode: _Optional[str] = ...) -> None: ...

class MultiLookupRequest(_message.Message):
    __slots__ = ("tables", "concat")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    CONCAT_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[MultiLookupEntry]
    concat: bool
    def __init__(self, tables: _Optional[_Iterable[_Union[MultiLookupEntry, _Mapping]]] = ..., concat: _Optional[bool] = ...) -> None: ...

class TableEmbeddings(_message.Message):
    __slots__ = ("table", "version", "embeddings")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    table: str
    version: str
    embeddings: Tensor
    def __init__(self, table: _Optional[str] = ..., version: _Optional[str] = ..., embeddings: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class MultiLookupResponse(_message.Message):
    __slots__ = ("results", "concatenated")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CONCATENATED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TableEmbeddings]
    concatenated: Tensor
    def __init__(self, results: _Optional[_Iterable[_Union[TableEmbeddings, _Mapping]]] = ..., concatenated: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
