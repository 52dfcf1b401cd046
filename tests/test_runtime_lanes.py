"""The model runtime's scoring lanes and its TF-IDF prefetch, with real tiny models in a temporary store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from loopml.config import Settings, get_settings
from loopml.deployments import DeploymentStore
from loopml.encoders import get_encoder, register_encoder
from loopml.functions import FunctionRegistry, FunctionSpec
from tests.serving_support import LABELS, save_versions

FUNCTION = "review-sentiment"
GATED = "gated-encoder"


class GatedEncoder:
    """MiniLM behind a two-party barrier: a call returns only once a second call is inside it too."""

    dim = 384

    def __init__(self, encoder_id: str) -> None:
        self.id = encoder_id
        self.barrier = threading.Barrier(2, timeout=5)
        self.entered = threading.Event()

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.entered.set()
        self.barrier.wait()
        return get_encoder().encode(texts, batch_size=batch_size)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path))
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.delenv("LOOPML_DATABASE_URL", raising=False)
    settings = get_settings()
    settings.ensure_dirs()
    tags = save_versions(settings, FUNCTION, 1)
    DeploymentStore(settings).set_primary(FUNCTION, tags[0], "test")
    yield settings


@pytest.mark.parametrize("lanes", [1, 2])
def test_concurrent_requests_are_scored_side_by_side(settings: Settings, lanes: int) -> None:
    from serving.runtime import ModelRuntime

    gated = GatedEncoder(GATED)
    register_encoder(GATED, lambda _id: gated)
    FunctionRegistry(settings).add(FunctionSpec("gated", "text", list(LABELS), GATED))
    tag = save_versions(settings, "gated", 1)[0]
    DeploymentStore(settings).set_primary("gated", tag, "test")
    runtime = ModelRuntime(settings, lanes=lanes, warm_encoders=False)
    runtime.start(wait=True, timeout=60)
    try:
        serving = runtime.resolve("gated")
        first = runtime.submit(serving, ["great movie, loved it"])
        assert gated.entered.wait(5)  # the first request is inside the encoder before the second arrives
        second = runtime.submit(serving, ["dull and lifeless"])
        if lanes == 2:  # a second lane takes the second request while the first is still encoding
            assert first.result(10)[0].label == "positive"
            assert second.result(10)[0].label == "negative"
        else:  # one lane: the second request waits, so the barrier breaks; the runtime keeps serving
            with pytest.raises(threading.BrokenBarrierError):
                first.result(10)
            with pytest.raises(threading.BrokenBarrierError):
                second.result(10)
        assert runtime.predict(FUNCTION, ["I enjoyed every minute"])[0].label == "positive"
    finally:
        runtime.stop()
        register_encoder(GATED, GatedEncoder)


def test_prefetched_tfidf_rows_are_kept_per_batch() -> None:
    from serving.runtime import _PrefetchedVectorizer

    class Counting:
        calls = 0

        def transform(self, texts: list[str]) -> list[str]:
            Counting.calls += 1
            return [t.upper() for t in texts]

    vectorizer = _PrefetchedVectorizer(Counting())
    vectorizer.prefetch(["a", "b"])
    vectorizer.prefetch(["c"])  # another lane's batch, computed ahead too
    assert Counting.calls == 2
    assert vectorizer.transform(["c"]) == ["C"] and vectorizer.transform(list(["a", "b"])) == ["A", "B"]
    assert Counting.calls == 2  # both answered from the rows computed ahead
    assert vectorizer.transform(["a", "b"]) == ["A", "B"] and Counting.calls == 3  # used once, then computed
    for i in range(_PrefetchedVectorizer.KEEP + 5):  # never asked for: the oldest are dropped
        vectorizer.prefetch([str(i)])
    assert len(vectorizer._ahead) == _PrefetchedVectorizer.KEEP


def test_functions_on_different_encoders_are_served_side_by_side(settings: Settings) -> None:
    """A function created with ``--encoder e5-small-q4`` is scored through e5, next to a MiniLM function."""
    from loopml.automl import run_automl
    from loopml.encoders import E5_SMALL_ENCODER
    from serving.model_store import save_model
    from serving.runtime import ModelRuntime
    from tests.serving_support import NEGATIVE, POSITIVE

    texts = POSITIVE + NEGATIVE
    labels = ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)
    embeddings = get_encoder(E5_SMALL_ENCODER).encode(texts)
    model = run_automl(texts, embeddings, labels, list(LABELS), folds=3, encoder_id=E5_SMALL_ENCODER).model
    FunctionRegistry(settings).add(FunctionSpec("e5-sentiment", "text", list(LABELS), E5_SMALL_ENCODER))
    tag = save_model(settings, "e5-sentiment", model, {"note": "test"}).tag
    DeploymentStore(settings).set_primary("e5-sentiment", tag, "test")
    runtime = ModelRuntime(settings, lanes=2, warm_encoders=False)
    runtime.start(wait=True, timeout=60)
    try:
        assert runtime.resolve("e5-sentiment").encoder_id == E5_SMALL_ENCODER
        answers = runtime.predict("e5-sentiment", ["what a lovely, touching film", "awful, boring rubbish"])
        assert [a.label for a in answers] == ["positive", "negative"]
        assert runtime.predict(FUNCTION, ["I enjoyed every minute"])[0].label == "positive"
    finally:
        runtime.stop()


def test_the_model_stack_warms_up_in_the_background_before_any_deployment(settings: Settings) -> None:
    """A fresh platform has no function yet: the runtime is ready at once and warms the model stack (torch,
    Lightning, the default encoder) meanwhile, so a brand-new function's first version does not pay for it. A
    warm-up that fails only logs; the runtime keeps serving."""
    from serving.runtime import ModelRuntime

    release, calls = threading.Event(), []

    def slow_warm_up() -> None:
        calls.append("warm")
        assert release.wait(30)

    runtime = ModelRuntime(settings, lanes=1, warm_up=slow_warm_up)
    runtime.start(wait=True, timeout=60)  # ready while the warm-up still runs
    try:
        assert runtime.ready and not runtime.warmed.is_set()
        release.set()
        assert runtime.warmed.wait(30) and calls == ["warm"]
    finally:
        runtime.stop()

    def broken_warm_up() -> None:
        raise RuntimeError("no encoder today")

    failing = ModelRuntime(settings, lanes=1, warm_up=broken_warm_up)
    failing.start(wait=True, timeout=60)
    try:
        assert failing.warmed.wait(30) and failing.ready
    finally:
        failing.stop()
    assert ModelRuntime(settings, lanes=1, warm_encoders=False)._warm_up is None
