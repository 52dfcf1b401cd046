"""Scale-out: one serving replica's throughput and what it costs the shared database, projected to N replicas.

Two cores cannot show several replicas scaling, so this measures the parts a projection needs, on a real
PostgreSQL server (``tests/postgres.py``: the one on 127.0.0.1:5432, else a throwaway cluster):

1. **A replica idle**: one serving process on PostgreSQL (``python -m serving.serve``, the tiny model of the
   tests, v1 primary and v2 a 10 % canary), no traffic, ``--idle-seconds``: the database CPU it costs by polling
   the deployment table (every 0.3 s) and its other background queries.
2. **A replica under load**: the same replica with ``--clients`` keep-alive clients (``bench/serving_load.py``'s
   event-loop clients) for ``--seconds``: requests/s, the replica's CPU per request, and the database CPU per
   request (each answered call is one row of the invocation log, written in group commits).

The database CPU is the CPU time of the server's processes (``postgres``) over the window, so run it on an
otherwise idle machine. Then the projection: N replicas, each on a machine like this one, serve N times the rate
measured here (conservative: here the clients and the database shared its cores) while the database keeps up;
the database needs N x (poll cost + rate x CPU per request) of its cores. It stops scaling where that reaches the
database's cores, or earlier at the ingestion ceiling ``bench/log_ingest.py`` measures (``--ingest-ceiling``,
calls/s on this machine's 2 cores).

    .venv/bin/python bench/scale_out.py [--clients 20] [--seconds 30] [--idle-seconds 20] [--db-cores 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.idle_cpu import tree_cpu_seconds  # noqa: E402 - after the path
from bench.serving_load import _client_process  # noqa: E402


def database_cpu_seconds() -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL server process (by pid)."""
    seconds = {}
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            seconds[proc.pid] = times.user + times.system
    return seconds


