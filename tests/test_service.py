"""The HTTP service end to end: real uvicorn servers on 127.0.0.1, a tiny random backbone, SQLite and PostgreSQL.

Most tests share one loaded model and one server per database. PostgreSQL runs when
COLDPROMPT_TEST_POSTGRES_URL is set (scripts/start_test_postgres.sh prints it); without it those cases are
skipped, unless COLDPROMPT_REQUIRE_POSTGRES=1 makes that a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import load_file, save_file
from sqlalchemy import select

from coldprompt.checkpoint import MANIFEST, WEIGHTS
from coldprompt.cli import main
from coldprompt.service import ServiceSettings, UserStore, create_app
from coldprompt.service.model import ServiceModel
from coldprompt.service.store import metadata, prompts
from tiny_models import save_tiny_llama, train_bpe_tokenizer

READY_TIMEOUT_S = 120
MAX_PER_USER = 300  # the shared servers' per-user limit, small enough to reach in a test


# ---------------------------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url}/healthz did not return 200 within {READY_TIMEOUT_S} s")


class ThreadServer:
    """A uvicorn server for ``app`` on 127.0.0.1 and a free port, run in a background thread."""

    def __init__(self, app):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread stopped during startup"
            assert time.monotonic() < deadline, "the server did not start within 30 s"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def state(self):
        return self.app.state.service


def start_cli_server(checkpoint: Path, db_url: str, log: Path) -> tuple[subprocess.Popen, str]:
    """Start `coldprompt serve` in a subprocess and wait until /healthz returns 200."""
    port = free_port()
    command = [sys.executable, "-m", "coldprompt", "serve", "--checkpoint", str(checkpoint), "--db", db_url,
               "--port", str(port)]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, log)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, url


def postgres_url_or_skip() -> str:
    url = os.environ.get("COLDPROMPT_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("COLDPROMPT_REQUIRE_POSTGRES") == "1":
            pytest.fail("COLDPROMPT_REQUIRE_POSTGRES=1 but COLDPROMPT_TEST_POSTGRES_URL is not set")
        pytest.skip("COLDPROMPT_TEST_POSTGRES_URL is not set; run scripts/start_test_postgres.sh and export its URL")
    return url


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("service")
    backbone = save_tiny_llama(root / "tiny-llama", train_bpe_tokenizer(), max_positions=512)
    output = root / "out"
    code = main([
        "train", "--output-dir", str(output), "--algorithm", "fomaml", f"backbone={backbone}",
        "shared_budget_s=1", "meta_budget_s=1", "ks=[0,1]", "max_test_users=4", "validation_users=4",
        "batch_size=16",
    ])
    assert code == 0
    return output / "checkpoint"


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> ServiceModel:
    return ServiceModel.load(checkpoint)


@pytest.fixture(scope="module")
def catalogue(model: ServiceModel) -> list[str]:
    return list(model.data.item_ids)


@dataclass
class Running:
    url: str
    db_url: str
    server: ThreadServer


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def running(request, tmp_path_factory, checkpoint: Path, model: ServiceModel) -> Running:
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'service.db'}"
    else:
        db_url = postgres_url_or_skip()
        store = UserStore(db_url)
        metadata.drop_all(store.engine)
        store.close()
    settings = ServiceSettings(max_interactions_per_user=MAX_PER_USER)
    app = create_app(checkpoint, db_url, settings, load_model=lambda: model)
    with ThreadServer(app) as server:
        wait_until_ready(server.url)
        yield Running(server.url, db_url, server)


@pytest.fixture
def client(running: Running) -> httpx.Client:
    with httpx.Client(base_url=running.url, timeout=60) as client:
        yield client


def new_user(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def post_items(client: httpx.Client, user: str, item_ids: list[str], **fields) -> httpx.Response:
    body = {"interactions": [{"item_id": item_id} for item_id in item_ids], **fields}
    return client.post(f"/v1/users/{user}/interactions", json=body)


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """Return the value of one sample from /metrics (0 when absent)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def stored_prompt_row(db_url: str, user: str):
    store = UserStore(db_url)
    try:
        with store.engine.connect() as connection:
            return connection.execute(select(prompts).where(prompts.c.user_id == user)).first()
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- happy paths
def test_openapi_schema_served(client: httpx.Client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert set(paths["/v1/users/{user_id}/interactions"]) == {"post"}
    assert set(paths["/v1/users/{user_id}/recommendations"]) == {"get"}
    assert set(paths["/v1/users/{user_id}"]) == {"get", "delete"}
    assert set(paths["/v1/recommendations"]) == {"post"}
    assert "/healthz" in paths
    assert "/metrics" in paths
    assert client.get("/docs").status_code == 200


def test_healthz_and_metrics(client: httpx.Client, model: ServiceModel):
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["checkpoint_id"] == model.checkpoint_id
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("coldprompt_http_requests_total", "coldprompt_http_request_duration_seconds_bucket",
                 "coldprompt_adaptations_total", "coldprompt_store_errors_total", "coldprompt_queue_depth"):
        assert name in metrics.text
    assert metric(client, "coldprompt_http_requests_total", route="/healthz", method="GET", status="200") >= 1
    assert metric(client, "coldprompt_model_loaded") == 1


def test_request_id_echoed(client: httpx.Client):
    assert client.get("/healthz", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"] == "trace-42"
    assert len(client.get("/healthz").headers["X-Request-ID"]) == 32


def test_interactions_create_then_append(client: httpx.Client, catalogue: list[str]):
    user = new_user()
    first = client.post(f"/v1/users/{user}/interactions", json={
        "interactions": [{"item_id": catalogue[0], "timestamp": 1700000000.5, "rating": 4.5},
                         {"item_id": catalogue[1]}],
        "profile": "A user who likes comedies.",
    })
    assert first.status_code == 201
    assert first.json() == {"user_id": user, "created": True, "stored": 2, "total_interactions": 2,
                            "history_version": 1}
    second = post_items(client, user, [catalogue[2]])
    assert second.status_code == 200
    assert second.json()["created"] is False
    assert second.json()["total_interactions"] == 3
    assert second.json()["history_version"] == 2


def test_get_user_returns_history_and_profile(client: httpx.Client, catalogue: list[str]):
    user = new_user()
    client.post(f"/v1/users/{user}/interactions", json={
        "interactions": [{"item_id": catalogue[5], "rating": 2}, {"item_id": catalogue[6], "timestamp": 12.0}],
        "profile": "A student.",
    })
    response = client.get(f"/v1/users/{user}")
    assert response.status_code == 200
    body = response.json()
    assert body["profile"] == "A student."
    assert body["history_version"] == 1
    assert body["interactions"] == [
        {"sequence": 0, "item_id": catalogue[5], "timestamp": None, "rating": 2.0},
        {"sequence": 1, "item_id": catalogue[6], "timestamp": 12.0, "rating": None},
    ]


def test_delete_user_removes_everything(client: httpx.Client, running: Running, catalogue: list[str]):
    user = new_user()
    post_items(client, user, catalogue[:3], profile="A user.")
    assert client.get(f"/v1/users/{user}/recommendations").json()["prompt"] == "adapted"
    assert stored_prompt_row(running.db_url, user) is not None
    assert client.delete(f"/v1/users/{user}").status_code == 204
    assert client.get(f"/v1/users/{user}").status_code == 404
    assert stored_prompt_row(running.db_url, user) is None
    assert client.delete(f"/v1/users/{user}").status_code == 404
    assert client.get(f"/v1/users/{user}/recommendations").json()["prompt"] == "initialisation"


def test_recommendations_adapt_once_then_reuse(client: httpx.Client, running: Running, catalogue: list[str]):
    user = new_user()
    post_items(client, user, catalogue[10:14])
    before = metric(client, "coldprompt_adaptations_total")
    first = client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
    assert first.status_code == 200
    assert first.json()["prompt"] == "adapted"
    assert metric(client, "coldprompt_adaptations_total") == before + 1
    row = stored_prompt_row(running.db_url, user)
    assert row.dtype == "float32"
    assert row.shape == "8,32"
    assert len(row.data) == 8 * 32 * 4
    assert row.history_version == 1

    second = client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
    assert second.json()["prompt"] == "stored"
    assert metric(client, "coldprompt_adaptations_total") == before + 1
    assert [item["item_id"] for item in second.json()["items"]] == [item["item_id"] for item in first.json()["items"]]

    post_items(client, user, [catalogue[14]])
    third = client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
    assert third.json()["prompt"] == "adapted"
    assert stored_prompt_row(running.db_url, user).history_version == 2


def test_recommendations_exclude_history_and_explain(client: httpx.Client, catalogue: list[str]):
    user = new_user()
    history = catalogue[20:26]
    post_items(client, user, history)
    body = client.get(f"/v1/users/{user}/recommendations", params={"k": 7}).json()
    assert body["user_id"] == user
    assert body["history_used"] == 6
    items = body["items"]
    assert len(items) == 7
    assert not {item["item_id"] for item in items} & set(history)
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)
    for item in items:
        assert item["title"]
        reasons = item["because"]
        assert len(reasons) == 3
        assert {reason["item_id"] for reason in reasons} <= set(history)
        similarities = [reason["similarity"] for reason in reasons]
        assert similarities == sorted(similarities, reverse=True)
        assert all(-1.0001 <= s <= 1.0001 for s in similarities)


def test_unknown_user_gets_initialisation(client: httpx.Client):
    user = new_user("never-stored")
    body = client.get(f"/v1/users/{user}/recommendations", params={"k": 3}).json()
    assert body["prompt"] == "initialisation"
    assert body["history_used"] == 0
    assert len(body["items"]) == 3
    assert all(item["because"] == [] for item in body["items"])
    assert client.get(f"/v1/users/{user}").status_code == 404


def test_profile_only_user_scored_with_profile(client: httpx.Client):
    user = new_user()
    created = client.post(f"/v1/users/{user}/interactions", json={"interactions": [], "profile": "A retired teacher."})
    assert created.status_code == 201
    assert created.json()["total_interactions"] == 0
    with_profile = client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
    without = client.get(f"/v1/users/{new_user()}/recommendations", params={"k": 10}).json()
    assert with_profile["prompt"] == "initialisation"
    assert [i["score"] for i in with_profile["items"]] != [i["score"] for i in without["items"]]


def test_history_beyond_context_uses_last_items(client: httpx.Client, catalogue: list[str]):
    user = new_user()
    assert post_items(client, user, catalogue[100:300]).status_code == 201
    assert post_items(client, user, catalogue[300:350]).status_code == 200
    body = client.get(f"/v1/users/{user}/recommendations", params={"k": 100}).json()
    assert body["history_used"] == 200
    assert len(body["items"]) == 100
    recommended = {item["item_id"] for item in body["items"]}
    assert not recommended & set(catalogue[100:350])
    # Reasons come from the items the model read: the last 200.
    reasons = {reason["item_id"] for item in body["items"] for reason in item["because"]}
    assert reasons <= set(catalogue[150:350])


def test_stateless_recommendations_store_nothing(client: httpx.Client, running: Running, catalogue: list[str]):
    history = catalogue[30:34]
    response = client.post("/v1/recommendations", json={"history": history, "profile": "A user.", "k": 4})
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] is None
    assert body["prompt"] == "adapted"
    assert body["history_used"] == 4
    assert len(body["items"]) == 4
    assert not {item["item_id"] for item in body["items"]} & set(history)
    assert all({r["item_id"] for r in item["because"]} <= set(history) for item in body["items"])

    empty = client.post("/v1/recommendations", json={}).json()
    assert empty["prompt"] == "initialisation"
    assert len(empty["items"]) == 10


