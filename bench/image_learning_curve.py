"""Image accuracy learning curve: LoopML's AutoML against the two standard baselines, on the demo image set.

Fashion-MNIST (Debian's ``dataset-fashion-mnist``; ``make install-images``): the pool is the demo's 2,000
training images (``loopml demo`` imports 2,000 items per function), the test set 1,000 of Fashion-MNIST's test
images. From the pool, 8, 32 and 128 labelled images per class are drawn (``--draws`` random draws; mean and
standard deviation reported) and the whole pool is used once ("all"). Methods:

* LoopML: ``run_automl`` on the default image encoder's embeddings (EfficientNet-Lite0, 224 px), the rest of the
  pool as the function's unlabelled items (they shape the feature basis), embedding heads only, as an image
  function trains; the refit winner predicts the test set;
* EfficientNet-Lite0 + LR: scikit-learn ``LogisticRegression()`` on the same embeddings;
* raw pixels + LR: ``LogisticRegression()`` on the 784 grey pixels scaled to [0, 1];
* with ``--deep``: the deep tier (``loopml.automl.deep``: the backbone's last block and head fine-tuned, 3 views,
  25 epochs, 3-fold CV, calibrated), where it starts to pay against the AutoML on frozen features; minutes per fit
  on a CPU, so ``--deep-sizes`` picks the budgets (default 32 and 128 per class, one draw each).

Accuracy and expected calibration error (top label, 15 bins) of each; embeddings are cached under
``$LOOPML_HOME/bench``.

    .venv/bin/python bench/image_learning_curve.py [--draws 3] [--encoder efficientnet-lite0-224]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES: list[int | None] = [8, 32, 128, None]  # labelled images per class; None: the whole pool
POOL = 2000
TEST = 1000


def ece(proba: np.ndarray, truth: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top label."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == truth
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def embeddings(encoder_id: str, name: str, images: list[bytes]) -> np.ndarray:
    """The encoder's embeddings of ``images``, cached under $LOOPML_HOME/bench."""
    from loopml.config import get_settings
    from loopml.encoders import get_encoder

    path = get_settings().home / "bench" / f"fashion-{name}-{len(images)}-{encoder_id}.npy"
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    matrix = get_encoder(encoder_id).encode(images, progress=True)
    print(f"embedded {len(images)} {name} images in {time.perf_counter() - started:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, matrix)
    return matrix


def pixels(images: list[bytes]) -> np.ndarray:
    import io

    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(b)), dtype=np.float32).ravel() / 255.0 for b in images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--encoder", default=None, help="image encoder id (default: the product's default)")
    parser.add_argument("--deep", action="store_true", help="also the deep tier (minutes per fit on a CPU)")
    parser.add_argument("--deep-sizes", default="32,128", help="per-class budgets the deep tier runs at")
    args = parser.parse_args()
    deep_sizes = {int(x) if x != "all" else None for x in args.deep_sizes.split(",")}
    from sklearn.linear_model import LogisticRegression

    from loopml.automl import run_automl
    from loopml.demo_data import load_fashion_mnist
    from loopml.encoders import default_encoder

    encoder_id = args.encoder or default_encoder("image")
    pool, pool_labels = load_fashion_mnist("train", limit=POOL)
    test, test_labels = load_fashion_mnist("test", limit=TEST)
    label_set = sorted(set(pool_labels))
    y_pool = np.array([label_set.index(label) for label in pool_labels])
    y_test = np.array([label_set.index(label) for label in test_labels])
    emb_pool, emb_test = embeddings(encoder_id, "train", pool), embeddings(encoder_id, "test", test)
    px_pool, px_test = pixels(pool), pixels(test)
    print(f"Fashion-MNIST: pool {len(pool)}, test {len(test)}, encoder {encoder_id}, {args.draws} draws\n")

    def loopml(train: np.ndarray) -> np.ndarray:
        rest = np.setdiff1d(np.arange(len(pool)), train)
        result = run_automl(
            [f"image-{i}" for i in train],
            emb_pool[train],
            [pool_labels[i] for i in train],
            label_set,
            encoder_id=encoder_id,
            unlabelled_embeddings=emb_pool[rest] if len(rest) else None,
            text_candidates=False,
        )
        return result.model.predict_proba(["x"] * len(test), emb_test)

    def logistic(features_pool: np.ndarray, features_test: np.ndarray):
        def fit(train: np.ndarray) -> np.ndarray:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = LogisticRegression(max_iter=3000).fit(features_pool[train], y_pool[train])
            return model.predict_proba(features_test)

        return fit

    def deep(train: np.ndarray) -> np.ndarray:
        from loopml.automl.deep import DeepConfig, fit_deep_candidate
        from loopml.encoders import get_encoder

        result = fit_deep_candidate(
            get_encoder(encoder_id),  # type: ignore[arg-type]
            [pool[i] for i in train],
            [pool_labels[i] for i in train],
            label_set,
            DeepConfig(time_budget_s=3600),
        )
        return result.model.predict_proba(test)

    methods = {
        "LoopML": loopml,
        **({"deep tier (fine-tuned tail)": deep} if args.deep else {}),
        f"{encoder_id} + LR": logistic(emb_pool, emb_test),
        "raw pixels + LR": logistic(px_pool, px_test),
    }
    scores: dict[str, dict[str, list[tuple[float, float]]]] = {name: {} for name in methods}
    for size in SIZES:
        column = "all" if size is None else f"{size}/class"
        for draw in range(1 if size is None else args.draws):
            rng = np.random.default_rng(draw)
            if size is None:
                train = np.arange(len(pool))
            else:
                train = np.concatenate(
                    [rng.choice(np.flatnonzero(y_pool == c), size=size, replace=False) for c in range(len(label_set))]
                )
            for name, method in methods.items():
                if method is deep and (size not in deep_sizes or draw > 0):
                    continue
                started = time.perf_counter()
                proba = method(train)
                accuracy = float((proba.argmax(axis=1) == y_test).mean())
                scores[name].setdefault(column, []).append((accuracy, ece(proba, y_test)))
                print(
                    f"{column} draw {draw}: {name} {accuracy:.3f} ECE {ece(proba, y_test):.3f} "
                    f"({time.perf_counter() - started:.1f} s)",
                    flush=True,
                )
    columns = ["all" if s is None else f"{s}/class" for s in SIZES]
    print("\nAccuracy, mean ± sd over draws (ECE in brackets):\n")
    print("| method | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name in methods:
        cells = []
        for column in columns:
            if column not in scores[name]:
                cells.append("-")
                continue
            accuracies = [a for a, _ in scores[name][column]]
            spread = f" ± {statistics.pstdev(accuracies):.3f}" if len(accuracies) > 1 else ""
            calibration = statistics.mean(e for _, e in scores[name][column])
            cells.append(f"{statistics.mean(accuracies):.3f}{spread} ({calibration:.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
