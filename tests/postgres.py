"""A real PostgreSQL server for the tests: the one on 127.0.0.1:5432 when it answers, else a throwaway cluster
started from the Debian packages' binaries (``make test`` installs them) on a free port, removed afterwards.

``LOOPML_TEST_POSTGRES_URL`` names another server (a URL to its maintenance database, e.g.
``postgresql://postgres:secret@db:5432/postgres``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from loopml.config import Settings, get_settings
from tests.conftest import free_port

LOCAL_URLS = ("postgresql://postgres@127.0.0.1:5432/postgres", "postgresql://root@127.0.0.1:5432/postgres")


def answers(url: str) -> bool:
    """Whether a server accepts ``url`` and lets its user create databases."""
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            return bool(
                connection.execute(
                    text("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
                ).scalar()
            )
    except Exception:  # noqa: BLE001 - any failure: not usable
        return False
    finally:
        engine.dispose()


def _binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class Cluster:
    """A throwaway PostgreSQL cluster: ``initdb`` in a temporary folder, served on a free loopback port (as the
    ``postgres`` user when run as root: PostgreSQL refuses to run as root). ``stop`` and ``start`` restart it."""

    def __init__(self) -> None:
        binaries = _binaries()
        if binaries is None:
            raise RuntimeError("no PostgreSQL server answers and none is installed: run `make install-postgres`")
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="loopml-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            self.folder.chmod(0o700)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [
                *self.as_user,
                str(binaries / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "loopml",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        """The maintenance database's URL."""
        return f"postgresql://loopml@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.binaries / "pg_ctl"), "-D", str(self.data), *args], check=True, capture_output=True
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-l", str(self.folder / "server.log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        """Stop at once (``immediate``: connections are cut, as when a server dies)."""
        self._ctl("-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A started :class:`Cluster`, removed afterwards."""
    cluster = Cluster()
    try:
        cluster.start()
        deadline = time.monotonic() + 60
        while not answers(cluster.url):
            assert time.monotonic() < deadline, "the throwaway PostgreSQL cluster did not answer"
            time.sleep(0.2)
        yield cluster
    finally:
        cluster.remove()


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The maintenance-database URL of a server the tests may create databases on."""
    chosen = os.environ.get("LOOPML_TEST_POSTGRES_URL")
    if chosen:
        yield chosen
        return
    for url in LOCAL_URLS:
        if answers(url):
            yield url
            return
    with throwaway_cluster() as cluster:
        yield cluster.url


def drop_databases(server_url: str, prefix: str) -> None:
    """Drop every database whose name starts with ``prefix`` (a test's own)."""
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as connection:
        names = connection.execute(
            text("SELECT datname FROM pg_database WHERE datname LIKE :p"), {"p": f"{prefix}%"}
        ).scalars()
        for name in list(names):
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def fresh_database_url(server_url: str) -> str:
    """A URL for a database name no one uses yet on that server (created by whoever connects first)."""
    return make_url(server_url).set(database=f"loopml_t{uuid.uuid4().hex[:10]}").render_as_string(hide_password=False)


def use_database(monkeypatch: pytest.MonkeyPatch, home: Path, url: str) -> Settings:
    """Settings of a LOOPML_HOME at ``home`` whose stores are on ``url`` (databases created)."""
    monkeypatch.setenv("LOOPML_HOME", str(home))
    monkeypatch.setenv("LOOPML_DATABASE_URL", url)
    settings = get_settings()
    settings.ensure_dirs()
    settings.stores.ensure()
    return settings


def count(url: str, query: str) -> int:
    """The integer ``query`` answers on ``url`` (0 for NULL)."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        value = connection.execute(text(query)).scalar()
    engine.dispose()
    return int(value or 0)
