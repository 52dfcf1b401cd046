"""Embedding cache keyed by (content hash, encoder id): retraining embeds only items not seen before.

Each encoder has a folder of parquet parts (``content_hash``, ``embedding``); new embeddings are appended as
a new part with a unique name, so concurrent runs never overwrite each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

COMPACT_AFTER_PARTS = 64


class FeatureCache:
    def __init__(self, root: Path, encoder_id: str) -> None:
        self.encoder_id = encoder_id
        self.folder = root / encoder_id
        self.folder.mkdir(parents=True, exist_ok=True)

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def lookup(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """The cached embeddings among ``hashes``."""
        parts = self._parts()
        if not parts or not hashes:
            return {}
        wanted = pl.DataFrame({"content_hash": list(set(hashes))})
        found = (
            pl.scan_parquet(parts)
            .join(wanted.lazy(), on="content_hash", how="semi")
            .unique(subset="content_hash", keep="first")
            .collect()
        )
        if found.is_empty():
            return {}
        matrix = np.asarray(found["embedding"].to_list(), dtype=np.float32)
        return dict(zip(found["content_hash"].to_list(), matrix, strict=True))

    def known(self, hashes: list[str]) -> set[str]:
        """Which of ``hashes`` are cached (reads the hash column only)."""
        parts = self._parts()
        if not parts or not hashes:
            return set()
        wanted = pl.DataFrame({"content_hash": list(set(hashes))})
        found = pl.scan_parquet(parts).select("content_hash").join(wanted.lazy(), on="content_hash", how="semi")
        return set(found.collect()["content_hash"].to_list())

    def store(self, hashes: list[str], embeddings: np.ndarray) -> None:
        if not hashes:
            return
        frame = pl.DataFrame(
            {"content_hash": hashes, "embedding": embeddings.astype(np.float32).tolist()},
            schema={"content_hash": pl.String, "embedding": pl.List(pl.Float32)},
        )
        tmp = self.folder / f".tmp-{uuid.uuid4().hex}.parquet"
        frame.write_parquet(tmp)
        tmp.rename(self.folder / f"part-{uuid.uuid4().hex}.parquet")

    def compact(self) -> None:
        """Merge the parts into one when there are many (reads stay fast)."""
        parts = self._parts()
        if len(parts) <= COMPACT_AFTER_PARTS:
            return
        merged = pl.read_parquet(parts).unique(subset="content_hash", keep="first")
        tmp = self.folder / f".tmp-{uuid.uuid4().hex}.parquet"
        merged.write_parquet(tmp)
        tmp.rename(self.folder / f"part-{uuid.uuid4().hex}.parquet")
        for part in parts:
            part.unlink(missing_ok=True)

    def embed(
        self, hashes: list[str], texts: list[str], encode: Callable[[list[str]], np.ndarray]
    ) -> tuple[np.ndarray, int]:
        """Embeddings for every item, in order; ``encode`` runs only on items not cached yet.

        Returns the (n, dim) matrix and the number of newly embedded items.
        """
        cached = self.lookup(hashes)
        missing: dict[str, str] = {}
        for h, text in zip(hashes, texts, strict=True):
            if h not in cached and h not in missing:
                missing[h] = text
        if missing:
            new_hashes = list(missing)
            new_vectors = encode([missing[h] for h in new_hashes])
            self.store(new_hashes, new_vectors)
            cached.update(zip(new_hashes, new_vectors, strict=True))
            self.compact()
        if not hashes:
            return np.zeros((0, 0), dtype=np.float32), 0
        return np.stack([cached[h] for h in hashes]).astype(np.float32), len(missing)


def write_unlabelled_items(path: Path, hashes: list[str]) -> None:
    """Record the content hashes of a function's unlabelled items (their embeddings are in the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}.parquet")
    pl.DataFrame({"content_hash": list(dict.fromkeys(hashes))}, schema={"content_hash": pl.String}).write_parquet(tmp)
    tmp.replace(path)


def read_unlabelled_items(path: Path) -> list[str]:
    """The content hashes recorded by :func:`write_unlabelled_items` (none when nothing was recorded)."""
    return pl.read_parquet(path)["content_hash"].to_list() if path.exists() else []


def unlabelled_embeddings(path: Path, cache: FeatureCache, exclude: set[str]) -> np.ndarray | None:
    """The cached embeddings of the unlabelled items recorded at ``path``, less those in ``exclude`` (items
    labelled since); ``None`` when none were recorded."""
    if not path.exists():
        return None
    hashes = [h for h in read_unlabelled_items(path) if h not in exclude]
    found = cache.lookup(hashes)
    return np.stack(list(found.values())) if found else None
