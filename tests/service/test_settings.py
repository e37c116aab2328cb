"""Settings come from EMBSERVE_* variables and flags through one typed object."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime.errors import EmbserveError, IdOutOfRange, InvalidRequest, NotReady, Overloaded, TableNotFound
from service.errors import ERROR_STATUS, status_for
from service.settings import Settings


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBSERVE_HTTP_PORT", "9000")
    monkeypatch.setenv("EMBSERVE_TABLES", "items=/data/items/v1, users=/data/users/v2")
    monkeypatch.setenv("EMBSERVE_MAX_CONCURRENCY", "7")
    s = Settings()
    assert s.http_port == 9000 and s.max_concurrency == 7
    assert s.table_specs() == [("items", Path("/data/items/v1")), ("users", Path("/data/users/v2"))]
    assert Settings(http_port=1).http_port == 1  # explicit values (flags) win


def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="NAME=DIR"):
        Settings(tables=["nodir"]).table_specs()
    monkeypatch.setenv("EMBSERVE_HTTP_PORT", "99999")
    with pytest.raises(ValidationError):
        Settings()


def test_error_table_is_complete() -> None:
    assert status_for(IdOutOfRange(5, 0, 3))[0] == 400
    assert status_for(TableNotFound("x"))[0] == 404
    assert status_for(Overloaded())[0] == 429
    assert status_for(NotReady())[0] == 503
    assert status_for(InvalidRequest())[0] == 400
    assert status_for(ValueError())[0] == 500
    assert all(issubclass(cls, EmbserveError) for cls in ERROR_STATUS)


def test_service_passes_the_parallel_threshold_to_the_tables_it_loads(tmp_path: Path) -> None:
    import numpy as np

    import runtime
    from service.core import EmbeddingService

    runtime.compress(np.ones((50, 8), np.float32), "int8").save(tmp_path / "t")
    service = EmbeddingService(Settings(demo=False, warmup=False, tables=[f"t={tmp_path / 't'}"], parallel_min_ids=64))
    try:
        service.load_configured()
        assert service.store.get("t").table.primary.parallel_min_ids == 64
    finally:
        service.close()
