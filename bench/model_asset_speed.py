"""How long does the whole ``model`` asset take at 2,000, 8,000 and 20,000 labelled texts, beside ``run_automl``?

``bench/automl_speed.py --scaling`` times ``run_automl`` alone. The asset does more around it: it filters the
training rows, reads the function's unlabelled items for the feature basis, runs the AutoML, scores the holdout
split, computes the out-of-fold ECE, registers the version in the BentoML model store and writes its out-of-fold
probabilities. This bench calls the real asset (Dagster's direct invocation, a throwaway ``LOOPML_HOME``) on
RottenTomatoes snippets with cached MiniLM embeddings (the ``features`` asset's output), the split assigned by
content hash as the ``dataset`` asset does (20 % holdout), and times ``run_automl`` on the same training rows.
Beyond the 12,808 snippets rows are drawn again with a marker, as in ``bench/automl_speed.py``.

    .venv/bin/python bench/model_asset_speed.py [--sizes 2000,8000,20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automl_speed import load_with_embeddings, markdown_row, resampled  # noqa: E402

FUNCTION = "bench-reviews"


def frames(size: int) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """The ``dataset`` and ``features`` frames of ``size`` labelled snippets, and the label set."""
    from loopml.dataset import input_hash, split_of

    texts, labels, emb = load_with_embeddings("rotten_tomatoes")
    texts, labels, emb = resampled(texts, labels, emb, size)
    hashes = [input_hash(t, "text") for t in texts]
    dataset = pl.DataFrame(
        {
            "content_hash": hashes,
            "text": texts,
            "label": labels,
            "split": [split_of(h) for h in hashes],
            "source": ["annotation"] * size,
            "text_length": [len(t) for t in texts],
            "must_pass": [False] * size,
        }
    )
    features = pl.DataFrame({"content_hash": hashes, "embedding": [row for row in emb.astype(np.float32)]})
    # one row per content, as the dataset and features assets keep them (a few snippets repeat a text)
    dataset = dataset.unique(subset=["content_hash"], keep="first", maintain_order=True)
    features = features.unique(subset=["content_hash"], keep="first", maintain_order=True)
    return dataset, features, sorted(set(labels))


def time_asset(dataset: pl.DataFrame, features: pl.DataFrame, label_set: list[str]) -> tuple[float, float, dict]:
    """Wall and CPU seconds of one materialization of the ``model`` asset, and its output."""
    from dagster import DagsterInstance, build_asset_context

    from assets.model import model
    from assets.resources import LoopMLResource
    from loopml.config import get_settings
    from loopml.functions import FunctionRegistry, FunctionSpec

    settings = get_settings()
    settings.ensure_dirs()
    registry = FunctionRegistry(settings)
    if FUNCTION not in registry.names():
        registry.add(FunctionSpec(FUNCTION, "text", label_set, "minilm-l6-int8"))
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("functions", [FUNCTION])
        context = build_asset_context(partition_key=FUNCTION, instance=instance)
        wall, cpu = time.perf_counter(), time.process_time()
        outputs = list(model(context, loopml=LoopMLResource(), dataset=dataset, features=features))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, outputs[-1].value


def time_automl(dataset: pl.DataFrame, features: pl.DataFrame, label_set: list[str]) -> tuple[float, float]:
    from loopml.automl import run_automl

    train = dataset.filter(pl.col("split") == "train").join(features, on="content_hash")
    wall, cpu = time.perf_counter(), time.process_time()
    run_automl(
        train["text"].to_list(),
        np.asarray(train["embedding"].to_list(), dtype=np.float32),
        train["label"].to_list(),
        label_set,
    )
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,8000,20000", help="labelled texts, comma-separated")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="loopml-bench-") as home:
        os.environ["LOOPML_HOME"] = home
        os.environ["BENTOML_HOME"] = str(Path(home) / "bentoml")
        os.environ.pop("LOOPML_DATABASE_URL", None)
        rows = []
        for size in (int(s) for s in args.sizes.split(",") if s):
            dataset, features, label_set = frames(size)
            time_asset(*frames(200))  # warm-up: imports and Lightning's one-time set-up are not counted
            automl_wall, automl_cpu = time_automl(dataset, features, label_set)
            wall, cpu, output = time_asset(dataset, features, label_set)
            rows.append((size, output, automl_wall, automl_cpu, wall, cpu))
            print(f"  {size}: asset {wall:.2f} s, run_automl {automl_wall:.2f} s", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    print(f"# The model asset against run_automl alone (RottenTomatoes snippets; load average {load:.1f})\n")
    header = ["texts", "train rows", "holdout rows", "run_automl wall s", "run_automl CPU s", "asset wall s"]
    print(markdown_row([*header, "asset CPU s", "asset - run_automl s", "winner", "CV accuracy", "holdout accuracy"]))
    print("|" + "---:|" * 10 + "---:|")
    for size, out, automl_wall, automl_cpu, wall, cpu in rows:
        cells = [f"{size:,}", f"{out['train_rows']:,}", f"{out['holdout_rows']:,}", f"{automl_wall:.2f}"]
        cells += [f"{automl_cpu:.2f}", f"{wall:.2f}", f"{cpu:.2f}", f"{wall - automl_wall:+.2f}", out["winner"]]
        print(markdown_row([*cells, f"{out['cv_accuracy']:.4f}", f"{out['holdout_accuracy']:.4f}"]))


if __name__ == "__main__":
    main()
