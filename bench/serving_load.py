"""Single-text load on a real serving process: throughput, latency, batch size and CPU at 20 and 50 clients.

Starts ``bentoml serve serving.service:LoopML`` on a free port in a temporary LOOPML_HOME, with the tiny text
model of the tests (the encoder's cost is the same for any head) or, with ``--real N``, a real AutoML model
trained on N RottenTomatoes snippets with a second version as a 10 % canary (two heads and TF-IDF score every
text, as during a rollout). Measures the encoder alone in this process at its best batch size, then for each
client count runs the clients for ``--seconds``: each sends one text per request over a keep-alive connection,
back to back. By default the clients are raw HTTP/1.1 connections on one event loop (a few tens of microseconds
of CPU per request); ``--client threads`` uses ``http.client`` threads, ``--processes`` spreads the clients over
several processes. Clients and server share the same 2 cores, as on a small production machine, so the CPU
each side used is printed too.

Prints, per client count: requests/s, p50/p95/p99 latency, errors, the mean batch the encoder ran (from
``/v1/health``'s counters before and after), the CPU the clients and the server's processes used (% of one
core), the server's CPU per request, and the throughput as a share of the encoder alone.

With ``--field``, the same load also goes to the field's way of serving the same encoder with BentoML
(``bench/field/bentoml_batching.py``: one ``@bentoml.api(batchable=True)`` route, BentoML's adaptive batching,
no authentication, no invocation log), for a side-by-side comparison.

    .venv/bin/python bench/serving_load.py [--clients 20,50] [--seconds 60] [--real 1200] [--field]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.idle_cpu import tree_cpu_seconds  # noqa: E402 - after the path

TEXTS = [
    "a warm and funny film with a moving story",
    "tedious, predictable and far too long",
    "the best performance of the year",
    "I walked out after half an hour",
    "a clever script, but the pacing drags",
    "an ugly mess from start to finish",
    "charming, sweet and beautifully shot",
    "not bad at all, though it could be shorter",
]


def _request_bytes(port: int, key: str, path: str, field: bool, text: str) -> bytes:
    body = json.dumps({"texts": [text]} if field else {"text": text}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _asyncio_clients(
    port: int, key: str, path: str, field: bool, clients: int, seconds: float
) -> tuple[list[float], int]:
    """``clients`` keep-alive connections on one event loop, each sending one request at a time: a few tens
    of microseconds of client CPU per request, so that the server keeps nearly all of the machine."""
    import asyncio

    latencies: list[float] = []
    errors = [0]
    stop_at = time.perf_counter() + seconds

    async def client(index: int) -> None:
        reader = writer = None
        i = index
        while time.perf_counter() < stop_at:
            request = _request_bytes(port, key, path, field, TEXTS[i % len(TEXTS)] + f" #{i}")
            i += clients
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)  # type: ignore[union-attr]
                length = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    raise ValueError("no Content-Length")
                await reader.readexactly(length)  # type: ignore[union-attr]
                ok = head.startswith(b"HTTP/1.1 200")
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
                ok = False
                if writer is not None:
                    writer.close()
                reader = writer = None
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors[0] += 1
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(n) for n in range(clients)))
    return latencies, errors[0]


def _threaded_clients(
    port: int, key: str, path: str, field: bool, threads: int, seconds: float
) -> tuple[list[float], int]:
    """``threads`` threads, each with an ``http.client`` keep-alive connection (the earlier load generator:
    about ten times the client CPU per request of the event-loop one)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        mine: list[float] = []
        i = index
        while time.perf_counter() < stop_at:
            text = TEXTS[i % len(TEXTS)] + f" #{i}"
            body = json.dumps({"texts": [text]} if field else {"text": text})
            started = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            if ok:
                mine.append(time.perf_counter() - started)
            else:
                with lock:
                    errors[0] += 1
            i += threads
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return latencies, errors[0]


