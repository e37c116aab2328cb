"""One hierarchy of typed errors for the library and the service.

The service maps each class (by walking the MRO) to an HTTP status and a gRPC code in one
table; the library raises them and never formats transport-specific messages.
"""

from __future__ import annotations

JSON_FILE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RecursionError)
"""What reading a JSON file raises when it is not readable JSON: OSError; ValueError (not JSON,
not UTF-8, an integer past Python's 4,300 digits); RecursionError (nested deeper than the parser
goes)."""


class EmbserveError(Exception):
    """Base of every error embserve raises on purpose."""


class InvalidRequest(EmbserveError, ValueError):
    """The caller's input is malformed: wrong type, shape, value or combination."""


class RowRefused(InvalidRequest):
    """A row of input a codec cannot store, named by its position in the block it was given
    (`template` holds "{row}"); `Codec.encode`, which hands codecs blocks, names it in the whole
    input with `moved`."""

    def __init__(self, row: int, template: str) -> None:
        self.row = row
        self.template = template
        super().__init__(template.format(row=row))

    def moved(self, row: int) -> RowRefused:
        """The same refusal of the row that is `row` in the caller's input."""
        return RowRefused(row, self.template)


class IdOutOfRange(InvalidRequest):
    """An id is negative or not below the table's row count."""

    def __init__(self, value: int, position: int, rows: int, field: str = "ids") -> None:
        self.value = value
        self.position = position
        self.rows = rows
        super().__init__(
            f"{field}[{position}] = {value} is out of range: the table has {rows} rows (valid ids are 0..{rows - 1})"
        )


class DimensionMismatch(InvalidRequest):
    """A query vector's dimension differs from the table's."""

    def __init__(self, got: int, expected: int, field: str = "queries") -> None:
        self.got = got
        self.expected = expected
        super().__init__(f"{field} have dimension {got} but the table has dimension {expected}")


class UnsupportedMetric(InvalidRequest):
    """The metric is unknown, or not available for this table's codec."""


class UnknownCodec(InvalidRequest):
    """No codec of that name is registered."""


class ArtifactError(EmbserveError):
    """An artifact on disk cannot be used."""


class ArtifactNotFound(ArtifactError):
    """The artifact directory or one of its files does not exist."""


class ArtifactCorrupt(ArtifactError):
    """A file is truncated, unreadable, or fails its checksum."""


class ArtifactIncompatible(ArtifactError):
    """The artifact is well-formed but this version cannot serve it (newer format, unknown codec)."""


class TableNotFound(EmbserveError):
    """No table is registered under that name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"table {name!r} not found")


class Overloaded(EmbserveError):
    """The server is at its concurrency limit; retry later."""


class NotReady(EmbserveError):
    """The server is starting or draining and does not accept work."""


class Unauthorized(EmbserveError):
    """The admin token is missing or wrong."""


class Forbidden(EmbserveError):
    """The operation is disabled or the path is outside the artifact root."""


class PayloadTooLarge(InvalidRequest):
    """A request exceeds a configured size limit (ids, queries, k, body bytes)."""


class KeyNotFound(EmbserveError, LookupError):
    """A key (or id) is not in the table: never stored, or deleted."""

    def __init__(self, key: int, position: int, field: str = "keys") -> None:
        self.key = key
        self.position = position
        super().__init__(f"{field}[{position}] = {key} is not in the table")


class DeltaFull(EmbserveError):
    """An update batch would exceed the table's delta capacity; compact the table first."""


class BudgetTooSmall(InvalidRequest):
    """No table the planner's menu makes fits the memory budget; the message names the least that does."""


class OverBudget(InvalidRequest):
    """A table built to a budget holds more bytes than the budget: refused rather than returned."""
