"""The service's user store on SQLite and PostgreSQL: sequence numbers, limits, prompts, deletion.

PostgreSQL runs when COLDPROMPT_TEST_POSTGRES_URL is set (scripts/start_test_postgres.sh prints it); without
it those cases are skipped, unless COLDPROMPT_REQUIRE_POSTGRES=1 makes that a failure.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from coldprompt.service.store import (
    NewInteraction,
    StoredPrompt,
    TooManyInteractionsError,
    UserStore,
    metadata,
)


def postgres_url_or_skip() -> str:
    url = os.environ.get("COLDPROMPT_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("COLDPROMPT_REQUIRE_POSTGRES") == "1":
            pytest.fail("COLDPROMPT_REQUIRE_POSTGRES=1 but COLDPROMPT_TEST_POSTGRES_URL is not set")
        pytest.skip("COLDPROMPT_TEST_POSTGRES_URL is not set; run scripts/start_test_postgres.sh and export its URL")
    return url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory) -> UserStore:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'users.db'}"
    else:
        url = postgres_url_or_skip()
    store = UserStore(url)
    metadata.drop_all(store.engine)
    store.create_schema()
    yield store
    store.close()


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def interactions(*item_ids: str) -> list[NewInteraction]:
    return [NewInteraction(item_id, None, None) for item_id in item_ids]


def prompt(version: int, checkpoint: str = "checkpoint-a") -> StoredPrompt:
    return StoredPrompt(checkpoint, version, "float32", (2, 2), bytes(range(16)))


def test_append_numbers_interactions(store: UserStore):
    user = new_user()
    first = store.append_interactions(user, [NewInteraction("1", 10.0, 4.5), NewInteraction("2", None, None)], "p", 100)
    second = store.append_interactions(user, interactions("3"), None, 100)
    assert (first.created, first.stored, first.total_interactions, first.history_version) == (True, 2, 2, 1)
    assert (second.created, second.stored, second.total_interactions, second.history_version) == (False, 1, 3, 2)
    stored = store.load_user(user)
    assert stored.profile == "p"
    assert [row["sequence"] for row in stored.interactions] == [0, 1, 2]
    assert [row["item_id"] for row in stored.interactions] == ["1", "2", "3"]
    assert stored.interactions[0]["timestamp"] == 10.0
    assert stored.interactions[0]["rating"] == 4.5


def test_profile_only_write_bumps_version(store: UserStore):
    user = new_user()
    store.append_interactions(user, interactions("1"), None, 100)
    result = store.append_interactions(user, [], "new profile", 100)
    assert result.total_interactions == 1
    assert result.history_version == 2
    assert store.load_user(user).profile == "new profile"


def test_concurrent_appends_lose_nothing(store: UserStore):
    user = new_user()
    errors = []

    def write(writer: int) -> None:
        try:
            for n in range(10):
                store.append_interactions(user, interactions(f"{writer}-{n}"), None, 1000)
        except Exception as error:  # reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    rows = store.load_user(user).interactions
    assert [row["sequence"] for row in rows] == list(range(80))
    assert sorted(row["item_id"] for row in rows) == sorted(f"{w}-{n}" for w in range(8) for n in range(10))


def test_limit_stores_nothing(store: UserStore):
    user = new_user()
    store.append_interactions(user, interactions("1", "2"), None, 3)
    with pytest.raises(TooManyInteractionsError, match="at most 3"):
        store.append_interactions(user, interactions("3", "4"), None, 3)
    stored = store.load_user(user)
    assert len(stored.interactions) == 2
    assert stored.history_version == 1


def test_context_reads_recent_items_and_prompt(store: UserStore):
    user = new_user()
    store.append_interactions(user, [NewInteraction(str(i), None, float(i % 5)) for i in range(6)], "p", 100)
    assert store.save_prompt(user, prompt(1))
    context = store.load_context(user, 4)
    assert context.recent_items == ["2", "3", "4", "5"]
    assert context.recent_ratings == [2.0, 3.0, 4.0, 0.0]
    assert context.interacted_items == {str(i) for i in range(6)}
    assert context.prompt == prompt(1)
    assert store.load_context(new_user(), 4) is None


def test_stale_prompt_not_saved(store: UserStore):
    user = new_user()
    store.append_interactions(user, interactions("1"), None, 100)
    store.append_interactions(user, interactions("2"), None, 100)
    assert not store.save_prompt(user, prompt(1))
    assert store.load_context(user, 10).prompt is None
    assert store.save_prompt(user, prompt(2))
    assert store.save_prompt(user, prompt(2, checkpoint="checkpoint-b"))
    assert store.load_context(user, 10).prompt.checkpoint_id == "checkpoint-b"


def test_prompt_for_missing_user_not_saved(store: UserStore):
    assert not store.save_prompt(new_user(), prompt(1))


def test_delete_removes_everything(store: UserStore):
    user = new_user()
    store.append_interactions(user, interactions("1", "2"), "p", 100)
    store.save_prompt(user, prompt(1))
    assert store.delete_user(user)
    assert store.load_user(user) is None
    assert not store.delete_user(user)
    with store.engine.connect() as connection:
        for table in ("interactions", "prompts"):
            count = connection.execute(text(f"SELECT COUNT(*) FROM {table} WHERE user_id = :u"), {"u": user}).scalar()
            assert count == 0, table


def test_sqlite_uses_wal(tmp_path: Path):
    store = UserStore(f"sqlite:///{tmp_path / 'wal.db'}")
    store.create_schema()
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.close()


@pytest.mark.parametrize("url", ["mysql://localhost/db", "not a url", "postgresql+nodriver://localhost/db"])
def test_unsupported_url_rejected(url: str):
    with pytest.raises(ValueError, match="database URL"):
        UserStore(url)
