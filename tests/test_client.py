"""The Python client (``loopml.client``) and the `loopml invoke` / `feedback` / `open` commands.

Against the real serving app in-process (``LoopML.to_asgi()`` behind Starlette's TestClient, an ``httpx.Client``
the client sends with), with tiny real models; the retry policy against ``httpx.MockTransport`` answers.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from loopml.apikeys import create_key
from loopml.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConnectionFailedError,
    Feedback,
    FunctionInfo,
    InvalidRequestError,
    LoopMLError,
    NotFoundError,
    PermissionDeniedError,
    Prediction,
    RequestTimeoutError,
    ServiceUnavailableError,
    default_api_key,
    default_url,
    retry_after_seconds,
)
from loopml.config import Settings, get_settings
from loopml.deployments import DeploymentStore
from loopml.invocation_log import InvocationLog
from tests.serving_support import (
    LABELS,
    NEGATIVE,
    POSITIVE,
    png,
    save_image_versions,
    save_versions,
    serving_asgi_app,
)
from tests.test_cli import loopml  # the CLI runner: `run()` with argv, its exit code and output

FUNCTION = "review-sentiment"
IMAGE_FUNCTION = "photo-tone"  # light vs dark images


@dataclass
class Served:
    asgi: Any  # the service's ASGI app
    http: TestClient
    settings: Settings
    tags: list[str]
    image_tags: list[str]
    key: str
    key_id: str

    def raw(self, method: str, path: str, body: dict[str, Any] | None = None, key: str | None = None) -> Any:
        """The service's answer to a call made by hand, with no client in between."""
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return self.http.request(method, path, json=body, headers=headers)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("client-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPML_HOME", str(home))
        mp.setenv("BENTOML_HOME", str(home / "bentoml"))
        mp.setenv("LOOPML_SERVING_GPU", "0")
        for name in ("LOOPML_DATABASE_URL", "LOOPML_API_KEY", "LOOPML_SERVING_URL"):
            mp.delenv(name, raising=False)
        settings = get_settings()
        settings.ensure_dirs()
        tags = save_versions(settings, FUNCTION, 1)
        image_tags = save_image_versions(settings, IMAGE_FUNCTION)
        store = DeploymentStore(settings)
        store.set_primary(FUNCTION, tags[0], "test")
        store.set_primary(IMAGE_FUNCTION, image_tags[0], "test")
        key_id, key = create_key(settings, "client-tests")  # the default rights: invoke, feedback
        asgi = serving_asgi_app()
        with TestClient(asgi) as http:
            deadline = time.monotonic() + 60
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the service did not become ready"
                time.sleep(0.05)
            yield Served(asgi, http, settings, tags, image_tags, key, key_id)


@pytest.fixture()
def client(served: Served) -> Client:
    return Client(api_key=served.key, http=served.http)


# --- against the service ----------------------------------------------------------------------------
def test_invoke_one_text_gives_the_services_answer_typed(served: Served, client: Client) -> None:
    answer = client.invoke(FUNCTION, "great movie, loved it")
    raw = served.raw("POST", f"/v1/functions/{FUNCTION}/invoke", {"text": "great movie, loved it"}).json()
    assert isinstance(answer, Prediction)
    assert answer.function == FUNCTION and answer.version == served.tags[0] == raw["version"]
    assert answer.role == "primary" and answer.label == raw["label"] == "positive"
    assert answer.confidence == pytest.approx(raw["confidence"]) and set(answer.scores) == set(LABELS)
    assert answer.raw["invocation_id"] == answer.invocation_id != raw["invocation_id"]
    logged = InvocationLog(served.settings).get(answer.invocation_id)
    assert logged is not None and logged["key_id"] == served.key_id and logged["label"] == answer.label