# ---------------------------------------------------------------------------------------------- client errors
def test_unknown_items_listed_and_nothing_stored(client: httpx.Client, catalogue: list[str]):
    user = new_user()
    response = post_items(client, user, [catalogue[0], "no-such-item", "missing-too", "no-such-item"])
    assert response.status_code == 422
    assert response.json()["unknown_item_ids"] == ["no-such-item", "missing-too"]
    assert "no-such-item" in response.json()["detail"]
    assert client.get(f"/v1/users/{user}").status_code == 404

    stateless = client.post("/v1/recommendations", json={"history": [catalogue[0], "nope"]})
    assert stateless.status_code == 422
    assert stateless.json()["unknown_item_ids"] == ["nope"]


@pytest.mark.parametrize("k", ["0", "101", "-1", "ten", "1.5"])
def test_k_out_of_range_rejected(client: httpx.Client, k: str):
    response = client.get(f"/v1/users/{new_user()}/recommendations", params={"k": k})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "k"]


@pytest.mark.parametrize("k", [0, 101])
def test_stateless_k_out_of_range_rejected(client: httpx.Client, k: int):
    response = client.post("/v1/recommendations", json={"history": [], "k": k})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "k"]


def test_oversized_histories_rejected(client: httpx.Client, catalogue: list[str]):
    user = new_user()
    response = post_items(client, user, catalogue[:201])
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "too_long"
    assert client.get(f"/v1/users/{user}").status_code == 404
    stateless = client.post("/v1/recommendations", json={"history": catalogue[:201]})
    assert stateless.status_code == 422


