"""Durable user store: profiles, interactions and adapted soft prompts, through SQLAlchemy 2.

Works with SQLite (WAL mode, ``synchronous=FULL``) and PostgreSQL (psycopg 3). Every write method commits
before it returns, so an interaction acknowledged to a client survives a crash of the server process.

Per-user sequence numbers come from ``users.interaction_count``, incremented by an ``UPDATE ... RETURNING``
inside the writing transaction. That statement locks the user's row in PostgreSQL, and SQLite write
transactions start with ``BEGIN IMMEDIATE`` (one writer at a time), so two concurrent writes for one user get
disjoint sequence numbers and neither is lost.

Prompts are stored as raw tensor bytes with their dtype and shape (never pickle). Each is tagged with the
checkpoint id and the user's ``history_version`` it was adapted for. A prompt whose tags differ from the
current ones is stale, and the caller adapts again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

DEFAULT_DB_URL = "sqlite:///coldprompt.db"
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a SQLite write waits for another writer before failing

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("profile", Text, nullable=True),
    # Interactions stored so far; the next interaction gets this number as its sequence number.
    Column("interaction_count", Integer, nullable=False),
    # Incremented by every change of the history or the profile; stored prompts are tagged with it.
    Column("history_version", Integer, nullable=False),
    Column("created_at", Float, nullable=False),  # seconds since the Unix epoch
    Column("updated_at", Float, nullable=False),
)

interactions = Table(
    "interactions",
    metadata,
    Column("user_id", String(64), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("sequence", Integer, primary_key=True),  # 0-based position in the user's history
    Column("item_id", String(64), nullable=False),
    Column("timestamp", Float, nullable=True),
    Column("rating", Float, nullable=True),
)

prompts = Table(
    "prompts",
    metadata,
    Column("user_id", String(64), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("checkpoint_id", String(64), nullable=False),
    Column("history_version", Integer, nullable=False),
    Column("dtype", String(16), nullable=False),  # torch dtype name without the "torch." prefix
    Column("shape", String(64), nullable=False),  # comma-separated sizes, e.g. "8,576"
    Column("data", LargeBinary, nullable=False),  # raw little-endian tensor bytes, C order
)


class TooManyInteractionsError(ValueError):
    """Storing the interactions would take a user past the per-user limit."""

    def __init__(self, user_id: str, stored: int, requested: int, limit: int):
        super().__init__(
            f"user {user_id!r} has {stored} interactions and the request adds {requested}, but at most {limit} "
            f"are stored per user; delete the user to start over"
        )


@dataclass
class NewInteraction:
    item_id: str
    timestamp: float | None
    rating: float | None


@dataclass
class AppendResult:
    created: bool
    stored: int
    total_interactions: int
    history_version: int


@dataclass
class StoredPrompt:
    checkpoint_id: str
    history_version: int
    dtype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass
class UserContext:
    """Inputs of a recommendation for a stored user, read in one transaction."""

    profile: str | None
    history_version: int
    recent_items: list[str]  # the most recent interactions, oldest first, at most the requested limit
    recent_ratings: list[float | None]
    interacted_items: set[str]  # every item in the whole history, for excluding from recommendations
    prompt: StoredPrompt | None


@dataclass
class StoredUser:
    profile: str | None
    history_version: int
    interactions: list[dict]  # sequence, item_id, timestamp, rating


class UserStore:
    """Reads and writes users through one SQLAlchemy engine; safe to call from several threads."""

    def __init__(self, url: str = DEFAULT_DB_URL):
        """Connect lazily to ``url``; raise ValueError for a malformed URL, another database or a missing driver."""
        try:
            self.url = make_url(url)
            self.dialect = self.url.get_dialect().name
            if self.dialect not in ("sqlite", "postgresql"):
                raise ValueError(f"database URL {self.describe()}: only sqlite and postgresql are supported")
            self.engine = self._create_engine()
        except sa_exc.ArgumentError as error:  # includes NoSuchModuleError, a missing driver
            raise ValueError(
                f"database URL: {error}; expected sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"
            ) from error

    # ------------------------------------------------------------------------------------------ setup
    def _create_engine(self) -> Engine:
        # hide_parameters keeps stored data (item ids, profiles) out of error messages and logs.
        if self.dialect == "sqlite":
            engine = create_engine(
                self.url, hide_parameters=True,
                connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            )
            event.listen(engine, "connect", _configure_sqlite_connection)
            event.listen(engine, "begin", _begin_sqlite_transaction)
            return engine
        return create_engine(self.url, hide_parameters=True, pool_pre_ping=True)

    def create_schema(self) -> None:
        """Create the tables that do not exist yet (existing tables are left unchanged)."""
        metadata.create_all(self.engine)

    def describe(self) -> str:
        """Return the database URL with any password masked, for logs."""
        return self.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            connection = connection.execution_options(coldprompt_write=True)
            with connection.begin():
                yield connection

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """Open a read transaction on one snapshot (REPEATABLE READ in PostgreSQL, a plain BEGIN in SQLite WAL mode)."""
        with self.engine.connect() as connection:
            if self.dialect == "postgresql":
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                yield connection

    def _insert(self, table: Table):
        return (sqlite if self.dialect == "sqlite" else postgresql).insert(table)

    # ------------------------------------------------------------------------------------------ writes
    def append_interactions(
        self, user_id: str, new: Sequence[NewInteraction], profile: str | None, max_per_user: int
    ) -> AppendResult:
        """Store ``new`` after the user's existing interactions (creating the user) and set the profile if given.

        Raises :class:`TooManyInteractionsError`, storing nothing, when the user would exceed ``max_per_user``.
        """
        now = time.time()
        with self._write() as connection:
            # RETURNING yields the row only when it was inserted (with psycopg 3 the rowcount of this INSERT is -1).
            created = connection.execute(
                self._insert(users)
                .values(id=user_id, profile=None, interaction_count=0, history_version=0, created_at=now, updated_at=now)
                .on_conflict_do_nothing(index_elements=[users.c.id])
                .returning(users.c.id)
            ).first() is not None

            changes = {
                "interaction_count": users.c.interaction_count + len(new),
                "history_version": users.c.history_version + 1,
                "updated_at": now,
            }
            if profile is not None:
                changes["profile"] = profile
            total, version = connection.execute(
                update(users).where(users.c.id == user_id).values(**changes)
                .returning(users.c.interaction_count, users.c.history_version)
            ).one()
            if total > max_per_user:
                raise TooManyInteractionsError(user_id, total - len(new), len(new), max_per_user)

            first = total - len(new)
            if new:
                connection.execute(interactions.insert(), [
                    {"user_id": user_id, "sequence": first + i, "item_id": x.item_id,
                     "timestamp": x.timestamp, "rating": x.rating}
                    for i, x in enumerate(new)
                ])
        return AppendResult(created, len(new), total, version)

    def save_prompt(self, user_id: str, prompt: StoredPrompt) -> bool:
        """Store a prompt, replacing the user's previous one; return False, storing nothing, when it is stale.

        The prompt is stale when the user's history changed, or the user was deleted, after the history the
        prompt was adapted on was read (``prompt.history_version`` is no longer the user's version).
        """
        with self._write() as connection:
            current = connection.execute(
                select(users.c.history_version).where(users.c.id == user_id).with_for_update()
            ).scalar_one_or_none()
            if current != prompt.history_version:
                return False
            values = {
                "user_id": user_id, "checkpoint_id": prompt.checkpoint_id, "history_version": prompt.history_version,
                "dtype": prompt.dtype, "shape": ",".join(str(s) for s in prompt.shape), "data": prompt.data,
            }
            statement = self._insert(prompts).values(**values)
            connection.execute(statement.on_conflict_do_update(
                index_elements=[prompts.c.user_id],
                set_={name: statement.excluded[name] for name in values if name != "user_id"},
            ))
        return True

    def delete_user(self, user_id: str) -> bool:
        """Delete the user with their interactions and prompt; return False when the user does not exist."""
        with self._write() as connection:
            connection.execute(delete(prompts).where(prompts.c.user_id == user_id))
            connection.execute(delete(interactions).where(interactions.c.user_id == user_id))
            return connection.execute(delete(users).where(users.c.id == user_id)).rowcount == 1

    # ------------------------------------------------------------------------------------------ reads
    def load_context(self, user_id: str, recent_limit: int) -> UserContext | None:
        """Read the user's profile, last ``recent_limit`` interactions, item set and stored prompt, or None."""
        with self._read() as connection:
            user = connection.execute(
                select(users.c.profile, users.c.history_version).where(users.c.id == user_id)
            ).first()
            if user is None:
                return None
            recent = connection.execute(
                select(interactions.c.item_id, interactions.c.rating)
                .where(interactions.c.user_id == user_id)
                .order_by(interactions.c.sequence.desc())
                .limit(recent_limit)
            ).all()[::-1]
            interacted = set(connection.execute(
                select(interactions.c.item_id).where(interactions.c.user_id == user_id).distinct()
            ).scalars())
            row = connection.execute(select(prompts).where(prompts.c.user_id == user_id)).first()
        prompt = None
        if row is not None:
            shape = tuple(int(s) for s in row.shape.split(",") if s)
            prompt = StoredPrompt(row.checkpoint_id, row.history_version, row.dtype, shape, bytes(row.data))
        return UserContext(
            profile=user.profile,
            history_version=user.history_version,
            recent_items=[r.item_id for r in recent],
            recent_ratings=[r.rating for r in recent],
            interacted_items=interacted,
            prompt=prompt,
        )

    def load_user(self, user_id: str) -> StoredUser | None:
        """Read the user's profile and whole history, oldest first, or None when the user does not exist."""
        with self._read() as connection:
            user = connection.execute(
                select(users.c.profile, users.c.history_version).where(users.c.id == user_id)
            ).first()
            if user is None:
                return None
            rows = connection.execute(
                select(interactions.c.sequence, interactions.c.item_id, interactions.c.timestamp, interactions.c.rating)
                .where(interactions.c.user_id == user_id)
                .order_by(interactions.c.sequence)
            ).all()
        return StoredUser(user.profile, user.history_version, [row._asdict() for row in rows])


def _configure_sqlite_connection(dbapi_connection, _record) -> None:
    # isolation_level=None stops the sqlite3 module from opening transactions itself, so the "begin"
    # listener below decides how each transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL syncs the WAL on every commit, so committed data also survives a power loss, not only a crash.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_sqlite_transaction(connection: Connection) -> None:
    # A write transaction takes the write lock up front, waiting up to the busy timeout for another writer.
    # A deferred BEGIN that reads first and writes later could fail with SQLITE_BUSY instead of waiting.
    immediate = connection.get_execution_options().get("coldprompt_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
