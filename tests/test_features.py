"""The embedding cache embeds each (content, encoder) once."""

import numpy as np

from loopml.features import FeatureCache


def test_only_new_items_are_encoded(tmp_path) -> None:
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    cache = FeatureCache(tmp_path, "toy")
    matrix, new = cache.embed(["h1", "h2", "h1"], ["a", "bb", "a"], encode)
    assert new == 2 and calls == [["a", "bb"]]
    assert matrix.shape == (3, 2) and matrix[0, 0] == 1 and matrix[1, 0] == 2 and matrix[2, 0] == 1
    matrix, new = FeatureCache(tmp_path, "toy").embed(["h2", "h3"], ["bb", "ccc"], encode)
    assert new == 1 and calls[-1] == ["ccc"]
    assert matrix[:, 0].tolist() == [2, 3]
    other, new = FeatureCache(tmp_path, "other-encoder").embed(["h1"], ["a"], encode)
    assert new == 1  # the cache is per encoder


def test_compaction_keeps_every_vector(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("loopml.features.COMPACT_AFTER_PARTS", 3)
    cache = FeatureCache(tmp_path, "toy")
    for i in range(6):
        cache.embed([f"h{i}"], [str(i)], lambda t: np.full((len(t), 2), float(t[0]), dtype=np.float32))
    assert len(list(cache.folder.glob("part-*.parquet"))) <= 4
    found = cache.lookup([f"h{i}" for i in range(6)])
    assert sorted(float(v[0]) for v in found.values()) == [0, 1, 2, 3, 4, 5]


def test_known_names_the_cached_hashes(tmp_path) -> None:
    cache = FeatureCache(tmp_path, "enc")
    assert cache.known(["a"]) == set()
    cache.store(["a", "b"], np.ones((2, 3), dtype=np.float32))
    cache.store(["c"], np.ones((1, 3), dtype=np.float32))
    assert cache.known(["a", "c", "z", "a"]) == {"a", "c"}
    assert cache.known([]) == set()
