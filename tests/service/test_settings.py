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