def test_invoke_batch_answers_in_order(served: Served, client: Client) -> None:
    texts = [POSITIVE[0], NEGATIVE[1], POSITIVE[2]]
    answers = client.invoke_batch(FUNCTION, texts, sticky_key="user-7")
    raw = served.raw("POST", f"/v1/functions/{FUNCTION}/invoke", {"texts": texts}).json()
    assert [a.label for a in answers] == [r["label"] for r in raw["results"]] == ["positive", "negative", "positive"]
    assert all(isinstance(a, Prediction) and a.version == served.tags[0] for a in answers)
    assert len({a.invocation_id for a in answers}) == 3
    assert InvocationLog(served.settings).get(answers[1].invocation_id)["sticky_key"] == "user-7"


def test_an_image_is_bytes_a_path_or_a_pil_image(served: Served, client: Client, tmp_path: Path) -> None:
    from PIL import Image

    light, dark = png(245, seed=3), png(10, seed=4)
    path = tmp_path / "dark.png"
    path.write_bytes(dark)
    with Image.open(path) as picture:
        assert client.invoke(IMAGE_FUNCTION, image=picture).label == "dark"
    assert client.invoke(IMAGE_FUNCTION, image=light).label == "light"
    assert client.invoke(IMAGE_FUNCTION, image=str(path)).version == served.image_tags[0]
    answers = client.invoke_batch(IMAGE_FUNCTION, images=[path, light])
    assert [a.label for a in answers] == ["dark", "light"]


def test_feedback_is_recorded(served: Served, client: Client) -> None:
    answer = client.invoke(FUNCTION, "I hated every minute")
    recorded = client.feedback(answer.invocation_id, label="positive", flagged=True, comment="irony")
    assert isinstance(recorded, Feedback)
    assert recorded.invocation_id == answer.invocation_id and recorded.true_label == "positive" and recorded.flagged
    assert recorded.answered_by == answer.version and recorded.answered_label == answer.label
    rows = InvocationLog(served.settings).feedback(FUNCTION).filter(invocation_id=answer.invocation_id)
    assert rows.select("id", "true_label", "flagged", "comment", "key_id").rows() == [
        (recorded.feedback_id, "positive", True, "irony", served.key_id)
    ]
    with pytest.raises(ValueError, match="label= .* and/or flagged=True"):
        client.feedback(answer.invocation_id)


def test_functions_and_health(served: Served, client: Client) -> None:
    listed = {f.name: f for f in client.functions()}
    assert set(listed) == {FUNCTION, IMAGE_FUNCTION}
    info = listed[FUNCTION]
    assert isinstance(info, FunctionInfo) and info.status == "serving" and info.canary is None
    assert info.primary is not None and info.primary.version == served.tags[0] and info.primary.weight == 1.0
    assert set(info.primary.labels) == set(LABELS)
    assert client.function(FUNCTION) == info
    assert client.health()["ready"] is True


def test_unknown_function_raises_not_found_with_the_services_message(served: Served, client: Client) -> None:
    raw = served.raw("POST", "/v1/functions/no-such-function/invoke", {"text": "hi"})
    with pytest.raises(NotFoundError) as caught:
        client.invoke("no-such-function", "hi")
    error = caught.value
    assert isinstance(error, LoopMLError) and error.status == raw.status_code == 404
    assert error.detail == raw.json()["detail"] and error.code == "not_found"
    assert str(error).startswith("HTTP 404: unknown function 'no-such-function' (known functions:")


def test_keys_are_checked(served: Served) -> None:
    with pytest.raises(AuthenticationError) as caught:
        Client(api_key="lml_0123456789abcdef_" + "x" * 43, http=served.http).invoke(FUNCTION, "hi")
    assert caught.value.status == 401 and "invalid or revoked API key" in caught.value.detail
    with pytest.raises(AuthenticationError, match="missing API key"):
        Client(api_key="", http=served.http).functions()
    _, scoped = create_key(served.settings, "news-only", functions=["news-topic"])
    with pytest.raises(PermissionDeniedError) as caught:
        Client(api_key=scoped, http=served.http).invoke(FUNCTION, "hi")
    assert caught.value.status == 403 and f"may not invoke '{FUNCTION}'" in caught.value.detail