def _client_process(
    port: int,
    key: str,
    path: str,
    field: bool,
    clients: int,
    seconds: float,
    mode: str,
    queue: multiprocessing.Queue,
) -> None:
    if mode == "asyncio":
        import asyncio

        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        latencies, errors = asyncio.run(_asyncio_clients(port, key, path, field, clients, seconds))
    else:
        latencies, errors = _threaded_clients(port, key, path, field, clients, seconds)
    times = os.times()
    queue.put((latencies, errors, times.user + times.system))


@contextlib.contextmanager
def field_server() -> Iterator[tuple[str, int]]:
    """``bench/field/bentoml_batching.py`` served by ``bentoml serve`` on a free port; its URL and pid."""
    from tests.conftest import free_port
    from tests.real_server import stop_server

    port = free_port()
    bentoml = Path(sys.executable).with_name("bentoml")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "BENTOML_HOME": home, "BENTOML_DO_NOT_TRACK": "true", "LOOPML_HOME": home}
        proc = subprocess.Popen(
            [str(bentoml), "serve", "bench.field.bentoml_batching:FieldEncoder", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, "the field service exited"
                try:
                    if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, "the field service did not become ready"
                time.sleep(0.3)
            yield url, proc.pid
        finally:
            stop_server(proc)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def encoder_alone(batch_sizes: tuple[int, ...] = (1, 4, 16, 64)) -> tuple[str, float, float]:
    """The encoder's best texts/s in this process, how it was reached (batch size; one caller on every core, or
    one caller per core on one core each, as the serving lanes run under load), and its CPU seconds per text."""
    from loopml.config import usable_cores
    from loopml.encoders import encoder_threads, get_encoder

    encoder = get_encoder()
    cores = usable_cores()
    best = ("", 0.0, float("nan"))
    for size in batch_sizes:
        for callers in sorted({1, cores}):
            texts = [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(max(256, size * 8))]
            done = [0] * callers
            stop_at = time.perf_counter() + 5

            def caller(index: int, callers: int, size: int, texts: list[str], stop_at: float, done: list[int]) -> None:
                with encoder_threads(cores if callers == 1 else 1):
                    encoder.encode(texts[:size], batch_size=size)
                    while time.perf_counter() < stop_at:
                        start = (index * 8 * size) % (len(texts) - size + 1)
                        encoder.encode(texts[start : start + size], batch_size=size)
                        done[index] += size

            started, cpu = time.perf_counter(), time.process_time()
            threads = [
                threading.Thread(target=caller, args=(n, callers, size, texts, stop_at, done)) for n in range(callers)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rate = sum(done) / (time.perf_counter() - started)
            spent = (time.process_time() - cpu) / sum(done)
            print(
                f"  encoder alone: batch {size:>2}, {callers} caller(s) on {cores if callers == 1 else 1} core(s) "
                f"each: {rate:.0f} texts/s, {1000 * spent:.2f} CPU ms per text",
                flush=True,
            )
            if rate > best[1]:
                how = f"batch {size}, " + ("one caller" if callers == 1 else f"{callers} callers on a core each")
                best = (how, rate, spent)
    return best


@contextlib.contextmanager
def loopml_server(real: int) -> Iterator[tuple[str, str, str, int]]:
    """LoopML's serving process: the tiny model of the tests (``real`` = 0), or a real AutoML model trained on
    ``real`` RottenTomatoes snippets, deployed as v1 primary with v2 as a 10 % canary (both score every text,
    as during a rollout). Its URL, a key, the invoke path and the arbiter's pid."""
    from tests.real_server import running_server, serve_command, stop_server, wait_ready

    with tempfile.TemporaryDirectory() as home:
        if not real:
            with running_server(Path(home), "review-sentiment") as server:
                yield server.url, server.key, f"/v1/functions/{server.function}/invoke", server.proc.pid
            return
        from tests.conftest import free_port

        os.environ.update(LOOPML_HOME=home, BENTOML_HOME=f"{home}/bentoml", BENTOML_DO_NOT_TRACK="true")
        from bench.serving import FUNCTION, train_and_deploy
        from loopml.apikeys import RIGHTS, create_key
        from loopml.config import get_settings

        train_and_deploy(real)
        _, key = create_key(get_settings(), "bench", rights=RIGHTS)
        port = free_port()
        log_path = Path(home) / "serving.log"
        env = {**os.environ, "LOOPML_SERVING_PORT": str(port), "LOOPML_SERVING_GPU": "0"}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                serve_command(port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, url, log_path)
            yield url, key, f"/v1/functions/{FUNCTION}/invoke", proc.pid
        finally:
            stop_server(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="20,50")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument(
        "--client",
        choices=("asyncio", "threads"),
        default="asyncio",
        help="load generator: raw HTTP/1.1 on one event loop per process (default), or http.client threads",
    )
    parser.add_argument(
        "--real",
        type=int,
        default=0,
        metavar="N",
        help="serve a real AutoML model trained on N RottenTomatoes snippets, with a 10%% canary beside it",
    )
    parser.add_argument(
        "--field", action="store_true", help="also a plain BentoML batchable API on the same encoder, same load"
    )
    args = parser.parse_args()
    best_batch, best_rate, best_cpu = encoder_alone()
    print(
        f"encoder alone, in process: {best_rate:.0f} texts/s ({best_batch}), {1000 * best_cpu:.2f} CPU ms per text\n",
        flush=True,
    )
    rows = []
    targets = [("LoopML", None)] + ([("BentoML batchable API", "field")] if args.field else [])
    for label, kind in targets:
        with contextlib.ExitStack() as stack:
            if kind is None:
                url, key, path, pid = stack.enter_context(loopml_server(args.real))
            else:
                (url, pid), key, path = stack.enter_context(field_server()), "", "/classify"
            port = int(url.rsplit(":", 1)[1])
            session = requests.Session()
            for clients in [int(c) for c in args.clients.split(",")]:
                before = session.get(f"{url}/v1/health", timeout=30).json() if kind is None else None
                queue: multiprocessing.Queue = multiprocessing.Queue()
                share = [
                    clients // args.processes + (1 if i < clients % args.processes else 0)
                    for i in range(args.processes)
                ]
                procs = [
                    multiprocessing.Process(
                        target=_client_process,
                        args=(port, key, path, kind is not None, n, args.seconds, args.client, queue),
                    )
                    for n in share
                    if n
                ]
                server_cpu = tree_cpu_seconds(pid)
                started = time.perf_counter()
                for proc in procs:
                    proc.start()
                results = [queue.get() for _ in procs]
                for proc in procs:
                    proc.join()
                elapsed = time.perf_counter() - started
                server_cpu = tree_cpu_seconds(pid) - server_cpu
                latencies = [x for lat, _, _ in results for x in lat]
                errors = sum(e for _, e, _ in results)
                client_cpu = sum(c for _, _, c in results)
                batch = "-"
                if before is not None:
                    after = session.get(f"{url}/v1/health", timeout=30).json()
                    batches = after["scoring_batches"] - before["scoring_batches"]
                    items = after["mean_batch_size"] * after["scoring_batches"] - (
                        before["mean_batch_size"] * before["scoring_batches"]
                    )
                    batch = f"{items / max(1, batches):.1f}"
                rate = len(latencies) / elapsed
                row = (
                    f"| {label} | {clients} | {rate:.1f} | {1000 * percentile(latencies, 0.5):.0f} / "
                    f"{1000 * percentile(latencies, 0.95):.0f} / {1000 * percentile(latencies, 0.99):.0f} | {errors} "
                    f"| {batch} | {100 * client_cpu / elapsed:.0f} % | {100 * server_cpu / elapsed:.0f} % "
                    f"| {1000 * server_cpu / max(1, len(latencies)):.2f} | {rate / best_rate:.2f} |"
                )
                print(row, flush=True)
                rows.append(row)
    print(
        f"\nsingle-text invoke over HTTP, {args.seconds:.0f} s per row, {args.client} clients in {args.processes} "
        f"process(es); encoder alone {best_rate:.0f} texts/s ({best_batch}, {1000 * best_cpu:.2f} CPU ms "
        "per text); CPU as % of one core\n"
    )
    print(
        "| server | clients | requests/s | p50 / p95 / p99 ms | errors | mean encoder batch | client CPU "
        "| server CPU | server CPU ms per request | of the encoder alone |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
