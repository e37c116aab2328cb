"""TableStore: name -> active table version, swapped atomically.

A request takes a reference to a `LoadedTable` once and uses it to the end, so a swap never
changes the table under a running request: requests already running finish on the old version,
new ones see the new version. The old version's memory goes when its last request drops it.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from runtime.errors import TableNotFound
from runtime.table import Table


@dataclass(frozen=True)
class LoadedTable:
    name: str
    table: Table
    loaded_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class TableStore:
    def __init__(self) -> None:
        self._tables: dict[str, LoadedTable] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedTable:
        # dict reads are atomic under the GIL; the lock only orders writers
        entry = self._tables.get(name)
        if entry is None:
            raise TableNotFound(name)
        return entry

    def put(self, name: str, table: Table) -> LoadedTable:
        """Make `table` the active version of `name`; returns the new entry."""
        entry = LoadedTable(name, table)
        with self._lock:
            self._tables = {**self._tables, name: entry}
        return entry

    def remove(self, name: str) -> LoadedTable:
        with self._lock:
            if name not in self._tables:
                raise TableNotFound(name)
            tables = dict(self._tables)
            entry = tables.pop(name)
            self._tables = tables
        return entry

    def snapshot(self) -> Mapping[str, LoadedTable]:
        """Every active table at one instant: writers replace the dict, never change it, so the
        mapping read once stays one consistent set of versions (treat it as read-only)."""
        return self._tables

    def names(self) -> list[str]:
        return sorted(self._tables)

    def entries(self) -> list[LoadedTable]:
        current = self._tables
        return [current[n] for n in sorted(current)]

    def __len__(self) -> int:
        return len(self._tables)

    def __contains__(self, name: object) -> bool:
        return name in self._tables
