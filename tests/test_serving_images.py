"""Image functions through the serving API's ASGI app: JSON (base64, data URIs) and multipart uploads, the
image formats and modes LoopML reads, and a clear 4xx for every bad image, with the service answering after.

A real tiny model (EfficientNet-Lite0 at 112 px + AutoML's embedding heads) tells light from dark images.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from loopml.apikeys import create_key
from loopml.config import Settings, get_settings
from loopml.deployments import DeploymentStore
from loopml.invocation_log import InvocationLog
from tests.serving_support import png, save_image_versions, save_versions

FUNCTION = "photo-tone"
INVOKE = f"/v1/functions/{FUNCTION}/invoke"
TEXT_INVOKE = "/v1/functions/review-sentiment/invoke"
MAX_IMAGE_BYTES = 200_000
MAX_IMAGE_PIXELS = 1_000_000


@dataclass
class Served:
    client: TestClient
    settings: Settings
    log: InvocationLog
    headers: dict[str, str]

    def post(self, body: dict[str, Any], path: str = INVOKE) -> Any:
        return self.client.post(path, json=body, headers=self.headers)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from serving.service import LoopML

    home = tmp_path_factory.mktemp("serving-images")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPML_HOME", str(home))
        mp.setenv("BENTOML_HOME", str(home / "bentoml"))
        mp.delenv("LOOPML_DATABASE_URL", raising=False)
        mp.setenv("LOOPML_MAX_IMAGE_BYTES", str(MAX_IMAGE_BYTES))
        mp.setenv("LOOPML_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
        mp.setenv("LOOPML_SERVING_GPU", "0")
        settings = get_settings()
        settings.ensure_dirs()
        store = DeploymentStore(settings)
        store.set_primary(FUNCTION, save_image_versions(settings, FUNCTION)[0], "test")
        store.set_primary("review-sentiment", save_versions(settings, "review-sentiment", 1)[0], "test")
        _, key = create_key(settings, "tests")
        with TestClient(LoopML.to_asgi()) as client:
            deadline = time.monotonic() + 120
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the service did not become ready"
                time.sleep(0.05)
            yield Served(client, settings, InvocationLog(settings), {"Authorization": f"Bearer {key}"})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encoded(level: int, fmt: str, mode: str = "RGB", size: tuple[int, int] = (40, 32)) -> bytes:
    return png(level, size=size, mode=mode, fmt=fmt, seed=level)


def test_an_image_function_answers_base64_data_uris_and_batches(served: Served) -> None:
    light, dark = png(235, seed=7), png(20, seed=8)
    one = served.post({"image": b64(light)})
    assert one.status_code == 200, one.text
    assert one.json()["label"] == "light" and one.json()["version"] == f"{FUNCTION}:v1"
    uri = served.post({"image": f"data:image/png;base64,{b64(dark)}"})
    assert uri.status_code == 200 and uri.json()["label"] == "dark"
    batch = served.post({"images": [b64(dark), b64(light), b64(dark)], "sticky_key": "user-1"})
    assert batch.status_code == 200, batch.text
    assert [r["label"] for r in batch.json()["results"]] == ["dark", "light", "dark"]


def test_formats_and_modes_are_read(served: Served) -> None:
    """PNG, JPEG, WebP and GIF (its first frame); grey, palette and transparent images are made RGB."""
    for fmt, mode in (("JPEG", "RGB"), ("WEBP", "RGB"), ("GIF", "P"), ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "LA")):
        response = served.post({"image": b64(encoded(25, fmt, mode))})
        assert response.status_code == 200, (fmt, mode, response.text)
        assert response.json()["label"] == "dark", (fmt, mode)


def test_multipart_uploads(served: Served) -> None:
    """One file field `image` gets one result; `images` a list in order; sticky_key rides along as a field."""
    one = served.client.post(INVOKE, files={"image": ("a.png", png(230), "image/png")}, headers=served.headers)
    assert one.status_code == 200, one.text
    assert one.json()["label"] == "light"
    several = served.client.post(
        INVOKE,
        files=[("images", ("d.png", png(15), "image/png")), ("images", ("l.jpg", encoded(235, "JPEG"), "image/jpeg"))],
        data={"sticky_key": "user-9"},
        headers=served.headers,
    )
    assert several.status_code == 200, several.text
    assert [r["label"] for r in several.json()["results"]] == ["dark", "light"]
    assert served.client.post(INVOKE, files={"image": ("a.png", png(230))}).status_code == 401  # a key first
    wrong = served.client.post(INVOKE, files={"picture": ("a.png", png(230), "image/png")}, headers=served.headers)
    assert wrong.status_code == 422 and "picture" in wrong.json()["detail"]


def test_bad_images_get_a_clear_4xx_and_the_service_keeps_answering(served: Served) -> None:
    from PIL import Image

    truncated = png(100, size=(64, 64))[:-40]
    big = io.BytesIO()
    Image.new("L", (2000, 1000)).save(big, format="PNG")  # 2,000,000 pixels: over the pixel limit, a small file
    cases = [
        ({"image": b64(b"this is not an image at all")}, 422, "not an image"),
        ({"image": "%%% not base64 %%%"}, 422, "base64"),
        ({"image": b64(truncated)}, 422, "truncated"),
        ({"image": b64(b"\x00" * (MAX_IMAGE_BYTES + 10))}, 413, "LOOPML_MAX_IMAGE_BYTES"),
        ({"image": b64(big.getvalue())}, 413, "LOOPML_MAX_IMAGE_PIXELS"),
        ({"images": [b64(png(30)), b64(b"nope")]}, 422, "images[1]"),
        ({"image": ""}, 422, "empty"),
        ({"image": b64(png(30)), "text": "both"}, 422, "exactly one"),
        ({"text": "a text"}, 422, "classifies images"),
    ]
    for body, status, words in cases:
        response = served.post(body)
        assert response.status_code == status, (body if len(str(body)) < 200 else words, response.text)
        payload = response.json()
        assert payload["error"] in ("invalid_request", "request_too_large")
        assert words in payload["detail"], (words, payload["detail"])
    upload = served.client.post(INVOKE, files={"image": ("x.png", truncated, "image/png")}, headers=served.headers)
    assert upload.status_code == 422 and "'x.png'" in upload.json()["detail"]
    reverse = served.post({"image": b64(png(30))}, path=TEXT_INVOKE)
    assert reverse.status_code == 422 and "classifies texts" in reverse.json()["detail"]
    assert served.post({"image": b64(png(240))}).json()["label"] == "light"  # still serving
    assert served.client.get("/v1/health").status_code == 200


def test_the_log_keeps_a_thumbnail_not_the_upload(served: Served) -> None:
    """An image invocation is logged with a JPEG thumbnail (a data URI), 224 pixels on its shorter side."""
    from loopml.images import decode_image

    photo = encoded(230, "JPEG", size=(900, 600))  # noisy: about 150 kB
    response = served.post({"image": b64(photo)})
    assert response.status_code == 200, response.text
    logged = served.log.get(response.json()["invocation_id"])["input_text"]
    assert logged.startswith("data:image/jpeg;base64,")
    assert len(logged) < len(b64(photo)) / 3
    thumbnail = decode_image(logged)
    assert thumbnail.size == (336, 224)  # the shorter side at the encoder's 224 pixels, the aspect kept


def test_the_openapi_document_states_both_bodies(served: Served) -> None:
    spec = served.client.get("/openapi.json", headers=served.headers).json()
    body = spec["paths"]["/v1/functions/{name}/invoke"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert {"image", "images"} <= set(body["multipart/form-data"]["schema"]["properties"])
    request = spec["components"]["schemas"]["InvokeRequest"]["properties"]
    assert {"text", "texts", "image", "images", "sticky_key"} <= set(request)
