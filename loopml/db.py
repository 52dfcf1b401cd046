"""The platform database (SQLAlchemy): SQLite in WAL mode by default, PostgreSQL by URL.

Tables are added here as lifecycle stages need them; ``create_all`` is idempotent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive (they were stored in UTC): make every datetime aware UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


LEGACY_RIGHTS = "invoke,feedback,hooks,admin"  # what a key made before key scopes could do


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class FunctionRow(Base):
    """A function: one input type, one label set, one Label Studio project."""

    __tablename__ = "functions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    input_type: Mapped[str] = mapped_column(String(16))
    labels: Mapped[list[str]] = mapped_column(JSON)
    encoder_id: Mapped[str] = mapped_column(String(64))
    labelstudio_project_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LabelChangeRow(Base):
    """A change of a function's label set: a label added or removed, by whom (CLI or Label Studio), when."""

    __tablename__ = "label_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    function: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(64))
    change: Mapped[str] = mapped_column(String(8))  # "add" | "remove"
    source: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeploymentRow(Base):
    """What serves a function: the primary version and, during a rollout, a canary at a weight."""

    __tablename__ = "deployments"

    function: Mapped[str] = mapped_column(String(64), primary_key=True)
    primary_tag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    canary_tag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    canary_weight: Mapped[float] = mapped_column(Float, default=0.0)
    canary_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=0, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeploymentEventRow(Base):
    """The deployment history: every decision with its reason."""

    __tablename__ = "deployment_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    function: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    action: Mapped[str] = mapped_column(String(32))
    primary_tag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    canary_tag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    canary_weight: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(64), default="loopml")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ApiKeyRow(Base):
    """An API key: only its SHA-256 hash is stored; ``key_id`` is the public prefix shown in listings."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    # comma-separated rights (invoke, feedback, hooks, admin) and function names ("*": every function); keys made
    # before scopes existed keep every right on every function (see _migrate)
    rights: Mapped[str] = mapped_column(String(64), default="invoke,feedback", server_default=LEGACY_RIGHTS)
    functions: Mapped[str] = mapped_column(Text, default="*", server_default="*")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class InvocationRow(Base):
    """One answered call: input, embedding, every scoring version's scores, who answered, how fast."""

    __tablename__ = "invocations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    function: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    input_text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # float16 little-endian
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)  # {version tag: [score per label]}
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)  # {version tag: [label names]}
    answered_by: Mapped[str] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    sticky_key: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (Index("ix_invocations_function_created", "function", "created_at"),)


class FeedbackRow(Base):
    """A caller's word on an invocation: flagged as wrong, and/or the true label."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    invocation_id: Mapped[str] = mapped_column(String(36), index=True)
    function: Mapped[str] = mapped_column(String(64), index=True)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    true_label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per URL and process; SQLite gets WAL and a busy timeout."""
    from sqlalchemy.engine import make_url

    engine_url = make_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    else:
        # a server that stops answering fails a connect in seconds, not minutes (the invocation log then spools)
        connect_args = {"connect_timeout": 5} if engine_url.get_backend_name() == "postgresql" else {}
        engine = create_engine(url, pool_pre_ping=True, json_serializer=json.dumps, connect_args=connect_args)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":  # replicas starting at once on a new database: one at a time
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
        Base.metadata.create_all(connection)
        _migrate(connection)
    return engine


SCHEMA_LOCK = 4_242_001  # the PostgreSQL advisory lock held while the tables are created or migrated


def _migrate(connection: Connection) -> None:
    """Columns added after a table was first created (``create_all`` adds tables, not columns)."""
    from sqlalchemy import inspect

    columns = {column["name"] for column in inspect(connection).get_columns("api_keys")}
    if "rights" not in columns:
        default = f"'{LEGACY_RIGHTS}'"
        connection.execute(text(f"ALTER TABLE api_keys ADD COLUMN rights VARCHAR(64) NOT NULL DEFAULT {default}"))
    if "functions" not in columns:
        connection.execute(text("ALTER TABLE api_keys ADD COLUMN functions TEXT NOT NULL DEFAULT '*'"))


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)
