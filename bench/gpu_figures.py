"""GPU figures beside the CPU's (run by bench/gpu.sh on a CUDA machine; on a CPU-only machine it says so).

1. The image backbone alone (EfficientNet-Lite0, 224 px, half precision, channels-last): images/s of the network
   on ready tensors at batch 32/128/256 -- the "raw batched torch" the serving API is measured against;
2. text encoder throughput (texts/s, RottenTomatoes snippets): the int8 ONNX model on the CPU against the torch
   MiniLM on the GPU (fp16), and how close their vectors are -- the measurement that picks the GPU's text path;
3. the image deep tier: one fine-tuning epoch on 2,000 Fashion-MNIST images (3 augmented views), the frozen
   prefix's pass over them, and the memory one deep version adds.

    .venv/bin/python bench/gpu_figures.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def rate(fn, items: int, seconds: float = 3.0) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        done += items
    return done / (time.perf_counter() - started)


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure here (the CPU figures are in the README)")
        raise SystemExit(1)
    os.environ.setdefault("LOOPML_SERVING_GPU", "auto")
    from loopml.encoders import MiniLMOnnxEncoder, get_encoder

    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")

    encoder = get_encoder("efficientnet-lite0-224")
    rows = []
    for batch in (32, 128, 256):
        x = torch.randn(batch, 3, 224, 224, device="cuda").half().to(memory_format=torch.channels_last)

        def run(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                encoder._model.extract_features(x).mean(dim=(2, 3)).float().cpu()  # type: ignore[attr-defined]

        rows.append([str(batch), f"{rate(run, batch):.0f}"])
    table("EfficientNet-Lite0 224 px on the GPU, network only (fp16, channels-last)", ["batch", "images/s"], rows)

    from loopml.demo_data import load_rotten_tomatoes
    from loopml.minilm_torch import MiniLMTorchEncoder

    texts, _ = load_rotten_tomatoes()
    texts = texts[:2000]
    onnx = MiniLMOnnxEncoder()
    gpu = MiniLMTorchEncoder(device="cuda")
    cosine = float((onnx.encode(texts[:500]) * gpu.encode(texts[:500])).sum(axis=1).mean())
    table(
        "Text encoder (MiniLM-L6) throughput, 2,000 RottenTomatoes snippets",
        ["path", "batch", "texts/s"],
        [
            ["int8 ONNX, CPU", "16", f"{rate(lambda: onnx.encode(texts, batch_size=16), len(texts), 5):.0f}"],
            ["torch fp16, GPU", "256", f"{rate(lambda: gpu.encode(texts, batch_size=256), len(texts)):.0f}"],
        ],
    )
    print(f"mean cosine between the two paths' vectors: {cosine:.4f}")

    from loopml.automl.deep import DeepConfig, _fit_tail, prefix_maps
    from loopml.demo_data import load_fashion_mnist

    images, labels = load_fashion_mnist("train", limit=2000)
    label_set = sorted(set(labels))
    y = np.array([label_set.index(label) for label in labels])
    config = DeepConfig(epochs=1, views=3)
    started = time.perf_counter()
    maps = prefix_maps(encoder, images, config.train_blocks, views=config.views)  # type: ignore[arg-type]
    prefix = time.perf_counter() - started
    _fit_tail(encoder._model, maps, y, len(label_set), config, 600)  # type: ignore[attr-defined]  # warm
    config.epochs = 5
    started = time.perf_counter()
    tail, epochs = _fit_tail(encoder._model, maps, y, len(label_set), config, 600)  # type: ignore[attr-defined]
    per_epoch = (time.perf_counter() - started) / max(1, config.epochs)
    table(
        "Image deep tier on the GPU, 2,000 images x 3 views",
        ["frozen prefix pass", "fine-tuning epoch", "memory per version"],
        [[f"{prefix:.1f} s", f"{per_epoch:.2f} s", f"{tail.parameter_bytes() / 1e6:.1f} MB"]],
    )


if __name__ == "__main__":
    main()