def test_an_invalid_request_names_the_field(client: Client) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        client.invoke_batch(FUNCTION, ["fine", "   "])
    assert caught.value.status == 422 and caught.value.detail.startswith("texts[1]: ")
    assert [e["field"] for e in caught.value.errors] == ["texts[1]"]
    with pytest.raises(InvalidRequestError, match="classifies images, not texts"):
        client.invoke(IMAGE_FUNCTION, "a text")
    with pytest.raises(ValueError, match="exactly one of text or image"):
        client.invoke(FUNCTION)
    with pytest.raises(TypeError, match="not one text"):
        client.invoke_batch(FUNCTION, "one text")


def test_bentomls_http_client_reaches_the_routes_only_through_request(served: Served) -> None:
    """What the README says of ``bentoml.SyncHTTPClient``: the routes are a mounted FastAPI app, not
    ``@bentoml.api`` methods, so it finds no named endpoints, but its ``request`` reaches them with the key as
    ``token``. The public class is this one without ``app=``, which points it at the in-process app here."""
    import bentoml
    from _bentoml_impl.client.http import SyncHTTPClient

    assert issubclass(bentoml.SyncHTTPClient, SyncHTTPClient)
    with SyncHTTPClient("http://testserver", token=served.key, app=served.asgi) as bento:
        assert bento.endpoints == {}
        response = bento.request("POST", f"/v1/functions/{FUNCTION}/invoke", json={"text": POSITIVE[0]})
    assert response.status_code == 200 and response.json()["label"] == "positive"
    assert InvocationLog(served.settings).get(response.json()["invocation_id"])["key_id"] == served.key_id


# --- retries and failures -----------------------------------------------------------------------------
ANSWER = {
    "invocation_id": "0b8e7a4e-3f59-4d5e-9a51-0a1f0e2c9a77",
    "function": FUNCTION,
    "label": "positive",
    "confidence": 0.93,
    "scores": {"positive": 0.93, "negative": 0.07},
    "version": "review-sentiment:v3",
    "role": "primary",
}
FEEDBACK = {
    "feedback_id": 1,
    "invocation_id": ANSWER["invocation_id"],
    "function": FUNCTION,
    "flagged": True,
    "true_label": None,
    "answered_by": "review-sentiment:v3",
    "answered_label": "positive",
}


