"""Bounded load test of `coldprompt serve`: starts a server on 127.0.0.1, sends a fixed mix of requests, reports.

The request list is fixed by --requests and --seed: interaction writes and recommendation reads spread over
--users new users (ids unique to the run). At most --concurrency requests are in flight, and the run stops at
--duration seconds even when requests remain. Prints throughput, latency percentiles per operation, error
counts and the server's own counters (adaptations, prompt reuses, queue rejections, store errors).

    python bench/serve_load.py --checkpoint coldprompt-output/checkpoint --requests 400 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

HOST = "127.0.0.1"  # the benchmark only ever talks to a server it started on this machine
READY_TIMEOUT_S = 600  # the first start may encode the catalogue with the backbone
SERVER_COUNTERS = {
    "adaptations": "coldprompt_adaptations_total",
    "prompt reuses": "coldprompt_prompt_reuses_total",
    "queue rejections": "coldprompt_queue_rejections_total",
    "store errors": "coldprompt_store_errors_total",
}


@dataclass
class Operation:
    kind: str  # "write" or "read"
    user: str
    items: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    kind: str
    seconds: float
    status: int | None  # None when the request failed without an HTTP response
    error: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder to serve")
    parser.add_argument("--db", help="database URL (default: a new SQLite file in a temporary folder, removed after); "
                        "users named load-RUN-N written to a given database stay there")
    parser.add_argument("--requests", type=int, default=400, help="requests to send in all (default: 400)")
    parser.add_argument("--duration", type=float, default=120.0, help="stop sending after this many seconds (default: 120)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at most (default: 8)")
    parser.add_argument("--users", type=int, default=100, help="new users the requests are spread over (default: 100)")
    parser.add_argument("--read-fraction", type=float, default=0.5, help="share of recommendation reads (default: 0.5)")
    parser.add_argument("--items-per-write", type=int, default=3, help="interactions per write request (default: 3)")
    parser.add_argument("--k", type=int, default=10, help="items per recommendation (default: 10)")
    parser.add_argument("--workers", type=int, default=1, help="server model worker threads (default: 1)")
    parser.add_argument("--queue-size", type=int, default=64, help="server model queue size (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request list (default: 0)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    for name in ("requests", "concurrency", "users", "items_per_write", "k", "workers", "queue_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.0 <= args.read_fraction <= 1.0:
        parser.error("--read-fraction must be between 0 and 1")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    return args


def plan_operations(args: argparse.Namespace, item_ids: list[str]) -> list[Operation]:
    """Draw the fixed request list: each operation picks a user, then a read or a write of random items."""
    rng = random.Random(args.seed)
    run = uuid.uuid4().hex[:8]
    users = [f"load-{run}-{i}" for i in range(args.users)]
    operations = []
    for _ in range(args.requests):
        user = rng.choice(users)
        if rng.random() < args.read_fraction:
            operations.append(Operation("read", user))
        else:
            operations.append(Operation("write", user, rng.sample(item_ids, args.items_per_write)))
    return operations


# ---------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_server(args: argparse.Namespace, db_url: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "coldprompt", "serve", "--checkpoint", args.checkpoint, "--db", db_url,
        "--host", HOST, "--port", str(port), "--workers", str(args.workers), "--queue-size", str(args.queue_size),
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; log tail:\n{log_tail(log_path)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(process)
    raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S} s; log tail:\n{log_tail(log_path)}")


def log_tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:]


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def server_counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals = dict.fromkeys(SERVER_COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label, name in SERVER_COUNTERS.items():
                if sample.name == name:
                    totals[label] += sample.value
    return totals


# ---------------------------------------------------------------------------------------------- load
async def send_operations(url: str, operations: list[Operation], args: argparse.Namespace) -> tuple[list[Outcome], float]:
    """Send ``operations`` with at most ``args.concurrency`` in flight; return the outcomes and the wall time."""
    pending = iter(operations)
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    deadline = start + args.duration
    limits = httpx.Limits(max_connections=args.concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for operation in pending:
                if time.perf_counter() >= deadline:
                    return
                outcomes.append(await send_one(client, operation, args.k))

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return outcomes, time.perf_counter() - start


async def send_one(client: httpx.AsyncClient, operation: Operation, k: int) -> Outcome:
    start = time.perf_counter()
    try:
        if operation.kind == "write":
            body = {"interactions": [{"item_id": item} for item in operation.items]}
            response = await client.post(f"/v1/users/{operation.user}/interactions", json=body)
        else:
            response = await client.get(f"/v1/users/{operation.user}/recommendations", params={"k": k})
    except httpx.HTTPError as error:
        return Outcome(operation.kind, time.perf_counter() - start, None, type(error).__name__)
    return Outcome(operation.kind, time.perf_counter() - start, response.status_code)


# ---------------------------------------------------------------------------------------------- report
def summarise(outcomes: list[Outcome], wall_s: float, planned: int) -> dict:
    rows = {}
    for kind in ("write", "read", "all"):
        chosen = [o for o in outcomes if kind == "all" or o.kind == kind]
        latencies_ms = np.array([o.seconds * 1000 for o in chosen])
        ok = [o for o in chosen if o.status is not None and o.status < 400]
        rows[kind] = {
            "count": len(chosen),
            "ok": len(ok),
            **{f"p{q}_ms": float(np.percentile(latencies_ms, q)) if len(chosen) else None for q in (50, 95, 99)},
        }
    errors = Counter(f"status {o.status}" if o.error is None else o.error
                     for o in outcomes if o.status is None or o.status >= 400)
    return {
        "planned_requests": planned,
        "sent_requests": len(outcomes),
        "wall_seconds": wall_s,
        "requests_per_second": len(outcomes) / wall_s if wall_s > 0 else None,
        "operations": rows,
        "errors": dict(errors),
    }


def print_report(summary: dict, args: argparse.Namespace, counters: dict[str, float]) -> None:
    print(
        f"coldprompt serve load: {summary['sent_requests']} of {summary['planned_requests']} requests in "
        f"{summary['wall_seconds']:.1f} s ({summary['requests_per_second']:.1f} requests/s); concurrency "
        f"{args.concurrency}, {args.users} new users, {args.read_fraction:.0%} reads, "
        f"{args.items_per_write} interactions per write, k={args.k}, {args.workers} model worker(s)"
    )
    print(f"{'operation':<10}{'count':>7}{'ok':>7}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for kind, row in summary["operations"].items():
        cells = "".join(f"{row[key]:>10.1f}" if row[key] is not None else f"{'-':>10}" for key in ("p50_ms", "p95_ms", "p99_ms"))
        print(f"{kind:<10}{row['count']:>7}{row['ok']:>7}{cells}")
    errors = ", ".join(f"{name}: {count}" for name, count in sorted(summary["errors"].items())) or "none"
    print(f"errors: {errors}")
    print("server: " + ", ".join(f"{int(value)} {label}" for label, value in counters.items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = json.loads((Path(args.checkpoint) / "checkpoint.json").read_text(encoding="utf-8"))
    item_ids = manifest["dataset"]["item_ids"]
    if len(item_ids) < args.items_per_write:
        raise SystemExit(f"the catalogue has {len(item_ids)} items, fewer than --items-per-write {args.items_per_write}")
    operations = plan_operations(args, item_ids)

    with tempfile.TemporaryDirectory(prefix="coldprompt-load-") as folder:
        db_url = args.db or f"sqlite:///{Path(folder) / 'load.db'}"
        log_path = Path(folder) / "server.log"
        process, url = start_server(args, db_url, log_path)
        try:
            outcomes, wall_s = asyncio.run(send_operations(url, operations, args))
            counters = server_counters(url)
        finally:
            stop_server(process)
        if process.returncode not in (0, -signal.SIGTERM):
            print(f"the server exited with {process.returncode}; log tail:\n{log_tail(log_path)}", file=sys.stderr)

    summary = summarise(outcomes, wall_s, len(operations))
    summary["server"] = counters
    print_report(summary, args, counters)
    if args.json:
        settings = {**vars(args), "db": make_url(db_url).render_as_string(hide_password=True)}
        Path(args.json).write_text(json.dumps({"settings": settings, **summary}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
