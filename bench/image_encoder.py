"""The image backbone: EfficientNet-Lite0 at 112 vs 224 px, speed against accuracy, to pick the default by evidence.

On Fashion-MNIST (Debian's ``dataset-fashion-mnist``; ``make install-images``), for each resolution and for two
input scalings (EfficientNet-Lite's ``(x - 127) / 128`` and ImageNet's per-channel mean/std):

- speed in process: images/s in batches (the encoder's best CPU batch: 4 images at 224 px, 16 at 112 px) and one
  image's latency (p50), decoding and resizing included;
- accuracy of logistic regression on the features with 8, 32 and 128 labelled images per class (10 classes,
  3 draws each), tested on 1,000 held-out test images; beside raw pixels + logistic regression.

    .venv/bin/python bench/image_encoder.py [--test 1000] [--draws 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUDGETS = (8, 32, 128)
IMAGENET = (np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=3)
    args = parser.parse_args()
    import torch

    from loopml.demo_data import load_fashion_mnist
    from loopml.encoders import IMAGE_ENCODERS, EfficientNetLiteEncoder

    pool, pool_labels = load_fashion_mnist("train", limit=max(BUDGETS) * 10 * 3)
    test, test_labels = load_fashion_mnist("test", limit=args.test)
    print(
        f"Fashion-MNIST: {len(pool)} training images to draw from, {len(test)} test images; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    rows = []
    for encoder_id in sorted(IMAGE_ENCODERS):
        for scaling in ("lite", "imagenet"):
            encoder = EfficientNetLiteEncoder(encoder_id, device="cpu")
            if scaling == "imagenet":
                encoder.MEAN, encoder.STD = (v.reshape(3, 1, 1).astype(np.float32) for v in IMAGENET)
            speed, single = measure_speed(encoder, test)
            started = time.perf_counter()
            train_x, test_x = encoder.encode(pool), encoder.encode(test)
            took = time.perf_counter() - started
            accuracy = budgets_accuracy(train_x, pool_labels, test_x, test_labels, args.draws)
            rows.append((f"{encoder_id} ({scaling} scaling)", speed, single, accuracy))
            print(
                f"{encoder_id} {scaling}: {speed:.0f} images/s, {single * 1000:.1f} ms per image; "
                f"embedded {len(pool) + len(test)} in {took:.1f} s; {accuracy}",
                flush=True,
            )
    raw = budgets_accuracy(pixels(pool), pool_labels, pixels(test), test_labels, args.draws)
    rows.append(("raw pixels + LR", float("nan"), float("nan"), raw))

    print(
        "\n| features | images/s (batched) | one image, ms (p50) | "
        + " | ".join(f"accuracy @{b}/class" for b in BUDGETS)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(BUDGETS))
    for name, speed, single, accuracy in rows:
        cells = " | ".join(f"{accuracy[b][0]:.3f} ± {accuracy[b][1]:.3f}" for b in BUDGETS)
        speed_cell = "-" if speed != speed else f"{speed:.0f}"
        single_cell = "-" if single != single else f"{single * 1000:.1f}"
        print(f"| {name} | {speed_cell} | {single_cell} | {cells} |")


def measure_speed(encoder, images: list[bytes]) -> tuple[float, float]:
    encoder.encode(images[:32])  # warm-up
    batch = images[:256]
    started = time.perf_counter()
    encoder.encode(batch, batch_size=32)
    rate = len(batch) / (time.perf_counter() - started)
    singles = []
    for image in images[:40]:
        t0 = time.perf_counter()
        encoder.encode([image], batch_size=1)
        singles.append(time.perf_counter() - t0)
    return rate, statistics.median(singles)


def pixels(images: list[bytes]) -> np.ndarray:
    import io

    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(b)), dtype=np.float32).ravel() / 255.0 for b in images])


def budgets_accuracy(
    train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str], draws: int
) -> dict[int, tuple[float, float]]:
    """Mean and standard deviation over ``draws`` random draws of logistic regression's test accuracy, trained on
    ``budget`` images per class."""
    from sklearn.linear_model import LogisticRegression

    labels = np.array(train_y)
    result = {}
    for budget in BUDGETS:
        scores = []
        for draw in range(draws):
            rng = np.random.default_rng(draw)
            chosen = np.concatenate(
                [rng.choice(np.flatnonzero(labels == c), size=budget, replace=False) for c in sorted(set(train_y))]
            )
            model = LogisticRegression(max_iter=3000).fit(train_x[chosen], labels[chosen])
            scores.append(float((model.predict(test_x) == np.array(test_y)).mean()))
        result[budget] = (statistics.mean(scores), statistics.pstdev(scores))
    return result


if __name__ == "__main__":
    main()
