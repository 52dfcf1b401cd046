"""Invocation log ingestion on PostgreSQL with several writers, as serving replicas write it.

Finds or starts a PostgreSQL server (``tests/postgres.py``: the one on 127.0.0.1:5432, else a throwaway cluster),
creates a new database, then runs ``--replicas`` processes, each with the serving process's ``InvocationLog``
(group commit, durable) and ``--submitters`` threads that each submit one call at a time and wait for its
acknowledgement, as a request handler does, for ``--seconds``. Prints the acknowledged calls per second of all
replicas together, the acknowledgement latency, and how many acknowledged ids are missing from the database
afterwards (0 is the target). ``--sqlite`` runs the same with one writer on the default SQLite file, for
comparison.

    .venv/bin/python bench/log_ingest.py [--replicas 2] [--submitters 32] [--seconds 20] [--sqlite]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _replica(
    home: str, url: str, submitters: int, seconds: float, start_at: float, queue: multiprocessing.Queue
) -> None:
    import numpy as np

    os.environ["LOOPML_HOME"] = home
    if url:
        os.environ["LOOPML_DATABASE_URL"] = url
    from loopml.config import get_settings
    from loopml.invocation_log import InvocationLog, InvocationRecord

    log = InvocationLog(get_settings())
    embedding = np.random.default_rng(0).standard_normal(384).astype(np.float16).tobytes()
    ids: list[list[str]] = [[] for _ in range(submitters)]
    waits: list[list[float]] = [[] for _ in range(submitters)]
    while time.time() < start_at:
        time.sleep(0.01)
    stop_at = time.perf_counter() + seconds

    def submit(n: int) -> None:
        i = 0
        while time.perf_counter() < stop_at:
            record = InvocationRecord(
                function="tone",
                input_text=f"replica {os.getpid()} submitter {n} call {i}: a fine film, all things considered",
                embedding=embedding,
                scores={"tone:v1": [0.8, 0.2], "tone:v2": [0.7, 0.3]},
                labels={"tone:v1": ["positive", "negative"], "tone:v2": ["positive", "negative"]},
                answered_by="tone:v1",
                label="positive",
                confidence=0.8,
                latency_ms=4.0,
                key_id="bench",
                sticky_key=f"user-{i % 50}",
            )
            started = time.perf_counter()
            ids[n].append(log.submit(record).result(60))
            waits[n].append(time.perf_counter() - started)
            i += 1

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(submitters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    queue.put(([x for chunk in ids for x in chunk], [x for chunk in waits for x in chunk], log.stats.batches))


def run(url: str, replicas: int, submitters: int, seconds: float) -> tuple[float, list[float], int, int, int]:
    with tempfile.TemporaryDirectory() as home:
        queue: multiprocessing.Queue = multiprocessing.Queue()
        start_at = time.time() + 3.0  # every replica has imported and connected
        procs = [
            multiprocessing.Process(target=_replica, args=(home, url, submitters, seconds, start_at, queue))
            for _ in range(replicas)
        ]
        for proc in procs:
            proc.start()
        results = [queue.get() for _ in procs]
        for proc in procs:
            proc.join()
        ids = [x for r in results for x in r[0]]
        waits = sorted(x for r in results for x in r[1])
        batches = sum(r[2] for r in results)
        os.environ["LOOPML_HOME"] = home
        if url:
            os.environ["LOOPML_DATABASE_URL"] = url
        from loopml.config import get_settings
        from loopml.invocation_log import InvocationLog

        log = InvocationLog(get_settings())
        stored = log.existing_ids(ids)
        log.close()
        return len(ids) / seconds, waits, len(ids) - len(stored), len(ids), batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--submitters", type=int, default=32, help="threads per replica")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sqlite", action="store_true", help="also one writer on SQLite")
    args = parser.parse_args()
    from tests.postgres import drop_databases, fresh_database_url, postgres_server

    rows = []
    with postgres_server() as server:
        url = fresh_database_url(server)
        from loopml.stores import ensure_database

        ensure_database(url)
        try:
            rate, waits, lost, total, batches = run(url, args.replicas, args.submitters, args.seconds)
            rows.append(("PostgreSQL", args.replicas, rate, waits, lost, total, batches))
        finally:
            from loopml.db import get_engine

            get_engine(url).dispose()
            drop_databases(server, url.rsplit("/", 1)[1])
    if args.sqlite:
        os.environ.pop("LOOPML_DATABASE_URL", None)
        rate, waits, lost, total, batches = run("", 1, args.submitters, args.seconds)
        rows.append(("SQLite", 1, rate, waits, lost, total, batches))

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")

    print(
        f"\ninvocation log ingestion: {args.submitters} submitters per writer, each waiting for its acknowledgement, "
        f"{args.seconds:.0f} s\n"
    )
    print("| database | writers | calls/s | ack p50 / p99 ms | rows per commit | acknowledged | lost |")
    print("|---|---|---|---|---|---|---|")
    for name, writers, rate, waits, lost, total, batches in rows:
        print(
            f"| {name} | {writers} | {rate:,.0f} | {pct(waits, 0.5):.1f} / {pct(waits, 0.99):.1f} | "
            f"{total / max(1, batches):.1f} | {total:,} | {lost} |"
        )


if __name__ == "__main__":
    main()
