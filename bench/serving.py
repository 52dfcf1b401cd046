"""How fast is LoopML's serving path, and what does it cost?

Trains a real model on RottenTomatoes snippets (MiniLM + AutoML), deploys it as primary with a second
version as a 10 % canary (so every request is scored by both heads, as during a rollout), then prints:

1. the encoder's raw in-process throughput at batch sizes 1/16/64 against the throughput of the real
   ``bentoml serve`` process for requests of the same batch sizes (1 client, and several concurrent
   clients) -- target: HTTP >= 90 % of raw;
2. single-text invoke latency over HTTP, p50/p95 (1 client, keep-alive) -- target p50 <= 15 ms;
3. the invocation log's sustained rate with many concurrent submitters, and whether every acknowledged id
   (from the log run and from all HTTP runs) is in the database -- target >= 2,000/s, nothing lost;
4. resident memory per additional function version loaded by the serving runtime -- target <= 5 MB.

The load generator runs on the same machine as the server and takes some of its CPU.

    .venv/bin/python bench/serving.py [--seconds 6] [--clients 4] [--versions 20] [--train 1200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FUNCTION = "review-sentiment"  # the AutoML winner (TF-IDF + embedding ensemble on this data)
LINEAR = "review-linear"  # the same model's embedding head alone: the serving cost without TF-IDF
BATCH_SIZES = (1, 16, 64)


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- setup --------------------------------------------------------------------------------------
def train_and_deploy(train_size: int) -> tuple[list[str], object]:
    """A real model on RottenTomatoes; v1 primary, v2 canary at 10 %. Returns held-out texts and the model."""
    from loopml.automl import TextClassifier, run_automl
    from loopml.config import get_settings
    from loopml.demo_data import load_rotten_tomatoes
    from loopml.deployments import DeploymentStore
    from loopml.encoders import get_encoder
    from loopml.functions import FunctionRegistry, FunctionSpec
    from serving.model_store import save_model

    settings = get_settings()
    settings.ensure_dirs()
    texts, labels = load_rotten_tomatoes()
    order = random.Random(0).sample(range(len(texts)), train_size + 1000)
    train = [texts[i] for i in order[:train_size]]
    train_labels = [labels[i] for i in order[:train_size]]
    held_out = [texts[i] for i in order[train_size:]]
    label_set = sorted(set(labels))
    encoder = get_encoder()
    result = run_automl(train, encoder.encode(train), train_labels, label_set)
    model = result.model
    linear = TextClassifier(model.label_set, model.encoder_id, "linear", {}, model.embedding_head, None, 1.0, 1.0)
    store = DeploymentStore(settings)
    for function, classifier in ((FUNCTION, model), (LINEAR, linear)):
        FunctionRegistry(settings).add(FunctionSpec(function, "text", label_set, encoder.id))
        v1 = save_model(settings, function, classifier, {"bench": True}).tag
        v2 = save_model(settings, function, classifier, {"bench": True}).tag
        store.set_primary(function, v1, "bench")
        store.start_canary(function, v2, 0.10, "bench")
    print(
        f"{FUNCTION}: AutoML winner {model.candidate} on {train_size} RottenTomatoes texts; {LINEAR}: its "
        "embedding head alone; each deployed as v1 primary + v2 canary at 10 % (both score every text)"
    )
    return held_out, model


def raw_encoder(texts: list[str], size: int, run: int | None = None, seconds: float = 2.0) -> float:
    """Texts/s of ``encoder.encode`` in this process on batches of ``size`` cut into runs of ``run`` texts
    (default: the whole batch), the server idle meanwhile."""
    from loopml.encoders import get_encoder

    encoder = get_encoder()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = (done * 7) % (len(texts) - size)
        encoder.encode(texts[start : start + size], batch_size=run or size)
        done += size
    return done / (time.perf_counter() - started)


class Server:
    """``bentoml serve serving.service:LoopML`` in its own process group."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.log = home / "serving.log"
        env = {**os.environ, "LOOPML_SERVING_PORT": str(self.port), "BENTOML_DO_NOT_TRACK": "true"}
        bentoml = Path(sys.executable).with_name("bentoml")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(bentoml),
                    "serve",
                    "serving.service:LoopML",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited; see {self.log}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after 120 s; see {self.log}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM the arbiter (it stops its workers); SIGKILL whatever is left. Circus starts each worker in
        a session of its own, so the workers are found as descendants, not by process group."""
        import psutil

        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        self.proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=20)
        for process in alive:
            process.kill()


def http_load(
    port: int,
    key: str,
    texts: list[str],
    size: int,
    clients: int,
    seconds: float,
    acknowledged: list[str],
    function: str = FUNCTION,
) -> tuple[float, list[float]]:
    """Texts/s over ``seconds`` with ``clients`` keep-alive connections sending ``size`` texts per request."""
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    path = f"/v1/functions/{function}/invoke"
    stop = threading.Event()
    counted = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    lock = threading.Lock()

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        rng = random.Random(index)
        ids: list[str] = []
        while not stop.is_set():
            batch = [texts[rng.randrange(len(texts))] for _ in range(size)]
            body = json.dumps({"text": batch[0]} if size == 1 else {"texts": batch})
            started = time.perf_counter()
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            payload = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload}")
            latencies[index].append((time.perf_counter() - started) * 1000)
            ids.extend([r["invocation_id"] for r in payload["results"]] if size > 1 else [payload["invocation_id"]])
            counted[index] += size
        with lock:
            acknowledged.extend(ids)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # warm-up, not counted
    before = sum(counted)
    started = time.perf_counter()
    time.sleep(seconds)
    done = sum(counted) - before
    elapsed = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    return done / elapsed, [x for lat in latencies for x in lat]


def single_latency(port: int, key: str, texts: list[str], n: int = 400, function: str = FUNCTION) -> list[float]:
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for i in range(n + 30):
        body = json.dumps({"text": texts[i % len(texts)]})
        started = time.perf_counter()
        conn.request("POST", f"/v1/functions/{function}/invoke", body, headers)
        response = conn.getresponse()
        response.read()
        if i >= 30:
            out.append((time.perf_counter() - started) * 1000)
    return out


def log_rate(seconds: float, submitters: int = 32) -> tuple[float, int, int, float]:
    """``submitters`` threads each logging one invocation at a time: (rate, rows, lost, rows per commit)."""
    import numpy as np

    from loopml.config import get_settings
    from loopml.invocation_log import InvocationLog, InvocationRecord, embedding_to_bytes

    log = InvocationLog(get_settings())
    embedding = embedding_to_bytes(np.random.default_rng(0).normal(size=384))
    stop = threading.Event()
    acknowledged: list[str] = []
    lock = threading.Lock()

    def submitter(index: int) -> None:
        mine = []
        i = 0
        while not stop.is_set():
            mine.append(
                log.log(
                    InvocationRecord(
                        FUNCTION,
                        f"a review, number {index}-{i}, of moderate length",
                        embedding,
                        {f"{FUNCTION}:v1": [0.7, 0.3], f"{FUNCTION}:v2": [0.6, 0.4]},
                        {
                            f"{FUNCTION}:v1": ["negative", "positive"],
                            f"{FUNCTION}:v2": ["negative", "positive"],
                        },
                        f"{FUNCTION}:v1",
                        "negative",
                        0.7,
                        4.2,
                        "bench",
                        None,
                    )
                )
            )
            i += 1
        with lock:
            acknowledged.extend(mine)

    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(submitters)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    lost = len(set(acknowledged) - log.existing_ids(acknowledged))
    per_batch = log.stats.rows / max(1, log.stats.batches)
    log.close()
    return len(acknowledged) / elapsed, len(acknowledged), lost, per_batch


def memory_per_version(model: object, count: int) -> tuple[float, float, float]:
    """RSS growth of a ModelRuntime when ``count`` more functions (one version each) are deployed."""
    import gc

    from loopml.config import get_settings
    from loopml.deployments import DeploymentStore
    from serving.model_store import save_model
    from serving.runtime import ModelRuntime

    settings = get_settings()
    store = DeploymentStore(settings)
    runtime = ModelRuntime(settings)
    runtime.start(wait=True)
    runtime.predict(FUNCTION, ["warm up the heads"])
    tags = []
    for i in range(count):
        name = f"memory-probe-{i}"
        tags.append(save_model(settings, name, model, {"bench": True}).tag)  # type: ignore[arg-type]
    gc.collect()
    before = rss_mb()
    for i, tag in enumerate(tags):
        store.set_primary(f"memory-probe-{i}", tag, "bench")
    runtime.refresh()
    assert all(runtime.snapshot.functions[f"memory-probe-{i}"].primary for i in range(count))
    for i in range(count):
        runtime.predict(f"memory-probe-{i}", ["touch every head once"])
    gc.collect()
    after = rss_mb()
    runtime.stop()
    return before, after, (after - before) / count


def throughput_rows(
    port: int,
    key: str,
    texts: list[str],
    function: str,
    clients: int,
    seconds: float,
    rounds: int,
    acknowledged: list[str],
) -> list[list[str]]:
    """Medians of ``rounds`` alternating runs (raw, 1 client, N clients) per batch size: noisy machine.

    ``raw`` is ``encode(batch, batch_size=batch)``; ``raw as served`` cuts the batch into runs of at most 16
    texts, as the server does on the CPU, so ``HTTP / raw as served`` is the cost of serving itself.
    """
    rows = []
    for size in BATCH_SIZES:
        raw, served, one, many = [], [], [], []
        for _ in range(rounds):
            raw.append(raw_encoder(texts, size))
            served.append(raw_encoder(texts, size, run=16) if size > 16 else raw[-1])
            one.append(http_load(port, key, texts, size, 1, seconds, acknowledged, function)[0])
            many.append(http_load(port, key, texts, size, clients, seconds, acknowledged, function)[0])
        r, rs = statistics.median(raw), statistics.median(served)
        o, m = statistics.median(one), statistics.median(many)
        best = max(o, m)
        rows.append(
            [
                function,
                str(size),
                f"{r:.0f}",
                f"{rs:.0f}",
                f"{o:.0f}",
                f"{m:.0f}",
                f"{100 * best / r:.0f} %",
                f"{100 * best / rs:.0f} %",
                "yes" if best >= 0.9 * r else "NO",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per HTTP load run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per measurement (median)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--versions", type=int, default=20, help="extra versions loaded for the memory probe")
    parser.add_argument("--train", type=int, default=1200, help="training texts for the benchmark model")
    parser.add_argument("--keep", action="store_true", help="keep the temporary LOOPML_HOME")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="loopml-bench-serving-"))
    os.environ["LOOPML_HOME"] = str(home)
    os.environ["BENTOML_HOME"] = str(home / "bentoml")
    os.environ.pop("LOOPML_DATABASE_URL", None)
    try:
        from loopml.apikeys import create_key
        from loopml.config import get_settings
        from loopml.encoders import get_encoder
        from loopml.invocation_log import InvocationLog

        texts, model = train_and_deploy(args.train)
        get_encoder().encode(texts[:64])
        _, key = create_key(get_settings(), "bench")
        acknowledged: list[str] = []
        load_before = os.getloadavg()
        server = Server(home)
        try:
            rows = []
            for function in (FUNCTION, LINEAR):
                rows += throughput_rows(
                    server.port, key, texts, function, args.clients, args.seconds, args.rounds, acknowledged
                )
            latencies = {f: sorted(single_latency(server.port, key, texts, function=f)) for f in (FUNCTION, LINEAR)}
        finally:
            server.stop()
        load_after = os.getloadavg()
        lost_http = len(set(acknowledged) - InvocationLog(get_settings()).existing_ids(acknowledged))

        table(
            "Encoder throughput: raw in-process vs the real server (texts/s, medians; >= 90 % target)",
            [
                "function",
                "batch",
                "raw encoder",
                "raw as served",
                "HTTP, 1 client",
                f"HTTP, {args.clients} clients",
                "HTTP / raw",
                "HTTP / raw as served",
                "meets",
            ],
            rows,
        )
        latency_rows = []
        for function, latency in latencies.items():
            p50 = statistics.median(latency)
            latency_rows.append(
                [
                    function,
                    str(len(latency)),
                    f"{p50:.1f}",
                    f"{latency[int(0.95 * (len(latency) - 1))]:.1f}",
                    f"{latency[int(0.99 * (len(latency) - 1))]:.1f}",
                    "yes" if p50 <= 15 else "NO",
                ]
            )
        table(
            "Single-text invoke over HTTP (1 client, keep-alive, primary + 10 % canary; p50 <= 15 ms target)",
            ["function", "requests", "p50 ms", "p95 ms", "p99 ms", "meets"],
            latency_rows,
        )
        rate, rows_logged, lost, per_batch = log_rate(args.seconds * 2)
        table(
            "Invocation log, group commit on SQLite WAL, synchronous=FULL (>= 2,000/s, nothing lost)",
            ["run", "invocations", "rate /s", "rows per commit", "acknowledged but missing", "meets"],
            [
                [
                    "32 submitter threads",
                    str(rows_logged),
                    f"{rate:.0f}",
                    f"{per_batch:.1f}",
                    str(lost),
                    "yes" if rate >= 2000 and lost == 0 else "NO",
                ],
                [
                    "all HTTP runs above",
                    str(len(acknowledged)),
                    "-",
                    "-",
                    str(lost_http),
                    "yes" if lost_http == 0 else "NO",
                ],
            ],
        )
        before, after, per_version = memory_per_version(model, args.versions)
        table(
            f"Resident memory per additional function version ({model.candidate} heads; <= 5 MB target)",
            ["versions added", "RSS before MB", "RSS after MB", "per version MB", "meets"],
            [
                [
                    str(args.versions),
                    f"{before:.0f}",
                    f"{after:.0f}",
                    f"{per_version:.2f}",
                    "yes" if per_version <= 5 else "NO",
                ]
            ],
        )
        print(
            f"\nmachine: {os.cpu_count()} CPUs, shared by the load generator and the server; load average "
            f"{load_before[0]:.1f} before the HTTP runs, {load_after[0]:.1f} after (above ~{os.cpu_count()} means "
            "other processes took CPU and the throughput numbers are low)"
        )
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
