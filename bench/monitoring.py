"""How fast is monitoring on a large invocation log?

Builds (once, cached under ``$LOOPML_HOME/bench``) a SQLite platform database with 1,000,000 logged
invocations of one function, ``review-sentiment``: inputs are RottenTomatoes snippets with their cached
MiniLM embeddings plus a little noise, every call scored by a primary and a canary version (logistic
regression heads, the canary answering a quarter of the calls), a lognormal latency, feedback on about
1 % of the calls, and a last day whose traffic leans towards negative reviews (a drift to find).

Then, in a fresh subprocess (so peak memory is honest), it times the monitoring stages on the whole log:
load every invocation (``load_invocations``), pick calls for review (``select_for_review``), and build the
drift report of the last day against the training data (``build_drift_report``), and prints seconds per
stage, the total and the peak RSS.

    .venv/bin/python bench/monitoring.py [--rows 1000000] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from automl_speed import cache_dir, load_with_embeddings, markdown_row  # noqa: E402

FUNCTION = "review-sentiment"
PRIMARY = f"{FUNCTION}:v3"
CANARY = f"{FUNCTION}:v4"
DATASET = "rotten_tomatoes"
CANARY_SHARE = 0.25
FEEDBACK_SHARE = 0.01
DAYS = 7
DRIFT_DAYS = 1  # the last day leans towards one class
DRIFT_CLASS_SHARE = 0.8
NOISE = 0.01
SEED = 0
BUILD_VERSION = 1  # bump when the generated data changes


# --- the reference: training data and the two heads -------------------------------------------------
def fit_heads(emb: np.ndarray, labels: list[str]) -> dict[str, object]:
    """Two logistic-regression heads (primary on 40 % of the data, canary on 80 %) and out-of-fold
    confidences of the canary's training rows (the drift report's reference)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    label_set = sorted(set(labels))
    y = np.array([label_set.index(x) for x in labels])
    order = np.random.default_rng(SEED).permutation(len(y))
    primary_rows, canary_rows = order[: int(0.4 * len(y))], order[: int(0.8 * len(y))]
    heads = {}
    for tag, rows in ((PRIMARY, primary_rows), (CANARY, canary_rows)):
        heads[tag] = LogisticRegression(C=1.0, max_iter=500).fit(emb[rows], y[rows])
    oof = cross_val_predict(
        LogisticRegression(C=1.0, max_iter=500), emb[canary_rows], y[canary_rows], cv=5, method="predict_proba"
    )
    return {
        "label_set": label_set,
        "heads": heads,
        "train_rows": canary_rows,
        "train_confidence": oof.max(axis=1),
        "train_predicted": np.asarray(label_set)[oof.argmax(axis=1)],
    }


# --- the synthetic log -------------------------------------------------------------------------------
def database_path(rows: int) -> Path:
    return cache_dir() / f"monitoring-{FUNCTION}-{rows}-v{BUILD_VERSION}.db"


