"""The HTTP API under load: 200 parallel clients on loopback, each sending GET
/api/circuit-breakers on a new connection (as the SDK's urllib does) as soon as its last
answer came, for 30 s per server. Latency is from connecting to the last byte of the
answer, so connections kept waiting in a full listen backlog show. A request that fails
(no answer within 30 s, a refused or reset connection) counts as an error of its kind, not
in the latencies; requests under way when the time is up finish and count.

Servers, each its own process on the same history (a 1,000-worker synthetic fleet):
- `faultstream-api`: `faultstream api --db` (Starlette on uvicorn, backlog 2048);
- `seed-stdlib`: the seed's server, the standard library's ThreadingHTTPServer with its
  default listen backlog of 5, answering the same document from the same `History`;
- `stdlib-1024`: the same with a backlog of 1024 (the interim fix before the ASGI stack).

The clients are one asyncio process with a minimal HTTP/1.1 client (no library overhead),
on the same 2 cores as the server: the figures compare servers, not absolute capacity.

    .venv/bin/python bench/bench_api.py [--duration 30] [--clients 200] [--servers ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent
FAULTSTREAM = str(Path(sys.executable).parent / "faultstream")
PATH = "/api/circuit-breakers"
SERVERS = ("faultstream-api", "seed-stdlib", "stdlib-1024")


# --- the history and the servers ------------------------------------------------------------


def build_history(path: Path, workers: int, events: int) -> None:
    sys.path.insert(0, str(ROOT))
    from histories import fleet_history

    from faultstream.projections.embedded import EmbeddedPipeline
    from faultstream.projections.tables import HistoryWriter

    pipeline = EmbeddedPipeline(writer=HistoryWriter(path))
    pipeline.ingest_many(fleet_history(workers=workers, events=events))
    pipeline.close()


def serve_stdlib(db: str, port: int, backlog: int) -> None:
    """The seed's kind of server: http.server, one thread a request, JSON of the History."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from faultstream.projections.queries import History

    history = History.from_db(db)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(history.circuit_breakers()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = backlog
        daemon_threads = True

    Server(("127.0.0.1", port), Handler).serve_forever()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(server: str, db: Path, port: int) -> subprocess.Popen:
    if server == "faultstream-api":
        command = [FAULTSTREAM, "api", "--db", str(db), "--port", str(port)]
    else:
        backlog = "5" if server == "seed-stdlib" else "1024"
        command = [sys.executable, __file__, "--serve-stdlib", str(db), "--port", str(port),
                   "--backlog", backlog]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            asyncio.run(request(port))
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{server} did not start") from None
            time.sleep(0.1)


# --- the clients ----------------------------------------------------------------------------


async def request(port: int) -> int:
    """One GET on a new connection; returns the status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {PATH} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        answer = await reader.read()  # to the end: the server closes after its answer
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    if status != 200 or not answer.endswith(b"}"):
        raise ValueError(f"HTTP {status}, {len(answer)} bytes")
    return status


async def load(port: int, clients: int, duration_s: float) -> tuple[list[float], Counter, float]:
    latencies: list[float] = []
    errors: Counter[str] = Counter()  # by kind: a refused or reset connection, a timeout
    stop_at = time.monotonic() + duration_s

    async def client() -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                await asyncio.wait_for(request(port), timeout=30)
            except (OSError, ValueError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors, time.monotonic() - began


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per server")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--workers", type=int, default=1_000, help="fleet size of the history")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--serve-stdlib", metavar="DB", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backlog", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stdlib:
        serve_stdlib(args.serve_stdlib, args.port, args.backlog)
        return

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "history.duckdb"
        build_history(db, args.workers, args.events)
        print(f"history: {args.workers} workers, {args.events} events; "
              f"{args.clients} clients x {args.duration:g} s per server, new connection per "
              f"request, GET {PATH}\n")  # fmt: skip
        print("| server | requests/s | p50 (ms) | p99 (ms) | max (ms) | errors |")
        print("| --- | --- | --- | --- | --- | --- |")
        for server in args.servers:
            port = free_port()
            proc = start(server, db, port)
            try:
                latencies, errors, elapsed = asyncio.run(load(port, args.clients, args.duration))
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            ms = [1000 * x for x in latencies]
            row = [f"{len(ms) / elapsed:.0f}", f"{statistics.median(ms):.1f}",
                   f"{percentile(ms, 0.99):.1f}", f"{max(ms):.1f}",
                   ", ".join(f"{n} {kind}" for kind, n in errors.items()) or "0"]  # fmt: skip
            print(f"| {server} | {' | '.join(row)} |", flush=True)


if __name__ == "__main__":
    main()
