"""How fast is LoopML's AutoML on cached embeddings, and how fast is the default encoder?

For each demo data set: ``run_automl`` on 2,000 texts (a fixed random sample) with precomputed MiniLM
embeddings, timed over a few runs after one warm-up call (imports and Lightning's one-time set-up are not
counted), the leaderboard of the last run, and the encoder's throughput. Embeddings of whole data sets are
cached under ``$LOOPML_HOME/bench`` so reruns (and ``bench/learning_curve.py``) skip the encoding.

With ``--scaling`` (default 2,000, 8,000 and 20,000) it also times ``run_automl`` on that many RottenTomatoes
snippets (beyond the 12,808 it has, rows drawn again with a marker: the same distribution, distinct rows).

    .venv/bin/python bench/automl_speed.py [--runs 5] [--size 2000] [--scaling 2000,8000,20000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loopml.config import get_settings  # noqa: E402
from loopml.demo_data import load_bbc_news, load_rotten_tomatoes  # noqa: E402
from loopml.encoders import DEFAULT_TEXT_ENCODER, get_encoder  # noqa: E402

DATASETS: dict[str, Callable[[], tuple[list[str], list[str]]]] = {
    "rotten_tomatoes": load_rotten_tomatoes,
    "bbc_news": load_bbc_news,
}


def cache_dir() -> Path:
    path = get_settings().home / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_embeddings(name: str, texts: list[str], encoder_id: str = DEFAULT_TEXT_ENCODER) -> np.ndarray:
    """Embeddings of ``texts``, computed once and kept as ``.npy`` keyed by data set, encoder and content."""
    digest = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()[:16]
    path = cache_dir() / f"{name}-{encoder_id}-{digest}.npy"
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    print(f"embedding {len(texts)} {name} texts with {encoder_id} (cached afterwards) ...", file=sys.stderr)
    vectors = get_encoder(encoder_id).encode(texts, batch_size=64, progress=True)
    print(f"  {time.perf_counter() - started:.1f} s", file=sys.stderr)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    return vectors


def load_with_embeddings(name: str, encoder_id: str = DEFAULT_TEXT_ENCODER) -> tuple[list[str], list[str], np.ndarray]:
    texts, labels = DATASETS[name]()
    return texts, labels, cached_embeddings(name, texts, encoder_id)


def sample(n_total: int, size: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:size])


def time_automl(
    texts: list[str], emb: np.ndarray, labels: list[str], runs: int
) -> tuple[list[float], list[float], object]:
    """Wall and CPU seconds of ``runs`` calls of ``run_automl`` (after a warm-up call)."""
    from loopml.automl import run_automl

    label_set = sorted(set(labels))
    run_automl(texts[::10], emb[::10], labels[::10], sorted(set(labels[::10])))  # warm-up (lazy set-up)
    wall, cpu, result = [], [], None
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        result = run_automl(texts, emb, labels, label_set)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu, result


def encoder_speed(texts: list[str], n_batch: int = 512, n_single: int = 50) -> tuple[float, float]:
    """Texts per second at batch 64 over ``n_batch`` texts, and median single-text latency in ms."""
    encoder = get_encoder(DEFAULT_TEXT_ENCODER)
    encoder.encode(texts[:8])
    started = time.perf_counter()
    encoder.encode(texts[:n_batch], batch_size=64)
    throughput = n_batch / (time.perf_counter() - started)
    latencies = []
    for text in texts[n_batch : n_batch + n_single]:
        started = time.perf_counter()
        encoder.encode([text])
        latencies.append((time.perf_counter() - started) * 1000)
    return throughput, statistics.median(latencies)


def resampled(
    texts: list[str], labels: list[str], emb: np.ndarray, size: int, seed: int = 0
) -> tuple[list[str], list[str], np.ndarray]:
    """``size`` rows of a data set: a random subset, or, beyond its size, every row once and the rest drawn again
    with a marker appended to the text and a little noise on the embedding (distinct rows, the same
    distribution: for timing a larger set than the data set has)."""
    rng = np.random.default_rng(seed)
    if size <= len(texts):
        idx = sample(len(texts), size, seed)
        return [texts[i] for i in idx], [labels[i] for i in idx], emb[idx]
    extra = rng.choice(len(texts), size - len(texts), replace=True)
    idx = np.concatenate([np.arange(len(texts)), extra])
    out_texts = texts + [f"{texts[i]} ({k})" for k, i in enumerate(extra)]
    noise = rng.normal(0.0, 0.01, (len(extra), emb.shape[1])).astype(emb.dtype)
    return out_texts, [labels[i] for i in idx], np.concatenate([emb, emb[extra] + noise])


def print_scaling(name: str, rows: list[tuple[int, list[float], list[float], object]], n_data: int) -> None:
    print(f"\n## run_automl time against the number of labelled texts ({name}; beyond {n_data:,} resampled)\n")
    print("| texts | wall s (mean) | wall s (min) | CPU s (median) | winner | CV accuracy |")
    print("|---:|---:|---:|---:|---|---:|")
    for size, wall, cpu, result in rows:
        cells = [f"{size:,}", f"{statistics.mean(wall):.2f}", f"{min(wall):.2f}", f"{statistics.median(cpu):.2f}"]
        print(markdown_row([*cells, result.winner.name, f"{result.cv_accuracy:.4f}"]))  # type: ignore[attr-defined]


def markdown_row(cells: list[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def print_timings(rows: list[tuple], size: int, runs: int) -> None:
    print(f"## run_automl on {size} texts with cached 384-d embeddings ({runs} runs after a warm-up)\n")
    header = ["data set", "texts", "labels", "mean s", "median s", "min s", "max s", "CPU s (median)"]
    print(markdown_row([*header, "winner", "CV accuracy"]))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, n, n_labels, wall, cpu, result in rows:
        times = [statistics.mean(wall), statistics.median(wall), min(wall), max(wall), statistics.median(cpu)]
        cells = [
            name,
            n,
            n_labels,
            *(f"{t:.3f}" for t in times),
            result.winner.name,
            f"{result.cv_accuracy:.4f}",
        ]
        print(markdown_row(cells))


def print_leaderboard(name: str, result: object) -> None:
    print(f"\n## leaderboard: {name} (5-fold CV, calibrated out-of-fold predictions, winner first)\n")
    print("| candidate | params | CV accuracy | CV macro-F1 | CV log loss | fit s (share) |")
    print("|---|---|---:|---:|---:|---:|")
    for c in result.leaderboard:  # type: ignore[attr-defined]
        scores = [c.cv_accuracy, c.cv_macro_f1, c.cv_log_loss]
        print(markdown_row([c.name, format_params(c.params), *(f"{v:.4f}" for v in scores), f"{c.fit_seconds:.3f}"]))


def print_encoder(rows: list[tuple[str, float, float]]) -> None:
    providers = ", ".join(get_encoder(DEFAULT_TEXT_ENCODER).providers)  # type: ignore[attr-defined]
    print(f"\n## encoder {DEFAULT_TEXT_ENCODER} ({providers})\n")
    print("| data set | texts/s at batch 64 | single-text latency ms (median) |")
    print("|---|---:|---:|")
    for name, throughput, latency in rows:
        print(markdown_row([name, f"{throughput:.0f}", f"{latency:.1f}"]))


def format_params(params: dict) -> str:
    if "embedding" in params:
        emb, tfidf = params["embedding"], params["tfidf"]
        return f"{emb['name']} C={emb['C']} + cnb alpha={tfidf['alpha']}, w={params['embedding_weight']}"
    return ", ".join(f"{k}={v}" for k, v in params.items() if k != "ngrams")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument(
        "--scaling", default="2000,8000,20000", help="also time these sizes on RottenTomatoes ('' to skip)"
    )
    parser.add_argument("--scaling-runs", type=int, default=2)
    args = parser.parse_args()

    import torch

    load = os.getloadavg()[0]
    print(f"# LoopML AutoML speed ({os.cpu_count()} CPUs, torch {torch.__version__}, load average {load:.2f})\n")
    rows, enc_rows = [], []
    for name in DATASETS:
        texts, labels, emb = load_with_embeddings(name)
        idx = sample(len(texts), min(args.size, len(texts)))
        sub_texts, sub_labels = [texts[i] for i in idx], [labels[i] for i in idx]
        wall, cpu, result = time_automl(sub_texts, emb[idx], sub_labels, args.runs)
        rows.append((name, len(idx), len(set(labels)), wall, cpu, result))
        enc_rows.append((name, *encoder_speed(texts)))
    print_timings(rows, args.size, args.runs)
    for name, *_, result in rows:
        print_leaderboard(name, result)
    print_encoder(enc_rows)
    if args.scaling:
        texts, labels, emb = load_with_embeddings("rotten_tomatoes")
        scaling = []
        for size in (int(n) for n in args.scaling.split(",")):
            sub_texts, sub_labels, sub_emb = resampled(texts, labels, emb, size)
            scaling.append((size, *time_automl(sub_texts, sub_emb, sub_labels, args.scaling_runs)))
        print_scaling("rotten_tomatoes", scaling, len(texts))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
