"""Where the platform's three stores live: the platform database, Dagster's instance storage, Label Studio's database.

By default all three are SQLite files under ``LOOPML_HOME``. One setting, ``LOOPML_DATABASE_URL`` with a
PostgreSQL URL (``postgresql://user:password@host:5432/loopml``), moves all three to that server:

- the platform database (invocation log, deployments, keys, registry) is that database;
- Dagster's runs, event log and schedules go to ``<database>_dagster`` (``dagster-postgres``);
- Label Studio's data goes to ``<database>_labelstudio`` (its own ``DJANGO_DB=default`` settings).

The two sibling databases are created on the same server when missing (the URL's user needs ``CREATEDB``, or
an administrator creates them first).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url

DAGSTER_SUFFIX = "_dagster"
LABELSTUDIO_SUFFIX = "_labelstudio"


class StoreError(RuntimeError):
    """A database URL LoopML cannot use, or a server it cannot reach."""


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (any driver)."""
    return make_url(url).get_backend_name() == "postgresql"


def _parsed(url: str) -> URL:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    if not parsed.database:
        raise StoreError(
            f"the PostgreSQL URL names no database: {parsed.render_as_string(hide_password=True)} "
            "(e.g. postgresql://user:password@host:5432/loopml)"
        )
    return parsed


def sibling_url(url: str, suffix: str) -> str:
    """The URL of database ``<database><suffix>`` on the same server, as the same user."""
    parsed = _parsed(url)
    return parsed.set(database=f"{parsed.database}{suffix}").render_as_string(hide_password=False)


def dagster_url(url: str) -> str:
    """``url`` for ``dagster-postgres``, with the psycopg2 driver it is written for (SQLAlchemy 2.1 reads a plain
    ``postgresql://`` as psycopg 3, on which its ``NOTIFY`` with a bound parameter fails)."""
    return _parsed(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def ensure_database(url: str) -> bool:
    """Create the database ``url`` names when it does not exist (connected to the server's ``postgres``
    database). True if it was created."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    parsed = _parsed(url)
    name = parsed.database
    assert name is not None
    engine = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            if exists:
                return False
            quoted = connection.dialect.identifier_preparer.quote(name)
            connection.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    except OperationalError as error:
        raise StoreError(
            f"PostgreSQL at {parsed.host or 'localhost'}:{parsed.port or 5432} is not reachable as "
            f"{parsed.username!r}: {str(error.orig).strip()}"
        ) from None
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Stores:
    """The three stores of one installation."""

    platform_url: str
    dagster_url: str | None  # None: Dagster's SQLite storage in DAGSTER_HOME
    labelstudio_url: str | None  # None: Label Studio's SQLite file in its data folder

    @property
    def postgres(self) -> bool:
        return self.dagster_url is not None

    def ensure(self) -> list[str]:
        """Create the PostgreSQL databases that are missing; their names."""
        if not self.postgres:
            return []
        created = []
        for url in (self.platform_url, self.dagster_url, self.labelstudio_url):
            assert url is not None
            if ensure_database(url):
                created.append(str(make_url(url).database))
        return created

    def dagster_storage_yaml(self) -> str:
        """The ``storage:`` section of ``dagster.yaml`` (empty for SQLite: Dagster's default in its home)."""
        if self.dagster_url is None:
            return ""
        return f"storage:\n  postgres:\n    postgres_url: {_yaml_string(dagster_url(self.dagster_url))}\n"

    def labelstudio_env(self) -> dict[str, str]:
        """Label Studio's database settings (none for its default SQLite file)."""
        if self.labelstudio_url is None:
            return {}
        parsed = _parsed(self.labelstudio_url)
        return {
            "DJANGO_DB": "default",  # Label Studio's name for its PostgreSQL settings
            "POSTGRE_NAME": str(parsed.database),
            "POSTGRE_USER": parsed.username or "postgres",
            "POSTGRE_PASSWORD": parsed.password or "",
            "POSTGRE_HOST": parsed.host or "localhost",
            "POSTGRE_PORT": str(parsed.port or 5432),
        }


def _yaml_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def stores_for(platform_url: str) -> Stores:
    """The stores an installation with platform database ``platform_url`` uses."""
    if not is_postgres(platform_url):
        return Stores(platform_url, None, None)
    return Stores(
        platform_url, sibling_url(platform_url, DAGSTER_SUFFIX), sibling_url(platform_url, LABELSTUDIO_SUFFIX)
    )
