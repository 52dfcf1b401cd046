"""How fast does LoopML serve an image function on the CPU?

Trains a real image model (Fashion-MNIST, the default image encoder EfficientNet-Lite0 at 224 px + AutoML's
embedding heads), deploys it as primary, starts the real ``bentoml serve`` process and prints:

1. the backbone's own throughput in this process (decoding, resizing and the network; the encoder's best CPU
   batch) at request sizes 1/4/16/32 images, against the server's images/s over HTTP for requests of the
   same size as JSON base64 (1 client, and several concurrent clients) -- target: HTTP >= 90 % of the backbone
   at the best batch size;
2. single-image invoke latency over HTTP, p50/p95 (1 client, keep-alive, JSON base64 and a multipart upload),
   beside the backbone's own single-image latency in process.

The load generator runs on the same machine as the server and takes some of its CPU.

    .venv/bin/python bench/serving_images.py [--seconds 4] [--clients 4] [--train 500]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _text_bench():  # noqa: ANN202 - bench/serving.py, loaded by path (its name is the serving package's)
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_serving", REPO / "bench" / "serving.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


_bench = _text_bench()
Server, table = _bench.Server, _bench.table

FUNCTION = "bench-fashion"
BATCH_SIZES = (1, 4, 16, 32)


def train_and_deploy(train: int) -> None:
    from loopml.automl import run_automl
    from loopml.config import get_settings
    from loopml.demo_data import FASHION_MNIST_LABELS, load_fashion_mnist
    from loopml.deployments import DeploymentStore
    from loopml.encoders import default_encoder, get_encoder
    from loopml.functions import FunctionRegistry, FunctionSpec
    from serving.model_store import save_model

    settings = get_settings()
    settings.ensure_dirs()
    encoder_id = default_encoder("image")
    images, labels = load_fashion_mnist("train", limit=train)
    result = run_automl(
        [f"image-{i}" for i in range(train)],
        get_encoder(encoder_id).encode(images),
        labels,
        list(FASHION_MNIST_LABELS),
        encoder_id=encoder_id,
        text_candidates=False,
    )
    FunctionRegistry(settings).add(FunctionSpec(FUNCTION, "image", list(FASHION_MNIST_LABELS), encoder_id))
    tag = save_model(settings, FUNCTION, result.model, {"note": "bench"}).tag
    DeploymentStore(settings).set_primary(FUNCTION, tag, "bench")
    print(f"{FUNCTION}: {result.model.candidate} on {train} Fashion-MNIST images, encoder {encoder_id}", flush=True)


def backbone(images: list[bytes], size: int, seconds: float = 3.0) -> float:
    """Images/s of the encoder in this process on requests of ``size`` images."""
    from loopml.encoders import default_encoder, get_encoder

    encoder = get_encoder(default_encoder("image"))
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = (done * 7) % (len(images) - size)
        encoder.encode(images[start : start + size], batch_size=size)
        done += size
    return done / (time.perf_counter() - started)


def backbone_latency(images: list[bytes], n: int = 100) -> list[float]:
    from loopml.encoders import default_encoder, get_encoder

    encoder = get_encoder(default_encoder("image"))
    out = []
    for i in range(n):
        started = time.perf_counter()
        encoder.encode([images[i % len(images)]])
        out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def http_load(port: int, key: str, payloads: list[str], size: int, clients: int, seconds: float) -> float:
    """Images/s over ``seconds`` with ``clients`` keep-alive connections sending ``size`` images per request."""
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    stop = threading.Event()
    counted = [0] * clients

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        rng = random.Random(index)
        while not stop.is_set():
            batch = [payloads[rng.randrange(len(payloads))] for _ in range(size)]
            body = json.dumps({"image": batch[0]} if size == 1 else {"images": batch})
            conn.request("POST", f"/v1/functions/{FUNCTION}/invoke", body, headers)
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")
            counted[index] += size

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # warm-up, not counted
    before, started = sum(counted), time.perf_counter()
    time.sleep(seconds)
    done, elapsed = sum(counted) - before, time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    return done / elapsed


def single_latency(port: int, key: str, images: list[bytes], upload: bool, n: int = 100) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for i in range(n + 10):
        data = images[i % len(images)]
        if upload:
            boundary = uuid.uuid4().hex
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
                    f"Content-Type: image/png\r\n\r\n"
                ).encode()
                + data
                + f"\r\n--{boundary}--\r\n".encode()
            )
            headers = {"X-API-Key": key, "Content-Type": f"multipart/form-data; boundary={boundary}"}
        else:
            body = json.dumps({"image": base64.b64encode(data).decode()}).encode()
            headers = {"X-API-Key": key, "Content-Type": "application/json"}
        started = time.perf_counter()
        conn.request("POST", f"/v1/functions/{FUNCTION}/invoke", body, headers)
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")
        if i >= 10:
            out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per HTTP load run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--train", type=int, default=500, help="training images for the benchmark model")
    parser.add_argument("--gpu", action="store_true", help="serve on the GPU (bench/gpu.sh); default: the CPU")
    args = parser.parse_args()
    global BATCH_SIZES
    if args.gpu:
        BATCH_SIZES = [*BATCH_SIZES, 64, 128]
    device = "GPU" if args.gpu else "CPU"

    home = Path(tempfile.mkdtemp(prefix="loopml-bench-serving-images-"))
    os.environ.update(
        LOOPML_HOME=str(home), BENTOML_HOME=str(home / "bentoml"), LOOPML_SERVING_GPU="auto" if args.gpu else "0"
    )
    os.environ.pop("LOOPML_DATABASE_URL", None)
    from loopml.apikeys import create_key
    from loopml.config import get_settings
    from loopml.demo_data import load_fashion_mnist

    train_and_deploy(args.train)
    images, _ = load_fashion_mnist("test", limit=2000 if args.gpu else 500)
    payloads = [base64.b64encode(image).decode() for image in images]
    _, key = create_key(get_settings(), "bench")
    raw = {size: backbone(images, size) for size in BATCH_SIZES}
    raw_latency = backbone_latency(images)
    server = Server(home)
    try:
        rows = []
        for size in BATCH_SIZES:
            one = http_load(server.port, key, payloads, size, 1, args.seconds)
            many = http_load(server.port, key, payloads, size, args.clients, args.seconds)
            best = max(one, many)
            rows.append([str(size), f"{raw[size]:.0f}", f"{one:.0f}", f"{many:.0f}", f"{100 * best / raw[size]:.0f} %"])
        json_latency = single_latency(server.port, key, images, upload=False)
        upload_latency = single_latency(server.port, key, images, upload=True)
    finally:
        server.stop()
    best_raw = max(raw.values())
    best_http = max(float(r[2]) for r in rows) if rows else 0.0
    best_http = max(best_http, max(float(r[3]) for r in rows))
    table(
        f"Image function on the {device}: the backbone in process vs the real server (images/s)",
        ["images per request", "backbone", "HTTP, 1 client", f"HTTP, {args.clients} clients", "HTTP / backbone"],
        rows,
    )
    print(
        f"best: backbone {best_raw:.0f} images/s, HTTP {best_http:.0f} images/s "
        f"({100 * best_http / best_raw:.0f} %; target >= 90 %)\n"
    )

    def pct(values: list[float], q: float) -> str:
        return f"{values[int(q * (len(values) - 1))]:.1f}"

    table(
        "One image (28x28 PNG): latency, ms",
        ["path", "n", "p50", "p95"],
        [
            [
                "backbone in process",
                str(len(raw_latency)),
                f"{statistics.median(raw_latency):.1f}",
                pct(raw_latency, 0.95),
            ],
            [
                "HTTP, JSON base64",
                str(len(json_latency)),
                f"{statistics.median(json_latency):.1f}",
                pct(json_latency, 0.95),
            ],
            [
                "HTTP, multipart upload",
                str(len(upload_latency)),
                f"{statistics.median(upload_latency):.1f}",
                pct(upload_latency, 0.95),
            ],
        ],
    )


if __name__ == "__main__":
    main()
