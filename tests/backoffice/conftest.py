"""Fixtures of the back office's tests: its database on SQLite and on a real PostgreSQL server
started for the run (skipped, with how to install it, where PostgreSQL is missing; CI fails
instead)."""
import os

import pytest

from hil.postgres import HOW_TO_INSTALL, TempPostgres, binaries


@pytest.fixture(scope="session")
def postgres():
    if binaries() is None:
        if os.environ.get("CI"):
            pytest.fail(HOW_TO_INSTALL)
        pytest.skip(HOW_TO_INSTALL)
    with TempPostgres() as pg:
        yield pg


@pytest.fixture
def pg_url(postgres):
    postgres.reset()
    return postgres.url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "office.db")
    return request.getfixturevalue("pg_url")