def database_cpu_since(before: dict[int, float]) -> float:
    """CPU seconds the server's processes used since ``before`` (processes that started meanwhile count whole)."""
    now = database_cpu_seconds()
    return sum(value - before.get(pid, 0.0) for pid, value in now.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--db-cores", type=int, default=2, help="cores of the database server in the projection")
    parser.add_argument(
        "--ingest-ceiling", type=float, default=12183.0, help="calls/s bench/log_ingest.py measured on PostgreSQL"
    )
    args = parser.parse_args()

    from tests.postgres import drop_databases, fresh_database_url, postgres_server

    with postgres_server() as server, tempfile.TemporaryDirectory() as home:
        url = fresh_database_url(server)
        try:
            measured = measure(Path(home), url, args)
        finally:
            drop_databases(server, url.rsplit("/", 1)[1])
    report(measured, args)


def measure(home: Path, url: str, args: argparse.Namespace) -> dict[str, float]:
    from loopml.apikeys import RIGHTS, create_key
    from loopml.config import get_settings
    from loopml.deployments import DeploymentStore
    from tests.conftest import free_port
    from tests.real_server import serve_command, spawn_server, stop_server, wait_ready
    from tests.serving_support import save_versions

    os.environ.update(
        LOOPML_HOME=str(home), LOOPML_DATABASE_URL=url, BENTOML_HOME=str(home / "bentoml"), BENTOML_DO_NOT_TRACK="true"
    )
    settings = get_settings()
    settings.ensure_dirs()
    settings.stores.ensure()
    tags = save_versions(settings, "tone", 2)
    store = DeploymentStore(settings)
    store.set_primary("tone", tags[0], "bench")
    store.start_canary("tone", tags[1], 0.10, "bench")
    _, key = create_key(settings, "bench", rights=RIGHTS)
    port = free_port()
    env = {**os.environ, "LOOPML_SERVING_PORT": str(port), "LOOPML_SERVING_GPU": "0"}
    log_path = home / "serving.log"
    proc = spawn_server(serve_command(port), env, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, log_path)
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(50):  # warm: the model loaded, the connections open
            requests.post(f"{base}/v1/functions/tone/invoke", json={"text": "warm up"}, headers=headers, timeout=60)
        time.sleep(2.0)
        print(f"replica idle for {args.idle_seconds:.0f} s ...", flush=True)
        db_before, replica_before, started = database_cpu_seconds(), tree_cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(args.idle_seconds)
        idle_elapsed = time.perf_counter() - started
        idle_db = database_cpu_since(db_before) / idle_elapsed
        idle_replica = (tree_cpu_seconds(proc.pid) - replica_before) / idle_elapsed
        print(f"replica under load: {args.clients} clients for {args.seconds:.0f} s ...", flush=True)
        queue: multiprocessing.Queue = multiprocessing.Queue()
        client = multiprocessing.Process(
            target=_client_process,
            args=(port, key, "/v1/functions/tone/invoke", False, args.clients, args.seconds, "asyncio", queue),
        )
        db_before, replica_before, started = database_cpu_seconds(), tree_cpu_seconds(proc.pid), time.perf_counter()
        client.start()
        latencies, errors, client_cpu = queue.get()
        client.join()
        elapsed = time.perf_counter() - started
        load_db = database_cpu_since(db_before)
        load_replica = tree_cpu_seconds(proc.pid) - replica_before
    finally:
        stop_server(proc)
    answered = len(latencies)
    return {
        "idle_db_cpu_per_s": idle_db,
        "idle_replica_cpu_per_s": idle_replica,
        "rate": answered / elapsed,
        "errors": float(errors),
        "replica_cpu_per_request": load_replica / max(1, answered),
        "db_cpu_per_request": max(0.0, load_db - idle_db * elapsed) / max(1, answered),
        "client_cpu_share": client_cpu / elapsed,
        "p50_ms": 1000 * sorted(latencies)[len(latencies) // 2] if latencies else float("nan"),
    }


def report(m: dict[str, float], args: argparse.Namespace) -> None:
    print("\nOne replica on PostgreSQL (tiny model, v2 a 10 % canary), clients and database on the same 2 cores\n")
    print("| measure | value |")
    print("|---|---|")
    load = f"{m['rate']:.1f} (p50 {m['p50_ms']:.0f} ms, {m['errors']:.0f} errors)"
    print(f"| requests/s ({args.clients} clients) | {load} |")
    print(f"| replica CPU per request | {1000 * m['replica_cpu_per_request']:.2f} ms |")
    print(f"| database CPU per request (one logged call) | {1000 * m['db_cpu_per_request']:.3f} ms |")
    print(f"| database CPU of an idle replica (version polling) | {100 * m['idle_db_cpu_per_s']:.2f} % of a core |")
    print(f"| replica CPU idle | {100 * m['idle_replica_cpu_per_s']:.1f} % of a core |")
    per_replica = m["rate"]  # as measured here, with the clients and the database on its cores: conservative
    db_per_replica = m["idle_db_cpu_per_s"] + per_replica * m["db_cpu_per_request"]
    print(
        f"\nProjection: each replica on a machine like this one serves {per_replica:,.0f} requests/s (as measured "
        f"here) and costs the database {db_per_replica:.3f} cores; "
        f"database on {args.db_cores} cores, ingestion ceiling {args.ingest_ceiling:,.0f} calls/s\n"
    )
    print("| replicas | requests/s offered | database cores needed | requests/s served | limited by |")
    print("|---|---|---|---|---|")
    for n in (1, 2, 4, 8, 16, 32, 64):
        offered = n * per_replica
        cores = n * db_per_replica
        served = min(offered, args.ingest_ceiling, offered * args.db_cores / cores if cores else offered)
        limit = "replicas"
        if served < offered:
            limit = "database CPU" if cores > args.db_cores and served < args.ingest_ceiling else "ingestion ceiling"
        print(f"| {n} | {offered:,.0f} | {cores:.2f} | {served:,.0f} | {limit} |")
    by_cpu, by_ingest = args.db_cores / db_per_replica, args.ingest_ceiling / per_replica
    print(
        f"\nIt stops scaling at about {min(by_cpu, by_ingest):.0f} replicas: {by_cpu:.0f} fill the database's "
        f"{args.db_cores} cores, {by_ingest:.0f} reach the ingestion ceiling (more database cores move both)."
    )


if __name__ == "__main__":
    main()
