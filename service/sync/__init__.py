"""Optional Redis synchronisation of replicas: the version registry and replica status.

Nothing here is imported unless `redis_url` is set, so a single node without Redis pays no
import cost. `keys` names every Redis key; `registry` publishes and reads table versions;
`status` writes and reads replica rows; `replica` runs the watcher inside a server; `cli` adds
`embserve publish`, `embserve status` and `embserve push`; `updates` is the update log (row
upserts and deletes streamed to every replica).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class SyncHooks(Protocol):
    """What the core API asks of the Redis synchronisation (implemented by replica.ReplicaSync)."""

    def health(self) -> dict[str, Any]: ...

    async def publish_and_wait(self, name: str, directory: Path) -> dict[str, Any]: ...

    async def unpublish(self, name: str) -> None: ...

    def last_update_id(self, name: str) -> str: ...