def scripted(*answers: httpx.Response | Exception) -> tuple[list[httpx.Request], httpx.MockTransport]:
    """A transport that gives ``answers`` in turn (an exception is raised) and records the requests."""
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        answer = answers[min(len(sent), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return sent, httpx.MockTransport(handle)


def mock_client(transport: httpx.MockTransport, **options: Any) -> Client:
    return Client("http://loopml.test", "lml_key", backoff=0, http=httpx.Client(transport=transport), **options)


def unavailable(status: int = 503, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, json={"error": "unavailable", "detail": "starting; retry shortly"}, headers=headers)


def test_503_is_retried_until_an_answer() -> None:
    sent, transport = scripted(unavailable(), unavailable(retry_after="0"), httpx.Response(200, json=ANSWER))
    answer = mock_client(transport).invoke(FUNCTION, "hi")
    assert len(sent) == 3 and answer.label == "positive" and answer.raw == ANSWER
    assert {r.url.path for r in sent} == {f"/v1/functions/{FUNCTION}/invoke"}
    assert all(r.headers["authorization"] == "Bearer lml_key" and json.loads(r.content) == {"text": "hi"} for r in sent)


@pytest.mark.parametrize("status", [429, 502, 504])
def test_other_transient_answers_are_retried(status: int) -> None:
    sent, transport = scripted(unavailable(status), httpx.Response(200, json={"revision": 1, "functions": []}))
    assert mock_client(transport).functions() == [] and len(sent) == 2


def test_the_last_transient_answer_is_raised_after_the_retries() -> None:
    sent, transport = scripted(unavailable())
    with pytest.raises(ServiceUnavailableError) as caught:
        mock_client(transport, retries=2).invoke(FUNCTION, "hi")
    assert len(sent) == 3 and caught.value.status == 503 and caught.value.detail == "starting; retry shortly"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_other_4xx_answers_are_not_retried(status: int) -> None:
    sent, transport = scripted(httpx.Response(status, json={"error": "x", "detail": f"refused with {status}"}))
    with pytest.raises(LoopMLError) as caught:
        mock_client(transport).invoke(FUNCTION, "hi")
    assert (
        len(sent) == 1
        and caught.value.status == status
        and str(caught.value) == f"HTTP {status}: refused with {status}"
    )


def test_a_connection_error_is_retried_then_raised_clearly() -> None:
    sent, transport = scripted(httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(ConnectionFailedError) as caught:
        mock_client(transport, retries=3).invoke(FUNCTION, "hi")
    assert len(sent) == 4 and caught.value.status is None
    assert str(caught.value).startswith("could not reach the serving API at http://loopml.test: [Errno 111]")
    assert "loopml up" in str(caught.value)
    sent, transport = scripted(httpx.ConnectError("refused"), httpx.Response(200, json=ANSWER))
    assert mock_client(transport).invoke(FUNCTION, "hi").invocation_id == ANSWER["invocation_id"]
    assert len(sent) == 2


def test_a_timeout_is_not_retried() -> None:
    sent, transport = scripted(httpx.ReadTimeout("timed out"))
    with pytest.raises(RequestTimeoutError, match="did not answer in time"):
        mock_client(transport).invoke(FUNCTION, "hi")
    assert len(sent) == 1


def test_feedback_is_not_resent_where_it_may_have_been_recorded() -> None:
    for maybe_recorded in (unavailable(504), httpx.RemoteProtocolError("Server disconnected")):
        sent, transport = scripted(maybe_recorded, httpx.Response(201, json=FEEDBACK))
        with pytest.raises(LoopMLError):
            mock_client(transport).feedback(ANSWER["invocation_id"], flagged=True)
        assert len(sent) == 1
    for not_recorded in (unavailable(503), httpx.ConnectError("refused")):
        sent, transport = scripted(not_recorded, httpx.Response(201, json=FEEDBACK))
        assert mock_client(transport).feedback(ANSWER["invocation_id"], flagged=True).flagged
        assert len(sent) == 2 and json.loads(sent[0].content) == {"flagged": True}


def test_retry_after_is_seconds_or_a_date() -> None:
    now = time.time()
    assert retry_after_seconds("5") == 5.0 and retry_after_seconds("0") == 0.0
    later = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(later, now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None


def test_an_answer_that_is_not_the_services_json_still_explains_itself() -> None:
    sent, transport = scripted(httpx.Response(502, text="<html><h1>502 Bad Gateway</h1></html>"))
    with pytest.raises(ServiceUnavailableError, match="HTTP 502: <html><h1>502 Bad Gateway"):
        mock_client(transport, retries=1).invoke(FUNCTION, "hi")
    assert len(sent) == 2


def test_async_client_retries_too() -> None:
    sent, transport = scripted(unavailable(), httpx.Response(200, json={"function": FUNCTION, "results": [ANSWER]}))

    async def call() -> list[Prediction]:
        async with httpx.AsyncClient(transport=transport) as http:
            client = AsyncClient("http://loopml.test", "lml_key", backoff=0, http=http)
            return await client.invoke_batch(FUNCTION, ["hi"])

    assert [a.label for a in asyncio.run(call())] == ["positive"] and len(sent) == 2


def test_defaults_come_from_the_environment_and_the_demo_key(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LOOPML_SERVING_URL", "LOOPML_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOOPML_SERVING_PORT", "3999")
    assert default_url() == "http://127.0.0.1:3999" and default_api_key() is None
    (settings.secrets_dir / "demo-client.key").write_text("lml_demo\n")
    assert default_api_key() == "lml_demo"
    monkeypatch.setenv("LOOPML_API_KEY", "lml_env")
    monkeypatch.setenv("LOOPML_SERVING_URL", "https://loopml.example.com/")
    client = Client()
    assert client.url == "https://loopml.example.com" and client.headers["Authorization"] == "Bearer lml_env"


# --- the CLI ------------------------------------------------------------------------------------------
@pytest.fixture()
def cli_client(served: Served, monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """`loopml invoke` / `feedback` talk to the in-process service; the URLs they were given are recorded."""
    urls: list[str | None] = []

    def serving_client(url: str | None) -> Client:
        urls.append(url)
        return Client(api_key=served.key, http=served.http)

    monkeypatch.setattr("loopml.cli.serving_client", serving_client)
    return urls


def test_cli_invoke_and_feedback(
    served: Served, cli_client: list[str | None], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = loopml(monkeypatch, capsys, "invoke", FUNCTION, "great movie, loved it")
    assert code == 0 and re.match(r"positive  [01]\.\d\d  ", out) and f"{served.tags[0]} (primary)  invocation " in out
    invocation_id = out.split()[-1]
    assert InvocationLog(served.settings).get(invocation_id)["input_text"] == "great movie, loved it"

    code, out = loopml(monkeypatch, capsys, "feedback", invocation_id, "--label", "negative", "--comment", "no")
    assert code == 0 and out.startswith("feedback ") and f" recorded on {invocation_id} ({FUNCTION}: " in out
    assert out.rstrip().endswith("true label negative")
    code, out = loopml(monkeypatch, capsys, "feedback", invocation_id, "--flag")
    assert code == 0 and out.rstrip().endswith("answered positive): flagged")
    rows = InvocationLog(served.settings).feedback(FUNCTION).filter(invocation_id=invocation_id)
    assert rows.select("true_label", "flagged", "comment").rows() == [("negative", False, "no"), (None, True, "")]

    code, out = loopml(monkeypatch, capsys, "invoke", FUNCTION, POSITIVE[0], NEGATIVE[0], "--url", "http://x:1")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and cli_client[-1] == "http://x:1"
    assert lines[0].startswith(f"{POSITIVE[0]!r}") and " positive  " in lines[0] and " negative  " in lines[1]

    monkeypatch.setattr("sys.stdin", io.StringIO(f"{NEGATIVE[2]}\n\n{POSITIVE[3]}\n"))
    code, out = loopml(monkeypatch, capsys, "invoke", FUNCTION, "-")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and lines[0].startswith(repr(NEGATIVE[2])) and " negative  " in lines[0]
    assert lines[1].startswith(repr(POSITIVE[3])) and " positive  " in lines[1]


def test_cli_invoke_json_and_images(
    served: Served, cli_client: list[str | None], monkeypatch, capsys, tmp_path: Path
) -> None:
    code, out = loopml(monkeypatch, capsys, "invoke", FUNCTION, "--json", "a delight from start to finish")
    answer = json.loads(out)
    assert code == 0 and answer["label"] == "positive" and answer["version"] == served.tags[0]
    assert set(answer) >= {"invocation_id", "confidence", "scores", "role"}
    (tmp_path / "light.png").write_bytes(png(240, seed=5))
    (tmp_path / "dark.webp").write_bytes(png(15, seed=6, fmt="WEBP"))
    code, out = loopml(monkeypatch, capsys, "invoke", IMAGE_FUNCTION, "--file", str(tmp_path / "light.png"))
    assert code == 0 and out.startswith("light  ")
    files = ["--file", str(tmp_path / "dark.webp"), "--file", str(tmp_path / "light.png")]
    code, out = loopml(monkeypatch, capsys, "invoke", IMAGE_FUNCTION, "--json", *files)
    assert code == 0 and [r["label"] for r in json.loads(out)["results"]] == ["dark", "light"]


def test_cli_errors_are_one_clear_line(
    served: Served, cli_client: list[str | None], monkeypatch, capsys, tmp_path: Path
) -> None:
    code, out = loopml(monkeypatch, capsys, "invoke", "no-such-function", "hi")
    assert code == 1 and out.startswith("Error: HTTP 404: unknown function 'no-such-function'")
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1
    code, out = loopml(monkeypatch, capsys, "feedback", "not-an-invocation", "--flag")
    assert code == 1 and "HTTP 404: no invocation 'not-an-invocation'" in out
    code, out = loopml(monkeypatch, capsys, "feedback", "some-id")
    assert code == 2 and "give --label LABEL (the true label) and/or --flag" in out
    code, out = loopml(monkeypatch, capsys, "invoke", FUNCTION)
    assert code == 2 and "give one or more texts, or one or more --file images" in out
    code, out = loopml(monkeypatch, capsys, "invoke", FUNCTION, "--file", str(tmp_path / "missing.png"))
    assert code == 2 and "does not exist" in out

    monkeypatch.setattr("loopml.cli.serving_client", lambda url: Client(api_key="nope", http=served.http))
    code, out = loopml(monkeypatch, capsys, "invoke", FUNCTION, "hi")
    assert code == 1 and "HTTP 401: invalid or revoked API key" in out and "LOOPML_API_KEY" in out

    sent, transport = scripted(httpx.ConnectError("[Errno 111] Connection refused"))
    monkeypatch.setattr("loopml.cli.serving_client", lambda url: mock_client(transport, retries=1))
    code, out = loopml(monkeypatch, capsys, "invoke", FUNCTION, "hi")
    assert code == 1 and "could not reach the serving API at http://loopml.test" in out and len(sent) == 2
    assert "Traceback" not in out


def test_cli_open_prints_the_configured_urls(monkeypatch, capsys) -> None:
    for name, port in (("LABELSTUDIO", "18080"), ("DAGSTER", "13000"), ("SERVING", "13100")):
        monkeypatch.setenv(f"LOOPML_{name}_PORT", port)
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    code, out = loopml(monkeypatch, capsys, "open")
    urls = ["http://127.0.0.1:18080", "http://127.0.0.1:13000", "http://127.0.0.1:13100/docs"]
    assert code == 0 and [line.split()[-1] for line in out.splitlines()] == urls and opened == []
    code, out = loopml(monkeypatch, capsys, "open", "--browser")
    assert code == 0 and opened == urls
    monkeypatch.setattr("webbrowser.open", lambda url: False)
    code, out = loopml(monkeypatch, capsys, "open", "--browser")
    assert code == 1 and "no web browser could be started here" in out


# --- the demo's simulated product -----------------------------------------------------------------------
def test_the_demo_product_calls_through_the_client(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from loopml import demo

    texts, labels = POSITIVE + NEGATIVE, ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)
    monkeypatch.setattr(demo, "demo_functions", lambda: [demo.DemoFunction(FUNCTION, LABELS, lambda: (texts, labels))])
    monkeypatch.setattr("loopml.client.Client", functools.partial(Client, http=served.http))
    log = InvocationLog(served.settings)
    before = (log.count(FUNCTION), log.feedback(FUNCTION).height)
    assert demo.run_client(served.settings, rate=1000, feedback=1.0, max_calls=5) == 5
    assert (log.count(FUNCTION), log.feedback(FUNCTION).height) == (before[0] + 5, before[1] + 5)
    demo_key = log.recent(FUNCTION)["key_id"][-1]
    assert demo_key != served.key_id and log.feedback(FUNCTION)["key_id"][-1] == demo_key
