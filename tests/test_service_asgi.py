"""The LoopML BentoML service through its ASGI app (``LoopML.to_asgi()`` + Starlette's TestClient).

Real tiny models (MiniLM embeddings + AutoML) in a temporary model store; deployments changed through
``DeploymentStore`` while the app runs, as the pipeline and the canary controller would.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from loopml.apikeys import RIGHTS, create_key, revoke_key
from loopml.config import Settings, get_settings
from loopml.deployments import DeploymentStore
from loopml.invocation_log import InvocationLog
from tests.serving_support import png, register, save_image_versions, save_versions, serving_asgi_app

FUNCTION = "review-sentiment"
INVOKE = f"/v1/functions/{FUNCTION}/invoke"
MAX_TEXT_BYTES = 5000
MAX_BATCH = 200
IMAGE_FUNCTION = "photo-tone"  # light vs dark images (EfficientNet-Lite0 at 112 px + AutoML)
IMAGE_INVOKE = f"/v1/functions/{IMAGE_FUNCTION}/invoke"
MAX_IMAGE_BYTES = 200_000
MAX_IMAGE_PIXELS = 1_000_000


@dataclass
class Served:
    client: TestClient
    settings: Settings
    store: DeploymentStore
    log: InvocationLog
    tags: list[str]
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def invoke(self, body: dict[str, Any], function: str = FUNCTION) -> Any:
        response = self.client.post(f"/v1/functions/{function}/invoke", json=body, headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_revision(self, timeout: float = 2.0) -> float:
        """Wait until the app serves the store's newest revision; returns how long it took."""
        target = self.store.revision()
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            body = self.client.get("/v1/functions", headers=self.headers).json()
            if body["revision"] >= target:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"revision {target} was not served within {timeout} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("serving-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPML_HOME", str(home))
        mp.setenv("BENTOML_HOME", str(home / "bentoml"))
        mp.delenv("LOOPML_DATABASE_URL", raising=False)
        mp.setenv("LOOPML_MAX_TEXT_BYTES", str(MAX_TEXT_BYTES))
        mp.setenv("LOOPML_MAX_BATCH", str(MAX_BATCH))
        mp.setenv("LOOPML_MAX_IMAGE_BYTES", str(MAX_IMAGE_BYTES))
        mp.setenv("LOOPML_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
        mp.setenv("LOOPML_SERVING_GPU", "0")
        settings = get_settings()
        settings.ensure_dirs()
        tags = save_versions(settings, FUNCTION, 3)
        register(settings, "news-topic", ["business", "sport", "tech"])  # registered, never deployed
        store = DeploymentStore(settings)
        store.set_primary(FUNCTION, tags[0], "test")
        store.set_primary(IMAGE_FUNCTION, save_image_versions(settings, IMAGE_FUNCTION)[0], "test")
        key_id, key = create_key(settings, "tests", rights=RIGHTS)
        reports = home / "reports" / FUNCTION  # a drift report, as the monitoring asset leaves it
        reports.mkdir(parents=True)
        (reports / "drift-20261206T000000.html").write_text("<html>drift</html>", encoding="utf-8")
        (reports / "latest.html").symlink_to("drift-20261206T000000.html")
        with TestClient(serving_asgi_app()) as client:
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the service did not become ready"
                time.sleep(0.05)
            yield Served(client, settings, store, InvocationLog(settings), tags, key, key_id)


def deploy(served: Served, primary: str, canary: str | None = None, weight: float = 0.0) -> None:
    served.store.set_primary(FUNCTION, primary, "test")
    if canary is not None:
        served.store.start_canary(FUNCTION, canary, weight, "test")
    served.wait_for_revision()


# --- authentication ---------------------------------------------------------------------------------
def _protected_requests(served: Served, invocation_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every documented operation (from the OpenAPI document) but the health probe."""
    spec = served.client.get("/openapi.json").json()
    requests: list[tuple[str, str, dict[str, Any] | None]] = []
    for template, operations in spec["paths"].items():
        if template == "/v1/health":
            continue
        path = template.replace("{name}", FUNCTION).replace("{invocation_id}", invocation_id)
        path = path.replace("{report}", "latest.html")  # the served fixture writes one
        for method in operations:
            body = {"text": "hello"} if "invoke" in path else {"flagged": True} if "feedback" in path else None
            requests.append((method.upper(), path, body))
    return requests


def test_every_endpoint_but_the_probes_needs_a_key(served: Served) -> None:
    invocation_id = served.invoke({"text": "fine"})["invocation_id"]
    requests = _protected_requests(served, invocation_id)
    assert {path for _, path, _ in requests} >= {
        INVOKE,
        f"/v1/invocations/{invocation_id}/feedback",
        "/v1/functions",
        f"/v1/functions/{FUNCTION}",
    }
    for method, path, body in requests:
        for headers in (
            {},
            {"Authorization": "Bearer lml_0123456789abcdef_" + "x" * 43},
            {"X-API-Key": "nope"},
            {"Authorization": f"Basic {served.key}"},
        ):
            response = served.client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"] == "unauthorized"
            assert "API key" in response.json()["detail"]
            assert response.headers["www-authenticate"].startswith("Bearer")
        for headers in (served.headers, {"X-API-Key": served.key}, {"authorization": f"bearer {served.key}"}):
            response = served.client.request(method, path, json=body, headers=headers)
            assert response.status_code in (200, 201, 202), (method, path, response.text)
    # BentoML's own /metrics too (answering it needs the real server's metrics setup: see test_serve_e2e)
    assert served.client.get("/metrics").status_code == 401
    for path in ("/healthz", "/livez", "/readyz", "/v1/health"):
        assert served.client.get(path).status_code == 200, path


def test_websockets_without_a_key_are_refused(served: Served) -> None:
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect):
        with served.client.websocket_connect("/v1/anything") as socket:
            socket.receive_text()


def test_a_revoked_key_is_refused_within_a_second(served: Served) -> None:
    key_id, key = create_key(served.settings, "short-lived")
    headers = {"X-API-Key": key}
    assert served.client.get("/v1/functions", headers=headers).status_code == 200
    revoke_key(served.settings, key_id)
    started = time.monotonic()
    while served.client.get("/v1/functions", headers=headers).status_code != 401:
        assert time.monotonic() - started < 1.5, "a revoked key still worked after 1.5 s"
        time.sleep(0.05)


def test_the_api_is_documented_with_examples(served: Served) -> None:
    spec = served.client.get("/openapi.json").json()
    invoke = spec["paths"]["/v1/functions/{name}/invoke"]["post"]
    examples = invoke["requestBody"]["content"]["application/json"]["examples"]
    assert {"one", "batch", "sticky"} <= set(examples)
    assert {"401", "404", "413", "422", "503"} <= set(invoke["responses"])
    assert "/v1/invocations/{invocation_id}/feedback" in spec["paths"]
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    page = served.client.get("/docs")
    assert page.status_code == 200 and "/static_content/swagger-ui-bundle.js" in page.text
    assert served.client.get("/static_content/swagger-ui-bundle.js").status_code == 200
    bentoml_spec = served.client.get("/docs.json").json()  # BentoML's merged document
    assert "/v1/functions/{name}/invoke" in bentoml_spec["paths"]


# --- answers ------------------------------------------------------------------------------------------
def test_one_text_and_a_batch_are_answered_and_logged(served: Served) -> None:
    deploy(served, served.tags[0], served.tags[1], 0.5)
    one = served.invoke({"text": "What a wonderful, moving film."})
    assert one["label"] == "positive" and one["function"] == FUNCTION
    assert set(one["scores"]) == {"positive", "negative"}
    assert abs(sum(one["scores"].values()) - 1.0) < 1e-6
    assert one["confidence"] == max(one["scores"].values()) == one["scores"][one["label"]]
    assert one["version"] in served.tags[:2] and one["role"] in ("primary", "canary")
    batch = served.invoke({"texts": ["Loved every minute.", "Dull, boring and far too long."]})
    assert [r["label"] for r in batch["results"]] == ["positive", "negative"]
    ids = [one["invocation_id"]] + [r["invocation_id"] for r in batch["results"]]
    assert len(set(ids)) == 3
    stored = served.log.get(ids[1])
    assert stored is not None and stored["key_id"] == served.key_id
    assert set(stored["scores"]) == set(served.tags[:2])  # the canary scored it too (shadow)
    assert stored["answered_by"] == batch["results"][0]["version"]
    assert stored["embedding"].shape == (384,) and stored["input_text"] == "Loved every minute."


def test_routing_shares_follow_the_canary_weight(served: Served) -> None:
    deploy(served, served.tags[0], served.tags[1], 0.25)
    versions: Counter[str] = Counter()
    for start in range(0, 2000, 100):  # 2,000 items, each routed on its own
        body = served.invoke({"texts": [f"review number {start + i}" for i in range(100)]})
        versions.update(r["version"] for r in body["results"])
    share = versions[served.tags[1]] / 2000
    assert abs(share - 0.25) < 0.04, versions  # about 4 standard deviations
    assert set(versions) == set(served.tags[:2])
    singles = Counter(served.invoke({"text": f"single {i}"})["role"] for i in range(40))
    assert set(singles) <= {"primary", "canary"}


def test_a_sticky_key_always_gets_the_same_version(served: Served) -> None:
    deploy(served, served.tags[0], served.tags[1], 0.5)
    for key in ("user-1", "user-2", "user-3"):
        seen = {served.invoke({"text": f"call {i}", "sticky_key": key})["version"] for i in range(15)}
        assert len(seen) == 1, (key, seen)
        batch = served.invoke({"texts": ["a", "b", "c", "d"], "sticky_key": key})
        assert {r["version"] for r in batch["results"]} == seen
    canary = sum(served.invoke({"text": "x", "sticky_key": f"k{i}"})["role"] == "canary" for i in range(300))
    assert 0.40 < canary / 300 < 0.60, canary


def test_hot_reload_changes_the_served_version_within_a_second(served: Served) -> None:
    deploy(served, served.tags[0])
    assert served.invoke({"text": "hello"})["version"] == served.tags[0]
    served.store.set_primary(FUNCTION, served.tags[2], "hot reload test")
    started = time.monotonic()
    while served.invoke({"text": "hello"})["version"] != served.tags[2]:
        assert time.monotonic() - started < 1.5, "the new primary was not served within 1.5 s"
        time.sleep(0.02)
    assert {served.invoke({"text": f"after {i}"})["version"] for i in range(10)} == {served.tags[2]}


def test_promotion_and_rollback_are_visible_in_answers(served: Served) -> None:
    deploy(served, served.tags[0], served.tags[1], 1.0)
    assert {served.invoke({"text": f"c {i}"})["role"] for i in range(5)} == {"canary"}
    served.store.promote(FUNCTION, "canary is better")
    served.wait_for_revision()
    answers = [served.invoke({"text": f"p {i}"}) for i in range(10)]
    assert {(a["version"], a["role"]) for a in answers} == {(served.tags[1], "primary")}
    served.store.start_canary(FUNCTION, served.tags[2], 0.5, "next candidate")
    served.wait_for_revision()
    served.store.rollback(FUNCTION, "canary is worse")
    served.wait_for_revision()
    answers = [served.invoke({"text": f"r {i}"}) for i in range(20)]
    assert {(a["version"], a["role"]) for a in answers} == {(served.tags[1], "primary")}
    stored = served.log.get(answers[0]["invocation_id"])
    assert stored is not None and set(stored["scores"]) == {served.tags[1]}  # no shadow after rollback


def test_functions_are_listed_with_versions_and_weights(served: Served) -> None:
    deploy(served, served.tags[0], served.tags[1], 0.25)
    body = served.client.get("/v1/functions", headers=served.headers).json()
    by_name = {f["name"]: f for f in body["functions"]}
    sentiment = by_name[FUNCTION]
    assert sentiment["status"] == "canary"
    assert sentiment["primary"] == {
        "version": served.tags[0],
        "weight": 0.75,
        "labels": ["positive", "negative"],
    }
    assert sentiment["canary"]["version"] == served.tags[1] and sentiment["canary"]["weight"] == 0.25
    assert by_name["news-topic"]["status"] == "not_deployed"
    one = served.client.get(f"/v1/functions/{FUNCTION}", headers=served.headers).json()
    assert one == sentiment
    missing = served.client.get("/v1/functions/nope", headers=served.headers)
    assert missing.status_code == 404 and "review-sentiment" in missing.json()["detail"]
    health = served.client.get("/v1/health").json()
    assert health["ready"] is True and health["device"] == "cpu" and health["revision"] == body["revision"]


# --- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": 42}, "text"),
        ({"text": None, "texts": None}, "text"),
        ({}, "text"),
        ({"text": ""}, "text"),
        ({"text": "   \n"}, "text"),
        ({"texts": []}, "texts"),
        ({"texts": ["ok", ""]}, "texts[1]"),
        ({"texts": ["ok", 7]}, "texts[1]"),
        ({"texts": "not a list"}, "texts"),
        ({"text": "a", "texts": ["b"]}, "texts"),
        ({"txt": "typo"}, "txt"),
        ({"text": "ok", "sticky_key": "k" * 129}, "sticky_key"),
        ({"text": "ok", "sticky_key": 5}, "sticky_key"),
    ],
)
def test_invalid_bodies_get_422_naming_the_field(served: Served, body: dict[str, Any], field: str) -> None:
    response = served.client.post(INVOKE, json=body, headers=served.headers)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["error"] == "invalid_request"
    assert field in payload["detail"], payload


def test_bodies_that_are_not_json_objects_get_422(served: Served) -> None:
    for raw in (b"{not json", b"[1, 2]", b"null", b"42", b'"text"', b""):
        response = served.client.post(
            INVOKE, content=raw, headers={**served.headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 422, (raw, response.text)


def test_oversized_texts_and_batches_get_413(served: Served) -> None:
    deploy(served, served.tags[0])
    too_long = "é" * (MAX_TEXT_BYTES // 2 + 1)  # 2 bytes each in UTF-8: over the limit in bytes
    response = served.client.post(INVOKE, json={"text": too_long}, headers=served.headers)
    assert response.status_code == 413 and "LOOPML_MAX_TEXT_BYTES" in response.json()["detail"]
    response = served.client.post(INVOKE, json={"texts": ["fine", too_long]}, headers=served.headers)
    assert response.status_code == 413 and "texts[1]" in response.json()["detail"]
    response = served.client.post(INVOKE, json={"texts": ["x"] * (MAX_BATCH + 1)}, headers=served.headers)
    assert response.status_code == 413 and "LOOPML_MAX_BATCH" in response.json()["detail"]
    assert served.invoke({"text": "é" * (MAX_TEXT_BYTES // 2)})["label"]  # exactly at the limit: fine
    assert len(served.invoke({"texts": ["x"] * MAX_BATCH})["results"]) == MAX_BATCH


def test_unknown_and_undeployed_functions(served: Served) -> None:
    response = served.client.post("/v1/functions/no-such-thing/invoke", json={"text": "x"}, headers=served.headers)
    assert response.status_code == 404
    assert "review-sentiment" in response.json()["detail"] and "news-topic" in response.json()["detail"]
    response = served.client.post("/v1/functions/news-topic/invoke", json={"text": "x"}, headers=served.headers)
    assert response.status_code == 503 and "no deployed model version" in response.json()["detail"]
    register(served.settings, "brand-new", ["yes", "no"])  # registered after the last reload
    response = served.client.post("/v1/functions/brand-new/invoke", json={"text": "x"}, headers=served.headers)
    assert response.status_code == 503


def test_failed_requests_are_logged_and_answered_ones_are_not(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="loopml.serving.access"):
        served.invoke({"text": "A fine film."})
        assert served.client.post(INVOKE, json={"text": "x"}).status_code == 401
        missing = served.client.post("/v1/functions/no-such-thing/invoke", json={"text": "x"}, headers=served.headers)
        assert missing.status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "loopml.serving.access"]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"POST {INVOKE} -> 401") and lines[0].endswith("(key -)")
    assert lines[1].startswith("POST /v1/functions/no-such-thing/invoke -> 404")
    assert lines[1].endswith(f"(key {served.key_id})")


def test_odd_requests_never_give_a_500(served: Served) -> None:
    odd: list[tuple[str, str, Any]] = [
        ("POST", INVOKE, {"text": {"nested": True}}),
        ("POST", INVOKE, {"texts": [[["deep"]]]}),
        ("POST", INVOKE, {"text": "\x00\ud7ff control \u202e"}),
        ("POST", "/v1/functions/UPPER%20case/invoke", {"text": "x"}),
        ("POST", "/v1/functions/" + "x" * 300 + "/invoke", {"text": "x"}),
        ("GET", INVOKE, None),
        ("POST", "/v1/invocations/" + "x" * 100 + "/feedback", {"flagged": True}),
        ("POST", "/v1/invocations/abc/feedback", {"flagged": "yes"}),
        ("POST", "/v1/invocations/abc/feedback", [1, 2]),
        ("DELETE", "/v1/functions", None),
    ]
    for method, path, body in odd:
        response = served.client.request(method, path, json=body, headers=served.headers)
        assert response.status_code < 500, (method, path, response.status_code, response.text)
    assert served.invoke({"text": "still alive"})["label"]


# --- feedback -------------------------------------------------------------------------------------------
def test_feedback_is_validated_and_recorded(served: Served) -> None:
    deploy(served, served.tags[0])
    answer = served.invoke({"text": "A superb film."})
    url = f"/v1/invocations/{answer['invocation_id']}/feedback"
    response = served.client.post(url, json={"flagged": True, "true_label": "negative"}, headers=served.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["function"] == FUNCTION and body["answered_by"] == served.tags[0]
    assert body["answered_label"] == answer["label"] and body["true_label"] == "negative"
    wrong_label = served.client.post(url, json={"true_label": "neutral"}, headers=served.headers)
    assert wrong_label.status_code == 422 and "positive, negative" in wrong_label.json()["detail"]
    empty = served.client.post(url, json={}, headers=served.headers)
    assert empty.status_code == 422 and "flagged" in empty.json()["detail"]
    bad_type = served.client.post(url, json={"flagged": "very"}, headers=served.headers)
    assert bad_type.status_code == 422 and "flagged" in bad_type.json()["detail"]
    unknown = served.client.post("/v1/invocations/nope/feedback", json={"flagged": True}, headers=served.headers)
    assert unknown.status_code == 404
    frame = served.log.feedback(FUNCTION)
    mine = frame.filter(frame["invocation_id"] == answer["invocation_id"])
    assert mine.height == 1 and mine["key_id"][0] == served.key_id


def test_readiness_follows_the_runtime(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.runtime import ModelRuntime

    assert served.client.get("/readyz").status_code == 200
    monkeypatch.setattr(ModelRuntime, "ready", property(lambda self: False))  # as before the first load
    assert served.client.get("/livez").status_code == 200
    assert served.client.get("/readyz").status_code == 503
    assert served.client.get("/v1/health").json()["ready"] is False
    response = served.client.post(INVOKE, json={"text": "x"}, headers=served.headers)
    assert response.status_code == 503 and "loading" in response.json()["detail"]
    monkeypatch.undo()
    assert served.client.get("/readyz").status_code == 200


def test_the_runtime_is_ready_only_after_loading_the_deployments(served: Served) -> None:
    from serving.runtime import ModelRuntime, RuntimeNotReadyError

    runtime = ModelRuntime(served.settings)
    assert not runtime.ready
    with pytest.raises(RuntimeNotReadyError):
        runtime.resolve(FUNCTION)
    runtime.start(wait=True, timeout=60)
    try:
        assert runtime.ready and runtime.snapshot.revision == served.store.revision()
        answers = runtime.predict(FUNCTION, ["Lovely.", "Awful."])
        assert [a.label for a in answers] == ["positive", "negative"]
    finally:
        runtime.stop()


def test_the_label_studio_hook_signals_the_annotation_sensor(served: Served) -> None:
    """Label Studio's webhook posts its event (3.5 KB of JSON, not read) with the key LoopML registered; the
    route leaves the signal the annotation sensor reads every second."""
    from loopml.loop_signals import annotation_signals

    before = annotation_signals(served.settings.run_dir).get("brand-new", 0.0)
    event = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": []}, "project": {"id": 7}}
    response = served.client.post("/v1/hooks/labelstudio/brand-new", json=event, headers=served.headers)
    assert response.status_code == 202 and response.json() == {"function": "brand-new", "accepted": True}
    assert annotation_signals(served.settings.run_dir)["brand-new"] > before
    assert served.client.post("/v1/hooks/labelstudio/Not A Name", json=event, headers=served.headers).status_code == 422


# --- image functions: JSON (base64, data URIs), multipart uploads, formats and bad images ---------------------
def post(served: Served, body: dict[str, Any], path: str = IMAGE_INVOKE) -> Any:
    return served.client.post(path, json=body, headers=served.headers)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encoded(level: int, fmt: str, mode: str = "RGB", size: tuple[int, int] = (40, 32)) -> bytes:
    return png(level, size=size, mode=mode, fmt=fmt, seed=level)


def test_an_image_function_answers_base64_data_uris_and_batches(served: Served) -> None:
    light, dark = png(235, seed=7), png(20, seed=8)
    one = post(served, {"image": b64(light)})
    assert one.status_code == 200, one.text
    assert one.json()["label"] == "light" and one.json()["version"] == f"{IMAGE_FUNCTION}:v1"
    uri = post(served, {"image": f"data:image/png;base64,{b64(dark)}"})
    assert uri.status_code == 200 and uri.json()["label"] == "dark"
    batch = post(served, {"images": [b64(dark), b64(light), b64(dark)], "sticky_key": "user-1"})
    assert batch.status_code == 200, batch.text
    assert [r["label"] for r in batch.json()["results"]] == ["dark", "light", "dark"]


def test_formats_and_modes_are_read(served: Served) -> None:
    """PNG, JPEG, WebP and GIF (its first frame); grey, palette and transparent images are made RGB."""
    for fmt, mode in (("JPEG", "RGB"), ("WEBP", "RGB"), ("GIF", "P"), ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "LA")):
        response = post(served, {"image": b64(encoded(25, fmt, mode))})
        assert response.status_code == 200, (fmt, mode, response.text)
        assert response.json()["label"] == "dark", (fmt, mode)


def test_multipart_uploads(served: Served) -> None:
    """One file field `image` gets one result; `images` a list in order; sticky_key rides along as a field."""
    one = served.client.post(IMAGE_INVOKE, files={"image": ("a.png", png(230), "image/png")}, headers=served.headers)
    assert one.status_code == 200, one.text
    assert one.json()["label"] == "light"
    several = served.client.post(
        IMAGE_INVOKE,
        files=[("images", ("d.png", png(15), "image/png")), ("images", ("l.jpg", encoded(235, "JPEG"), "image/jpeg"))],
        data={"sticky_key": "user-9"},
        headers=served.headers,
    )
    assert several.status_code == 200, several.text
    assert [r["label"] for r in several.json()["results"]] == ["dark", "light"]
    assert served.client.post(IMAGE_INVOKE, files={"image": ("a.png", png(230))}).status_code == 401  # a key first
    wrong = served.client.post(
        IMAGE_INVOKE, files={"picture": ("a.png", png(230), "image/png")}, headers=served.headers
    )
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
        response = post(served, body)
        assert response.status_code == status, (body if len(str(body)) < 200 else words, response.text)
        payload = response.json()
        assert payload["error"] in ("invalid_request", "request_too_large")
        assert words in payload["detail"], (words, payload["detail"])
    upload = served.client.post(
        IMAGE_INVOKE, files={"image": ("x.png", truncated, "image/png")}, headers=served.headers
    )
    assert upload.status_code == 422 and "'x.png'" in upload.json()["detail"]
    reverse = post(served, {"image": b64(png(30))}, path=INVOKE)
    assert reverse.status_code == 422 and "classifies texts" in reverse.json()["detail"]
    assert post(served, {"image": b64(png(240))}).json()["label"] == "light"  # still serving
    assert served.client.get("/v1/health").status_code == 200


def test_the_log_keeps_a_thumbnail_not_the_upload(served: Served) -> None:
    """An image invocation is logged with a JPEG thumbnail (a data URI), 224 pixels on its shorter side."""
    from loopml.images import decode_image

    photo = encoded(230, "JPEG", size=(900, 600))  # noisy: about 150 kB
    response = post(served, {"image": b64(photo)})
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


def test_a_deep_tier_version_serves_as_a_canary_beside_the_automl_primary(served: Served) -> None:
    """A fine-tuned tail (the image deep tier) is a version like any other: it hot-loads as the canary, answers
    the share of traffic it is given, is logged with its own tag, and rolls back."""
    from loopml.automl.deep import DeepConfig, fit_deep_candidate
    from loopml.encoders import get_encoder
    from serving.model_store import save_model
    from tests.serving_support import IMAGE_ENCODER

    images = [png(235 - 3 * i, seed=i) for i in range(8)] + [png(20 + 3 * i, seed=100 + i) for i in range(8)]
    labels = ["light"] * 8 + ["dark"] * 8
    config = DeepConfig(epochs=4, views=2, folds=2, batch_size=16, time_budget_s=120)
    deep = fit_deep_candidate(get_encoder(IMAGE_ENCODER), images, labels, ["light", "dark"], config).model
    tag = save_model(served.settings, IMAGE_FUNCTION, deep, {"winner": deep.candidate}).tag  # type: ignore[arg-type]
    primary = served.store.get(IMAGE_FUNCTION).primary_tag
    served.store.start_canary(IMAGE_FUNCTION, tag, 1.0, "test: all traffic to the deep version")
    served.wait_for_revision(timeout=30)
    try:
        batch = post(served, {"images": [b64(png(18, seed=3)), b64(png(240, seed=4))]})
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        assert [r["label"] for r in results] == ["dark", "light"]
        assert {r["version"] for r in results} == {tag}
        logged = served.log.get(results[0]["invocation_id"])
        assert logged is not None and logged["answered_by"] == tag
    finally:
        served.store.rollback(IMAGE_FUNCTION, "test done")
        served.wait_for_revision(timeout=30)
    after = post(served, {"image": b64(png(240, seed=5))})
    assert after.status_code == 200 and after.json()["version"] == primary


def test_a_text_deep_tier_version_serves_as_a_canary_beside_the_automl_primary(served: Served) -> None:
    """A fine-tuned MiniLM tail (the text deep tier) is a version like any other: it hot-loads as the canary,
    answers the texts it is given itself (no pooled embeddings), is logged with its own tag, and rolls back."""
    from loopml.automl.text_deep import TextDeepClassifier, fit_text_deep
    from serving.model_store import load_classifier, save_model
    from tests.serving_support import LABELS, NEGATIVE, POSITIVE

    texts, labels = POSITIVE + NEGATIVE, ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)
    deep = fit_text_deep(texts, labels, LABELS, max_pairs_per_example=4, train_layers=1, encoder_id="minilm-l6-int8")
    tag = save_model(served.settings, FUNCTION, deep.model, {"winner": deep.model.candidate}).tag  # type: ignore[arg-type]
    assert isinstance(load_classifier(served.settings, tag), TextDeepClassifier)
    expected = deep.model.predict_proba(["A wonderful, moving film.", "A dull and tedious mess."])
    primary = served.store.get(FUNCTION).primary_tag
    served.store.start_canary(FUNCTION, tag, 1.0, "test: all traffic to the text deep version")
    served.wait_for_revision(timeout=30)
    try:
        batch = served.invoke({"texts": ["A wonderful, moving film.", "A dull and tedious mess."]})
        results = batch["results"]
        assert {r["version"] for r in results} == {tag}
        for result, row in zip(results, expected, strict=True):
            assert result["label"] == LABELS[int(row.argmax())]
            assert result["confidence"] == pytest.approx(float(row.max()), abs=1e-4)
        logged = served.log.get(results[0]["invocation_id"])
        assert logged is not None and logged["answered_by"] == tag
    finally:
        served.store.rollback(FUNCTION, "test done")
        served.wait_for_revision(timeout=30)
    assert served.invoke({"text": "A superb film."})["version"] == primary


def test_the_openapi_document_states_the_one_of_rules(served: Served) -> None:
    schemas = served.client.get("/openapi.json", headers=served.headers).json()["components"]["schemas"]
    one_of = schemas["InvokeRequest"]["oneOf"]
    assert [branch["required"] for branch in one_of] == [["text"], ["texts"], ["image"], ["images"]]
    any_of = schemas["FeedbackRequest"]["anyOf"]
    assert {"required": ["true_label"]} in any_of
    assert {"required": ["flagged"], "properties": {"flagged": {"const": True}}} in any_of
    assert "errors_left_out" in schemas["ErrorResponse"]["properties"]


def test_bodies_of_the_small_routes_are_bounded(served: Served) -> None:
    """FastAPI decodes the feedback body itself: it is refused over 64 KiB, before it is read."""
    answer = served.invoke({"text": "A superb film."})
    response = served.client.post(
        f"/v1/invocations/{answer['invocation_id']}/feedback",
        json={"flagged": True, "comment": "x" * (70 << 10)},
        headers=served.headers,
    )
    assert response.status_code == 413 and "for this route" in response.json()["detail"]


def test_keys_are_scoped_to_functions_and_rights(served: Served) -> None:
    """Every route checks the key's rights on the function it touches; feedback only on invocations of functions
    the key may send feedback on; listings show only the key's functions; BentoML's routes need admin."""
    deploy(served, served.tags[0])
    other = served.invoke({"image": base64.b64encode(png(240)).decode()}, function=IMAGE_FUNCTION)  # admin key
    _, scoped = create_key(served.settings, "reviews-only", rights=["invoke"], functions=[FUNCTION])
    _, feedback_only = create_key(served.settings, "feedback-only", rights=["feedback"], functions=[FUNCTION])
    auth = {"Authorization": f"Bearer {scoped}"}
    ok = served.client.post(INVOKE, json={"text": "A fine film."}, headers=auth)
    assert ok.status_code == 200, ok.text
    refused = served.client.post(IMAGE_INVOKE, json={"image": base64.b64encode(png(240)).decode()}, headers=auth)
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert "invoke on review-sentiment" in refused.json()["detail"]
    no_feedback = served.client.post(
        f"/v1/invocations/{ok.json()['invocation_id']}/feedback", json={"flagged": True}, headers=auth
    )
    assert no_feedback.status_code == 403
    listed = served.client.get("/v1/functions", headers=auth).json()["functions"]
    assert [f["name"] for f in listed] == [FUNCTION]
    assert served.client.get(f"/v1/functions/{IMAGE_FUNCTION}", headers=auth).status_code == 403
    assert served.client.post(f"/v1/hooks/labelstudio/{FUNCTION}", headers=auth).status_code == 403
    assert served.client.get("/metrics", headers=auth).status_code == 403
    # (an admin key reads /metrics: tests/test_serve_e2e.py, on a real server; BentoML serves it only there)
    auth = {"Authorization": f"Bearer {feedback_only}"}
    mine = served.client.post(
        f"/v1/invocations/{ok.json()['invocation_id']}/feedback", json={"flagged": True}, headers=auth
    )
    assert mine.status_code == 201, mine.text
    theirs = served.client.post(
        f"/v1/invocations/{other['invocation_id']}/feedback", json={"flagged": True}, headers=auth
    )
    assert theirs.status_code == 403 and "scope" in theirs.json()["detail"]
    assert served.client.post(INVOKE, json={"text": "x"}, headers=auth).status_code == 403
