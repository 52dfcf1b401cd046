"""Does the image deep tier get selected, and when? The decision ``deep_model`` makes, at the default settings.

For each per-class budget (``--sizes``, default 64, 128 and 180 images per class of Fashion-MNIST), this draws the
training items from the demo's 2,000-image pool, fits the AutoML (embedding heads, as an image function trains)
and the deep tier with ``DeepConfig.from_env()`` (so the default CPU time budget, ``LOOPML_DEEP_TIME_BUDGET_S``,
applies) and the AutoML again on the deep tier's folds, compares their out-of-fold answers item by item with
``compare_out_of_fold`` (the 2-standard-error rule ``deep_model`` applies) and scores both refit models on
1,000 test images. One row per budget:

    .venv/bin/python bench/deep_selection.py [--sizes 64,128,180] [--seed 0]

Minutes per row on a CPU (the deep tier takes up to its budget).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from image_learning_curve import POOL, TEST, embeddings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,128,180")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from loopml.automl import AutoMLResult, run_automl
    from loopml.automl.deep import DeepConfig, compare_out_of_fold, fit_deep_candidate
    from loopml.demo_data import load_fashion_mnist
    from loopml.encoders import default_encoder, get_encoder

    encoder_id = default_encoder("image")
    config = DeepConfig.from_env()
    pool, pool_labels = load_fashion_mnist("train", limit=POOL)
    test, test_labels = load_fashion_mnist("test", limit=TEST)
    label_set = sorted(set(pool_labels))
    y_pool = np.array([label_set.index(label) for label in pool_labels])
    y_test = np.array([label_set.index(label) for label in test_labels])
    emb_pool, emb_test = embeddings(encoder_id, "train", pool), embeddings(encoder_id, "test", test)
    print(
        f"Fashion-MNIST pool {len(pool)}, test {len(test)}, {encoder_id}; deep tier: {config.epochs} epochs, "
        f"{config.views} views, {config.folds} folds, budget {config.time_budget_s:.0f} s\n",
        flush=True,
    )

    def fit_automl(train: np.ndarray, rest: np.ndarray, **cv: int) -> AutoMLResult:  # as an image function trains
        return run_automl(
            [f"image-{i}" for i in train],
            emb_pool[train],
            [pool_labels[i] for i in train],
            label_set,
            encoder_id=encoder_id,
            unlabelled_embeddings=emb_pool[rest] if len(rest) else None,
            text_candidates=False,
            **cv,  # type: ignore[arg-type]
        )

    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        rng = np.random.default_rng(args.seed)
        train = np.concatenate(
            [rng.choice(np.flatnonzero(y_pool == c), size=size, replace=False) for c in range(len(label_set))]
        )
        rest = np.setdiff1d(np.arange(len(pool)), train)
        truth = y_pool[train]
        started = time.perf_counter()
        automl = fit_automl(train, rest)
        automl_seconds = time.perf_counter() - started
        # the AutoML procedure on the deep tier's folds: the paired comparison deep_model makes
        same_folds = fit_automl(train, rest, folds=config.folds, seed=config.seed)
        started = time.perf_counter()
        deep = fit_deep_candidate(
            get_encoder(encoder_id),  # type: ignore[arg-type]
            [pool[i] for i in train],
            [pool_labels[i] for i in train],
            label_set,
            config,
        )
        deep_seconds = time.perf_counter() - started
        deep_correct = deep.oof_proba.argmax(axis=1) == truth
        five_fold = compare_out_of_fold(deep_correct, automl.oof_proba.argmax(axis=1) == truth)
        comparison = compare_out_of_fold(deep_correct, same_folds.oof_proba.argmax(axis=1) == truth)
        automl_test = float((automl.model.predict_proba(["x"] * len(test), emb_test).argmax(axis=1) == y_test).mean())
        deep_test = float((deep.model.predict_proba(test).argmax(axis=1) == y_test).mean())
        row = (
            f"| {size} | {five_fold.automl_accuracy:.3f} | {comparison.automl_accuracy:.3f} "
            f"| {comparison.deep_accuracy:.3f} | {comparison.gain:+.3f} "
            f"| {comparison.standard_error:.3f} | {'yes' if comparison.better else 'no'} | {automl_test:.3f} "
            f"| {deep_test:.3f} | {automl_seconds:.0f} | {deep_seconds:.0f} | {','.join(map(str, deep.epochs))} |"
        )
        print(row, flush=True)
        rows.append(row)
    print(
        "\n| per class | AutoML OOF (5 folds) | AutoML OOF (the deep tier's folds) | deep OOF | gain | SE | selected "
        "| AutoML test | deep test | AutoML s | deep s | epochs (folds, final) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
