"""What an abusive request costs the other clients: a real serving process, a probe client beside the request.

Starts ``bentoml serve serving.service:LoopML`` on a free port (a temporary LOOPML_HOME, the tiny text model of
the tests), measures a probe client's single-text latency while idle, then sends each abusive body below while the
probe loops (``GET /v1/health`` then one single-text invoke, back to back) and prints one table row per body: the
answer's status, seconds and size, and the probe's health and single-text latencies meanwhile.

    .venv/bin/python bench/abuse.py [--idle-calls 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODIES = {
    "1,000,000 blank texts (4 MB)": lambda: {"texts": [""] * 1_000_000},
    "240 invalid texts": lambda: {"texts": ["", " ", "\x00"] * 80},
    "256 texts of 65 KB (16 MB)": lambda: {"texts": ["word " * 13_000] * 256},
    "400,000 nested objects (7 MB)": lambda: {"texts": [{"a": [1, 2, 3]}] * 400_000},
    "JSON nested 5,000 deep": None,  # raw bytes below
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-calls", type=int, default=200)
    args = parser.parse_args()
    from tests.real_server import beside_a_probe, running_server

    with tempfile.TemporaryDirectory() as home, running_server(Path(home), "review-sentiment") as server:
        session = requests.Session()
        for _ in range(20):
            server.invoke(session, {"text": "warm-up"})
        idle = []
        for _ in range(args.idle_calls):
            started = time.perf_counter()
            server.invoke(session, {"text": "a fine film"})
            idle.append(time.perf_counter() - started)
        idle_p99 = percentile(idle, 0.99) * 1000
        print(f"idle single-text: p50 {percentile(idle, 0.5) * 1000:.1f} ms, p99 {idle_p99:.1f} ms\n", flush=True)
        rows = []
        for name, make in BODIES.items():
            body = json.dumps(make()).encode() if make else b"[" * 5000 + b"]" * 5000
            response, seconds, probe = beside_a_probe(server, body, pause=0.0)
            health = [t for t, _ in probe.health]
            single = [t for t, _ in probe.single]
            row = (
                f"| {name} | {response.status_code} | {seconds:.2f} | {len(response.content):,} "
                f"| {percentile(health, 0.5) * 1000:.1f} / {max(health) * 1000:.0f} "
                f"| {percentile(single, 0.5) * 1000:.1f} / {percentile(single, 0.99) * 1000:.0f} "
                f"| {percentile(single, 0.99) * 1000 / idle_p99:.1f}x | {len(single)} |"
            )
            print(row, flush=True)
            rows.append(row)
        print(
            "\n| abusive request | status | seconds | answer bytes | health p50 / max ms | single p50 / p99 ms "
            "| single p99 / idle p99 | probe calls |"
        )
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print(f"\nidle single-text p99: {idle_p99:.1f} ms (median of {statistics.median(idle) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
