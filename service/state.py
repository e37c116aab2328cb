"""Which version each admin-loaded table serves, kept across restarts when there is no Redis.

A small JSON file under the artifact root, `.embserve-state.json`:
  {"format": 1, "tables": {name: {"path": artifact directory relative to the root, "version": ...}}}
written after every admin load or delete through a temporary file, fsync and rename, so a crash
leaves either the old file or the new one, never half of one. At start the server serves, for each
table named there, that artifact instead of the configured one (see `EmbeddingService.load_configured`)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("embserve")
STATE_FILE = ".embserve-state.json"
FORMAT = 1


class ActiveVersions:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / STATE_FILE
        self._lock = threading.Lock()

    def read(self) -> dict[str, dict[str, Any]]:
        """{table name: {"path", "version"}}; empty when there is no file or it cannot be read."""
        try:
            state = json.loads(self.path.read_text())
            tables = state["tables"]
            if not isinstance(tables, dict):
                raise TypeError("tables is not an object")
            return {
                name: entry
                for name, entry in tables.items()
                if isinstance(name, str) and isinstance(entry, dict) and isinstance(entry.get("path"), str)
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            log.warning("ignoring the state file %s: %s", self.path, exc)
            return {}

    def record(self, name: str, directory: Path, version: str) -> None:
        """`name` now serves the artifact in `directory` (below the root)."""
        relative = directory.resolve().relative_to(self.root.resolve()).as_posix()
        self._update(name, {"path": relative, "version": version})

    def forget(self, name: str) -> None:
        self._update(name, None)

    def _update(self, name: str, entry: dict[str, Any] | None) -> None:
        with self._lock:
            tables = self.read()
            if entry is None:
                tables.pop(name, None)
            else:
                tables[name] = entry
            try:
                self._write({"format": FORMAT, "tables": tables})
            except OSError as exc:  # e.g. a read-only volume: the swap stands, it is not remembered
                log.warning("could not record table %r in %s: %s", name, self.path, exc)

    def _write(self, state: dict[str, Any]) -> None:
        data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{STATE_FILE}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)


__all__ = ["STATE_FILE", "ActiveVersions"]
