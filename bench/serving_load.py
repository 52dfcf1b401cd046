"""Single-text load on a real serving process: throughput, latency and batch size at 20 and 50 clients.

Starts ``bentoml serve serving.service:LoopML`` on a free port (a temporary LOOPML_HOME, the tiny text model of
the tests: the encoder's cost is the same for any head), measures the encoder alone in this process at its best
batch size, then for each client count runs the clients for ``--seconds`` (each sends one text per request over
a keep-alive connection, back to back). The clients run in ``--processes`` processes so that the load generator's
own interpreter lock does not cap it; they share the server's 2 cores, as on a small production machine.

Prints, per client count: requests/s, p50/p95/p99 latency, errors, and the mean batch the encoder ran (from
``/v1/health``'s counters before and after), beside the encoder-alone figure.

With ``--field``, the same load also goes to the field's way of serving the same encoder with BentoML
(``bench/field/bentoml_batching.py``: one ``@bentoml.api(batchable=True)`` route, BentoML's adaptive batching,
no authentication, no invocation log), for a side-by-side comparison.

    .venv/bin/python bench/serving_load.py [--clients 20,50] [--seconds 60] [--processes 4] [--field]
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


def _client_process(
    port: int, key: str, path: str, field: bool, threads: int, seconds: float, queue: multiprocessing.Queue
) -> None:
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
    queue.put((latencies, errors[0]))


@contextlib.contextmanager
def field_server() -> Iterator[str]:
    """``bench/field/bentoml_batching.py`` served by ``bentoml serve`` on a free port; its URL."""
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
            yield url
        finally:
            stop_server(proc)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def encoder_alone(batch_sizes: tuple[int, ...] = (1, 16, 64)) -> tuple[int, float]:
    """The encoder's best texts/s in this process and the batch size it was reached at."""
    from loopml.encoders import get_encoder

    encoder = get_encoder()
    best = (1, 0.0)
    for size in batch_sizes:
        texts = [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(max(256, size * 8))]
        encoder.encode(texts[:size])
        started = time.perf_counter()
        done = 0
        while time.perf_counter() - started < 5:
            encoder.encode(texts[: size * 8] if size > 1 else texts[:1], batch_size=size)
            done += size * 8 if size > 1 else 1
        rate = done / (time.perf_counter() - started)
        if rate > best[1]:
            best = (size, rate)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="20,50")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument(
        "--field", action="store_true", help="also a plain BentoML batchable API on the same encoder, same load"
    )
    args = parser.parse_args()
    best_batch, best_rate = encoder_alone()
    print(f"encoder alone, in process: {best_rate:.0f} texts/s at batch {best_batch}\n", flush=True)
    rows = []
    targets = [("LoopML", None)] + ([("BentoML batchable API", "field")] if args.field else [])
    for label, kind in targets:
        with contextlib.ExitStack() as stack:
            if kind is None:
                from tests.real_server import running_server

                home = stack.enter_context(tempfile.TemporaryDirectory())
                server = stack.enter_context(running_server(Path(home), "review-sentiment"))
                url, key, path = server.url, server.key, f"/v1/functions/{server.function}/invoke"
            else:
                url, key, path = stack.enter_context(field_server()), "", "/classify"
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
                        target=_client_process, args=(port, key, path, kind is not None, n, args.seconds, queue)
                    )
                    for n in share
                    if n
                ]
                started = time.perf_counter()
                for proc in procs:
                    proc.start()
                results = [queue.get() for _ in procs]
                for proc in procs:
                    proc.join()
                elapsed = time.perf_counter() - started
                latencies = [x for lat, _ in results for x in lat]
                errors = sum(e for _, e in results)
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
                    f"| {batch} | {rate / best_rate:.2f} |"
                )
                print(row, flush=True)
                rows.append(row)
    print(
        f"\nsingle-text invoke over HTTP, {args.seconds:.0f} s per row, clients in {args.processes} processes; "
        f"encoder alone {best_rate:.0f} texts/s (batch {best_batch})\n"
    )
    print("| server | clients | requests/s | p50 / p95 / p99 ms | errors | mean encoder batch | of the encoder alone |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
