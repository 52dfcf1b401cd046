"""The field's way to serve an encoder with BentoML: one ``@bentoml.api(batchable=True)`` route, BentoML's own
adaptive batching, no authentication, no invocation log, no routing. For ``bench/serving_load.py --field`` only:
the same MiniLM encoder and the same single-text load as LoopML's serving API.

    bentoml serve bench.field.bentoml_batching:FieldEncoder --port 3200
"""

from __future__ import annotations

import bentoml


@bentoml.service(workers=1)
class FieldEncoder:
    def __init__(self) -> None:
        from loopml.encoders import get_encoder

        self.encoder = get_encoder()

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=200)
    def classify(self, texts: list[str]) -> list[float]:
        """One score per text (the first embedding dimension: the work is the encoder's, as in LoopML)."""
        vectors = self.encoder.encode(texts, batch_size=64)
        return [float(v) for v in vectors[:, 0]]