def sqlite_datetime(moments: np.ndarray) -> list[str]:
    """datetime64[us] values as SQLAlchemy stores DateTime on SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    return [s.replace("T", " ") for s in np.datetime_as_string(moments, unit="us")]


def build_database(path: Path, n_rows: int, chunk: int = 100_000) -> None:
    """Write ``n_rows`` invocations and their feedback into a fresh platform database at ``path``."""
    from loopml.db import get_engine

    texts, labels, emb = load_with_embeddings(DATASET)
    ref = fit_heads(emb, labels)
    label_set: list[str] = ref["label_set"]  # type: ignore[assignment]
    heads = ref["heads"]
    y = np.array([label_set.index(x) for x in labels])

    tmp = path.with_name(path.name + ".tmp")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    engine = get_engine(f"sqlite:///{tmp}")  # creates the tables exactly as the platform does
    engine.dispose()

    rng = np.random.default_rng(SEED)
    end = np.datetime64("2025-06-01T00:00:00", "us")
    start = end - np.timedelta64(DAYS * 24 * 3600 * 10**6, "us")
    drift_from = end - np.timedelta64(DRIFT_DAYS * 24 * 3600 * 10**6, "us")
    offsets = np.sort(rng.integers(0, (end - start).astype(np.int64), size=n_rows))
    moments = start + offsets.astype("timedelta64[us]")
    by_class = [np.flatnonzero(y == k) for k in range(len(label_set))]
    labels_json = json.dumps({PRIMARY: label_set, CANARY: label_set})
    dim = emb.shape[1]

    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    insert_sql = (
        "INSERT INTO invocations (id, function, created_at, input_text, embedding, scores, labels, answered_by, "
        "label, confidence, latency_ms, key_id, sticky_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    feedback_sql = (
        "INSERT INTO feedback (invocation_id, function, flagged, true_label, comment, created_at, key_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    started = time.perf_counter()
    for lo in range(0, n_rows, chunk):
        hi = min(lo + chunk, n_rows)
        n = hi - lo
        when = moments[lo:hi]
        # base items: uniform before the drift window, leaning towards class 0 inside it
        base = rng.integers(0, len(y), size=n)
        drifting = when >= drift_from
        if drifting.any():
            lean = drifting & (rng.random(n) < DRIFT_CLASS_SHARE)
            base[lean] = rng.choice(by_class[0], size=int(lean.sum()))
        vectors = emb[base] + rng.normal(0.0, NOISE, size=(n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors16 = np.ascontiguousarray(vectors.astype("<f2"))
        blobs = vectors16.view(f"V{2 * dim}").ravel().tolist()
        proba = {tag: head.predict_proba(vectors16.astype(np.float32)) for tag, head in heads.items()}  # type: ignore[attr-defined]
        canary = rng.random(n) < CANARY_SHARE
        answer = np.where(canary[:, None], proba[CANARY], proba[PRIMARY])
        best = answer.argmax(axis=1)
        confidence = answer.max(axis=1)
        latency = rng.lognormal(np.log(6.0), 0.4, size=n)
        stamps = sqlite_datetime(when)
        raw = rng.bytes(16 * n)
        ids = [str(uuid.UUID(bytes=raw[16 * i : 16 * i + 16], version=4)) for i in range(n)]
        p_rows, c_rows = proba[PRIMARY].tolist(), proba[CANARY].tolist()
        rows = [
            (
                ids[i],
                FUNCTION,
                stamps[i],
                texts[base[i]],
                blobs[i],
                json.dumps({PRIMARY: p_rows[i], CANARY: c_rows[i]}),
                labels_json,
                CANARY if canary[i] else PRIMARY,
                label_set[best[i]],
                float(confidence[i]),
                float(latency[i]),
                "bench",
                None,
            )
            for i in range(n)
        ]
        with conn:
            conn.executemany(insert_sql, rows)
            picked = np.flatnonzero(rng.random(n) < FEEDBACK_SHARE)
            feedback = []
            for i in picked:
                truth = labels[base[i]]
                answered = label_set[best[i]]
                given = truth if rng.random() < 0.7 else None
                feedback.append((ids[i], FUNCTION, answered != truth or given is None, given, "", stamps[i], "bench"))
            conn.executemany(feedback_sql, feedback)
        print(f"  {hi:,} rows ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    os.replace(tmp, path)


def reference_path(rows: int) -> Path:
    return database_path(rows).with_suffix(".reference.npz")


def build_reference(path: Path) -> None:
    """The training data the monitoring compares against: the canary's training rows with their
    embeddings, texts, annotated labels and out-of-fold predictions (label and confidence)."""
    texts, labels, emb = load_with_embeddings(DATASET)
    ref = fit_heads(emb, labels)
    rows = ref["train_rows"]
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        embeddings=emb[rows],
        texts=np.asarray(texts, dtype=object)[rows].astype(str),
        labels=np.asarray(labels)[rows],
        predicted=ref["train_predicted"],
        confidences=ref["train_confidence"],
        label_set=np.asarray(ref["label_set"]),
    )
    os.replace(tmp, path)


# --- the measurement (runs in a fresh interpreter) ---------------------------------------------------
def rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(db: Path, reference_file: Path, current_days: float, html_path: Path) -> dict[str, object]:
    """Time the monitoring stages on the whole log; returns one record per stage plus the totals."""
    stages: list[dict[str, object]] = []
    started = time.perf_counter()

    def stage(name: str, began: float, cpu: float, note: str) -> None:
        stages.append(
            {
                "stage": name,
                "seconds": time.perf_counter() - began,
                "cpu": time.process_time() - cpu,
                "rss_mb": rss_mb(),
                "note": note,
            }
        )

    t, c = time.perf_counter(), time.process_time()
    import polars as pl

    from loopml.dataset import content_hash
    from loopml.drift import DriftInput, build_drift_report
    from loopml.invocation_frames import load_invocations
    from loopml.review import ReviewContext, ReviewPolicy, select_for_review

    stage("import loopml (polars, SQLAlchemy, numpy)", t, c, "")

    t, c = time.perf_counter(), time.process_time()
    invocations = load_invocations(f"sqlite:///{db}", FUNCTION, primary=PRIMARY, canary=CANARY)
    frame = invocations.frame
    stage(
        "load every invocation (load_invocations)",
        t,
        c,
        f"{frame.height:,} rows, embeddings {invocations.embeddings.shape[1]}-d float32 "
        f"({invocations.embeddings.nbytes / 2**20:,.0f} MiB), {int(frame['flagged'].sum()):,} flagged",
    )

    t, c = time.perf_counter(), time.process_time()
    ref = np.load(reference_file)
    truth, predicted = ref["labels"], ref["predicted"]
    confident_mistakes = (predicted != truth) & (ref["confidences"] >= 0.8)
    label_counts = {str(k): int(v) for k, v in zip(*np.unique(truth, return_counts=True), strict=True)}
    context = ReviewContext(
        training_label_counts=label_counts,
        mistake_embeddings=ref["embeddings"][confident_mistakes],
        existing_hashes=frozenset(content_hash(str(text)) for text in ref["texts"]),
        training_embeddings=ref["embeddings"],
    )
    stage(
        "reference: training data + review context",
        t,
        c,
        f"{len(truth):,} training rows, {int(confident_mistakes.sum())} confident OOF mistakes",
    )

    t, c = time.perf_counter(), time.process_time()
    review = select_for_review(frame, invocations.embeddings, context, ReviewPolicy(), seed=0)
    reasons = dict(review["reason"].value_counts().iter_rows()) if review.height else {}
    stage(
        "review sampling (select_for_review)",
        t,
        c,
        f"{review.height} picked: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())),
    )

    t, c = time.perf_counter(), time.process_time()
    import evidently  # noqa: F401 - timed on its own: every fresh process that builds a report pays it
    import sklearn.decomposition  # noqa: F401

    stage("import Evidently + scikit-learn", t, c, "")

    t, c = time.perf_counter(), time.process_time()
    newest = frame["created_at"].max()
    window = (frame["created_at"] >= newest - timedelta(days=current_days)).to_numpy()  # type: ignore[operator]
    recent = frame.filter(pl.Series(window))
    current = DriftInput(invocations.embeddings[window], recent["label"], recent["confidence"], recent["input_text"])
    reference = DriftInput(ref["embeddings"], predicted, ref["confidences"], ref["texts"])
    summary = build_drift_report(reference, current, html_path, label_set=[str(x) for x in ref["label_set"]])
    stage(
        "drift report (build_drift_report)",
        t,
        c,
        f"last {current_days:g} day: {len(current):,} calls vs {len(reference):,} training rows "
        f"({summary.sampled_current:,} / {summary.sampled_reference:,} sampled); {summary.message}",
    )
    return {
        "stages": stages,
        "total": time.perf_counter() - started,
        "cpu": time.process_time(),
        "peak_rss_mb": rss_mb(),
        "rows": frame.height,
        "html": str(html_path),
        "summary": summary.as_metadata(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--current-days", type=float, default=1.0, help="the drift report's current window")
    parser.add_argument("--rebuild", action="store_true", help="regenerate the cached database")
    parser.add_argument("--measure", nargs=2, metavar=("DB", "REFERENCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:  # the child: measure, print one JSON line
        html_path = cache_dir() / f"monitoring-drift-{FUNCTION}.html"
        result = measure(Path(args.measure[0]), Path(args.measure[1]), args.current_days, html_path)
        print(json.dumps(result, default=str))
        return

    db, ref = database_path(args.rows), reference_path(args.rows)
    if args.rebuild or not db.exists():
        started = time.perf_counter()
        print(f"building {db.name} ({args.rows:,} invocations, once) ...", file=sys.stderr)
        build_database(db, args.rows)
        print(f"  {time.perf_counter() - started:.0f} s, {db.stat().st_size / 2**30:.2f} GiB", file=sys.stderr)
    if args.rebuild or not ref.exists():
        build_reference(ref)

    load = os.getloadavg()[0]
    child = subprocess.run(
        [sys.executable, __file__, "--measure", str(db), str(ref), "--current-days", str(args.current_days)],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        sys.stderr.write(child.stderr)
        raise SystemExit(f"the measurement failed (exit {child.returncode})")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        f"# LoopML monitoring on {result['rows']:,} logged invocations of one function "
        f"({os.cpu_count()} CPUs, SQLite, load average {load:.2f})\n"
    )
    print("Each stage in one fresh process, in order; RSS is the process's peak so far.\n")
    print(markdown_row(["stage", "wall s", "CPU s", "peak RSS MiB", "what"]))
    print("|---|---:|---:|---:|---|")
    for s in result["stages"]:
        print(markdown_row([s["stage"], f"{s['seconds']:.2f}", f"{s['cpu']:.2f}", f"{s['rss_mb']:,.0f}", s["note"]]))
    total, peak = result["total"], result["peak_rss_mb"]
    print(markdown_row(["**total**", f"**{total:.2f}**", f"{result['cpu']:.2f}", f"**{peak:,.0f}**", ""]))
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(
        f"\nTargets: total <= 30 s ({verdict(total <= 30)}), peak memory < 4 GB ({verdict(peak * 2**20 < 4e9)}). "
        f"Drift report: {result['html']}"
    )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