def test_per_user_limit_returns_409(client: httpx.Client, catalogue: list[str]):
    user = new_user()
    assert post_items(client, user, catalogue[:200]).status_code == 201
    assert post_items(client, user, catalogue[200:MAX_PER_USER]).status_code == 200
    over = post_items(client, user, [catalogue[0]])
    assert over.status_code == 409
    assert f"at most {MAX_PER_USER}" in over.json()["detail"]
    assert len(client.get(f"/v1/users/{user}").json()["interactions"]) == MAX_PER_USER


@pytest.mark.parametrize("body", [b'{"interactions": [', b"not json", b'{"interactions": [{"item_id": "1"}]}}'])
def test_malformed_json_rejected(client: httpx.Client, body: bytes):
    response = client.post(f"/v1/users/{new_user()}/interactions", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("body", [
    {"interactions": [{"item_id": "1"}], "extra": 1},
    {"interactions": [{"item_id": "1", "score": 5}]},
])
def test_unknown_fields_rejected(client: httpx.Client, body: dict):
    response = client.post(f"/v1/users/{new_user()}/interactions", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "extra_forbidden"


def test_stateless_unknown_field_rejected(client: httpx.Client):
    response = client.post("/v1/recommendations", json={"history": [], "user": "x"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "extra_forbidden"


@pytest.mark.parametrize("interaction", [
    {"item_id": ""},
    {"item_id": 1},
    {"item_id": "x" * 65},
    {"item_id": "1", "rating": 6},
    {"item_id": "1", "rating": -0.5},
    {"item_id": "1", "rating": "high"},
])
def test_invalid_interaction_values_rejected(client: httpx.Client, interaction: dict):
    response = client.post(f"/v1/users/{new_user()}/interactions", json={"interactions": [interaction]})
    assert response.status_code == 422


@pytest.mark.parametrize("body", [
    b'{"interactions": [{"item_id": "1", "rating": NaN}]}',
    b'{"interactions": [{"item_id": "1", "timestamp": Infinity}]}',
])
def test_non_finite_numbers_rejected(client: httpx.Client, body: bytes):
    response = client.post(f"/v1/users/{new_user()}/interactions", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "finite_number"


@pytest.mark.parametrize("body", [{}, {"interactions": []}, [], "text"])
def test_empty_or_non_object_body_rejected(client: httpx.Client, body):
    response = client.post(f"/v1/users/{new_user()}/interactions", json=body)
    assert response.status_code == 422


def test_too_long_profile_rejected(client: httpx.Client):
    response = client.post(f"/v1/users/{new_user()}/interactions", json={"profile": "x" * 1001})
    assert response.status_code == 422


@pytest.mark.parametrize("user_id", ["-starts-with-dash", "a" * 65, "has space", "ümlaut", ".hidden"])
def test_bad_user_ids_rejected(client: httpx.Client, catalogue: list[str], user_id: str):
    for response in (
        post_items(client, user_id, [catalogue[0]]),
        client.get(f"/v1/users/{user_id}"),
        client.get(f"/v1/users/{user_id}/recommendations"),
        client.delete(f"/v1/users/{user_id}"),
    ):
        assert response.status_code == 422, response.request.url
        assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


def test_user_id_with_slash_not_found(client: httpx.Client):
    assert client.get("/v1/users/a/b").status_code == 404


def test_missing_users_not_found(client: httpx.Client):
    user = new_user()
    assert client.get(f"/v1/users/{user}").status_code == 404
    assert client.delete(f"/v1/users/{user}").status_code == 404


def test_large_body_rejected(client: httpx.Client):
    response = client.post(f"/v1/users/{new_user()}/interactions", content=b"x" * (2 * 1024 * 1024),
                           headers={"content-type": "application/json"})
    assert response.status_code == 413

    def chunks():
        for _ in range(40):
            yield b" " * 65536

    chunked = client.post(f"/v1/users/{new_user()}/interactions", content=chunks(),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413


def test_wrong_content_type_rejected(client: httpx.Client):
    response = client.post(f"/v1/users/{new_user()}/interactions", content=b'{"profile": "x"}',
                           headers={"content-type": "text/plain"})
    assert response.status_code == 422


# ---------------------------------------------------------------------------------------------- concurrency
def test_concurrent_requests_lose_no_writes(running: Running, client: httpx.Client, catalogue: list[str]):
    shared = new_user("shared")
    solos = [new_user("solo") for _ in range(15)]
    writes = [(shared, item) for item in catalogue[400:420]] + [(u, catalogue[500 + i]) for i, u in enumerate(solos)]
    reads = [shared if i % 3 == 0 else solos[i] for i in range(15)]

    async def send_all() -> tuple[list[httpx.Response], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=running.url, timeout=120, limits=limits) as async_client:
            write_requests = [
                async_client.post(f"/v1/users/{user}/interactions", json={"interactions": [{"item_id": item}]})
                for user, item in writes
            ]
            read_requests = [async_client.get(f"/v1/users/{user}/recommendations", params={"k": 5}) for user in reads]
            responses = await asyncio.gather(*write_requests, *read_requests)
        return responses[: len(writes)], responses[len(writes):]

    write_responses, read_responses = asyncio.run(send_all())
    assert len(write_responses) + len(read_responses) == 50
    assert {r.status_code for r in write_responses} <= {200, 201, 503}
    assert {r.status_code for r in read_responses} <= {200, 503}

    acknowledged: dict[str, list[str]] = {}
    created: dict[str, int] = {}
    for (user, item), response in zip(writes, write_responses):
        if response.status_code in (200, 201):
            acknowledged.setdefault(user, []).append(item)
            created[user] = created.get(user, 0) + response.json()["created"]
    for user in [shared, *solos]:
        response = client.get(f"/v1/users/{user}")
        stored = response.json()["interactions"] if response.status_code == 200 else []
        assert [row["sequence"] for row in stored] == list(range(len(stored))), user
        assert sorted(row["item_id"] for row in stored) == sorted(acknowledged.get(user, [])), user
        assert created.get(user, 0) == (1 if user in acknowledged else 0), user


def test_full_queue_returns_503_with_retry_after(checkpoint: Path, model: ServiceModel, tmp_path: Path,
                                                 catalogue: list[str]):
    settings = ServiceSettings(workers=1, queue_size=1, max_batch_size=1)
    app = create_app(checkpoint, f"sqlite:///{tmp_path / 'queue.db'}", settings, load_model=lambda: model)
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        wait_until_ready(server.url)
        gate = GatedModel(server.state)
        body = {"history": catalogue[:2], "k": 3}
        first = BackgroundRequest(lambda: client.post("/v1/recommendations", json=body))
        assert gate.entered.wait(30)
        second = BackgroundRequest(lambda: client.post("/v1/recommendations", json=body))
        wait_for(lambda: server.state.queue.depth == 1)

        third = client.post("/v1/recommendations", json=body)
        assert third.status_code == 503
        assert third.headers["Retry-After"] == "1"
        assert "busy" in third.json()["detail"]
        # The event loop keeps serving requests while the worker is busy.
        assert client.get("/healthz").status_code == 200
        assert metric(client, "coldprompt_queue_rejections_total") == 1

        gate.release.set()
        assert first.result().status_code == 200
        assert second.result().status_code == 200


def test_concurrent_users_adapt_in_one_batch(checkpoint: Path, model: ServiceModel, tmp_path: Path,
                                             catalogue: list[str]):
    settings = ServiceSettings(workers=1, queue_size=8, max_batch_size=8)
    app = create_app(checkpoint, f"sqlite:///{tmp_path / 'batch.db'}", settings, load_model=lambda: model)
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        wait_until_ready(server.url)
        users = [new_user() for _ in range(4)]
        for i, user in enumerate(users):
            post_items(client, user, catalogue[600 + 3 * i: 603 + 3 * i])
        gate = GatedModel(server.state)
        first = BackgroundRequest(lambda: client.get(f"/v1/users/{users[0]}/recommendations"))
        assert gate.entered.wait(30)
        others = [BackgroundRequest(lambda u=u: client.get(f"/v1/users/{u}/recommendations")) for u in users[1:]]
        wait_for(lambda: gate.submissions == 4)
        assert server.state.queue.depth == 3
        gate.release.set()
        for request in [first, *others]:
            assert request.result().json()["prompt"] == "adapted"
        assert gate.batch_sizes == [1, 3]
        assert metric(client, "coldprompt_adaptations_total") == 4
        assert metric(client, "coldprompt_model_batch_size_count") == 2


def test_same_user_requests_share_one_adaptation(checkpoint: Path, model: ServiceModel, tmp_path: Path,
                                                 catalogue: list[str]):
    settings = ServiceSettings(workers=1, queue_size=8)
    app = create_app(checkpoint, f"sqlite:///{tmp_path / 'share.db'}", settings, load_model=lambda: model)
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        wait_until_ready(server.url)
        user = new_user()
        post_items(client, user, catalogue[700:703])
        gate = GatedModel(server.state)
        blocker = BackgroundRequest(lambda: client.post("/v1/recommendations", json={"history": catalogue[:1]}))
        assert gate.entered.wait(30)
        readers = [BackgroundRequest(lambda: client.get(f"/v1/users/{user}/recommendations")) for _ in range(3)]
        wait_for(lambda: gate.submissions == 4)
        assert server.state.queue.depth == 1  # the second and third reader joined the first one's job
        gate.release.set()
        assert blocker.result().status_code == 200
        assert [r.result().json()["prompt"] for r in readers] == ["adapted"] * 3
        assert metric(client, "coldprompt_adaptations_total") == 2  # the blocker's history and the user's


class GatedModel:
    """Wraps a running app's model queue: counts submissions, and every batch blocks until ``release`` is set."""

    def __init__(self, state):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batch_sizes: list[int] = []
        self.submissions = 0
        queue = state.queue
        run_batch, submit = queue.run_batch, queue.submit

        def gated_run_batch(jobs):
            self.batch_sizes.append(len(jobs))
            self.entered.set()
            assert self.release.wait(60), "the test never released the gate"
            return run_batch(jobs)

        def counted_submit(job, key=None):
            self.submissions += 1
            return submit(job, key)

        queue.run_batch = gated_run_batch
        queue.submit = counted_submit


class BackgroundRequest:
    """Sends one request from a thread, so that the test can go on while the request waits for its response."""

    def __init__(self, send: Callable[[], httpx.Response]):
        self._response: httpx.Response | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(send,), daemon=True)
        self._thread.start()

    def _run(self, send) -> None:
        try:
            self._response = send()
        except BaseException as error:  # re-raised by result()
            self._error = error

    def result(self, timeout_s: float = 60) -> httpx.Response:
        self._thread.join(timeout_s)
        if self._error is not None:
            raise self._error
        assert self._response is not None, f"no answer within {timeout_s} s"
        return self._response


def wait_for(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------- lifecycle
def test_healthz_503_until_model_loaded(checkpoint: Path, model: ServiceModel, tmp_path: Path):
    loaded = threading.Event()

    def slow_load() -> ServiceModel:
        assert loaded.wait(60), "the test never let the model load"
        return model

    app = create_app(checkpoint, f"sqlite:///{tmp_path / 'loading.db'}", load_model=slow_load)
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "loading"
        assert health.headers["Retry-After"] == "1"
        for response in (
            client.get("/v1/users/someone/recommendations"),
            client.post("/v1/users/someone/interactions", json={"profile": "A user."}),
            client.post("/v1/recommendations", json={}),
        ):
            assert response.status_code == 503
            assert "loading" in response.json()["detail"]
        assert client.get("/v1/users/someone").status_code == 404  # the store works before the model
        assert metric(client, "coldprompt_model_loaded") == 0
        loaded.set()
        wait_until_ready(server.url)
        assert client.post("/v1/recommendations", json={}).status_code == 200


def test_load_failure_reported(checkpoint: Path, tmp_path: Path):
    errors: list[BaseException] = []

    def broken_load() -> ServiceModel:
        raise ValueError("weights are damaged")

    app = create_app(checkpoint, f"sqlite:///{tmp_path / 'failed.db'}", load_model=broken_load,
                     on_load_error=errors.append)
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        wait_for(lambda: bool(errors))
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "failed"
        assert "weights are damaged" in health.json()["detail"]
        assert "failed to load" in client.post("/v1/recommendations", json={}).json()["detail"]


def test_checkpoint_change_invalidates_prompts(checkpoint: Path, model: ServiceModel, tmp_path: Path,
                                               catalogue: list[str]):
    other = tmp_path / "other-checkpoint"
    other.mkdir()
    state = load_file(str(checkpoint / WEIGHTS))
    state["prompt_init"] = state["prompt_init"] + 0.01
    save_file(state, str(other / WEIGHTS))
    shutil.copy(checkpoint / MANIFEST, other / MANIFEST)
    db_url = f"sqlite:///{tmp_path / 'switch.db'}"
    user = new_user()

    with ThreadServer(create_app(checkpoint, db_url, load_model=lambda: model)) as server:
        wait_until_ready(server.url)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            post_items(client, user, catalogue[800:804])
            assert client.get(f"/v1/users/{user}/recommendations").json()["prompt"] == "adapted"
            assert client.get(f"/v1/users/{user}/recommendations").json()["prompt"] == "stored"
    assert stored_prompt_row(db_url, user).checkpoint_id == model.checkpoint_id

    with ThreadServer(create_app(other, db_url)) as server:
        wait_until_ready(server.url)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            first = client.get(f"/v1/users/{user}/recommendations").json()
            assert first["prompt"] == "adapted"
            assert first["checkpoint_id"] != model.checkpoint_id
            assert client.get(f"/v1/users/{user}/recommendations").json()["prompt"] == "stored"
    assert stored_prompt_row(db_url, user).checkpoint_id == first["checkpoint_id"]


def test_acknowledged_writes_survive_sigkill(checkpoint: Path, tmp_path: Path, catalogue: list[str]):
    db_url = f"sqlite:///{tmp_path / 'durable.db'}"
    process, url = start_cli_server(checkpoint, db_url, tmp_path / "first.log")
    users = [new_user("durable") for _ in range(4)]
    acknowledged: dict[str, list[str]] = {user: [] for user in users}
    writes_per_user = 300

    def write(writer: int, user: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            for n in range(writes_per_user):
                item = catalogue[writer * writes_per_user + n]
                try:
                    response = post_items(client, user, [item])
                except httpx.TransportError:
                    return  # the server was killed
                if response.status_code in (200, 201):
                    acknowledged[user].append(item)

    threads = [threading.Thread(target=write, args=(w, u), daemon=True) for w, u in enumerate(users)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: sum(len(items) for items in acknowledged.values()) >= 40, timeout_s=60)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    for thread in threads:
        thread.join(30)
    assert all(len(items) < writes_per_user for items in acknowledged.values()), "the writers finished before the kill"

    process, url = start_cli_server(checkpoint, db_url, tmp_path / "second.log")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for user in users:
                response = client.get(f"/v1/users/{user}")
                stored = [row["item_id"] for row in response.json()["interactions"]] if response.status_code == 200 else []
                expected = acknowledged[user]
                assert stored[: len(expected)] == expected, user
                # At most the one write in flight at the kill may be stored without an acknowledgement.
                assert len(stored) - len(expected) <= 1, user
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_serve_rejects_non_checkpoint(tmp_path: Path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path), "--port", str(free_port())]) == 2
    assert "not a coldprompt checkpoint" in capsys.readouterr().err


def test_serve_rejects_unsupported_database(checkpoint: Path, capsys):
    assert main(["serve", "--checkpoint", str(checkpoint), "--db", "mysql://localhost/db"]) == 2
    assert "only sqlite and postgresql" in capsys.readouterr().err
