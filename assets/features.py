"""features: embeddings of the dataset's items, cached by (content hash, encoder)."""

import time

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, Output, asset

from assets.partitions import functions_partitions
from assets.resources import LoopMLResource
from loopml.features import FeatureCache


@asset(
    partitions_def=functions_partitions,
    group_name="train",
    io_manager_key="loopml_io",
    kinds={"onnx", "polars"},
)
def features(context: AssetExecutionContext, loopml: LoopMLResource, dataset: pl.DataFrame) -> Output[pl.DataFrame]:
    """The encoder's embedding of every dataset item; only items never embedded before are encoded."""
    from loopml.encoders import get_encoder

    settings = loopml.settings()
    spec = loopml.registry().get(context.partition_key)
    started = time.perf_counter()
    cache = FeatureCache(settings.features_dir, spec.encoder_id)
    hashes = dataset["content_hash"].to_list()
    texts = dataset["text"].fill_null("").to_list()
    encoder = get_encoder(spec.encoder_id)
    matrix, new = cache.embed(hashes, texts, lambda batch: encoder.encode(batch, progress=len(batch) > 256))
    frame = pl.DataFrame(
        {"content_hash": hashes, "embedding": matrix.astype(np.float32).tolist()},
        schema={"content_hash": pl.String, "embedding": pl.List(pl.Float32)},
    )
    return Output(
        frame,
        metadata={
            "encoder": spec.encoder_id,
            "items": len(hashes),
            "newly_embedded": new,
            "from_cache": len(hashes) - new,
            "embed_seconds": round(time.perf_counter() - started, 3),
        },
    )
