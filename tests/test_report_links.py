"""Reports over HTTP: signed links open one report until they expire; the serving API serves reports to a key
that sees the function or to a signed link, and nothing outside the function's report folder."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from loopml import report_links
from loopml.config import Settings, get_settings

PAGE = "<html><body><h1>drift</h1><script>document.title = 'report'</script></body></html>"


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LOOPML_DATABASE_URL", raising=False)
    monkeypatch.delenv(report_links.PUBLIC_URL_ENV, raising=False)
    settings = get_settings()
    settings.ensure_dirs()
    return settings


def write_report(settings: Settings, function: str, name: str, text: str = PAGE) -> None:
    folder = report_links.reports_dir(settings, function)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    latest = folder / "latest.html"
    latest.unlink(missing_ok=True)
    latest.symlink_to(name)


def split(url: str) -> tuple[str, str, str, str]:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return f"{parts.scheme}://{parts.netloc}", parts.path, query["expires"], query["signature"]


def test_a_signed_link_opens_its_own_report_until_it_expires(settings, monkeypatch) -> None:
    base, path, expires, signature = split(report_links.signed_url(settings, "news", "drift-1.html"))
    assert base == settings.serving_url and path == "/v1/functions/news/reports/drift-1.html"
    assert 29 * 86400 < int(expires) - time.time() <= 30 * 86400
    assert report_links.verify(settings, path, expires, signature)
    assert not report_links.verify(settings, "/v1/functions/news/reports/drift-2.html", expires, signature)
    assert not report_links.verify(settings, "/v1/functions/other/reports/drift-1.html", expires, signature)
    assert not report_links.verify(settings, path, str(int(expires) + 1), signature)  # a longer life is not signed
    assert not report_links.verify(settings, path, expires, signature, now=int(expires) + 1)  # expired
    assert not report_links.verify(settings, path, "soon", signature)
    secret = settings.secrets_dir / report_links.SECRET_FILE
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    secret.unlink()  # a new secret revokes every link
    assert not report_links.verify(settings, path, expires, signature)

    monkeypatch.setenv(report_links.PUBLIC_URL_ENV, "https://loopml.example.com/")
    monkeypatch.setenv(report_links.LINK_DAYS_ENV, "2")
    base, _, expires, _ = split(report_links.signed_url(settings, "news", "drift-1.html"))
    assert base == "https://loopml.example.com" and int(expires) - time.time() <= 2 * 86400


def test_only_report_files_inside_the_function_folder_are_found(settings) -> None:
    write_report(settings, "news", "drift-20261206T100000.html")
    write_report(settings, "news", "drift-20261206T110000.html")
    (settings.home / "reports" / "secret.html").write_text("not news's", encoding="utf-8")
    assert report_links.list_reports(settings, "news") == ["drift-20261206T110000.html", "drift-20261206T100000.html"]
    latest = report_links.report_path(settings, "news", "latest.html")
    assert latest is not None and latest.name == "drift-20261206T110000.html"
    for name in ("../secret.html", "..%2Fsecret.html", ".hidden.html", "drift.txt", "missing.html", "a/b.html"):
        assert report_links.report_path(settings, "news", name) is None, name
    os.symlink("../secret.html", report_links.reports_dir(settings, "news") / "escape.html")
    assert report_links.report_path(settings, "news", "escape.html") is None  # a link out of the folder
    assert report_links.list_reports(settings, "nobody") == []


@pytest.fixture
def api(settings) -> Iterator[tuple[object, Settings, str]]:
    from fastapi.testclient import TestClient

    from loopml.apikeys import create_key
    from tests.serving_support import serving_asgi_app

    write_report(settings, "news", "drift-20261206T110000.html")
    write_report(settings, "photos", "drift-20261206T110000.html", "<html>photos</html>")
    _, key = create_key(settings, "reader", rights=("invoke",), functions=("news",))
    with TestClient(serving_asgi_app()) as client:
        deadline = time.monotonic() + 60
        while client.get("/livez").status_code != 200:
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        yield client, settings, key


def test_the_api_serves_reports_to_a_key_that_sees_the_function_or_to_a_signed_link(api) -> None:
    client, settings, key = api
    route = "/v1/functions/news/reports/drift-20261206T110000.html"
    assert client.get(route).status_code == 401  # no key, no link

    with_key = client.get(route, headers={"Authorization": f"Bearer {key}"})
    assert with_key.status_code == 200 and with_key.text == PAGE
    assert with_key.headers["content-type"].startswith("text/html")
    assert with_key.headers["content-security-policy"].startswith("sandbox")
    assert with_key.headers["referrer-policy"] == "no-referrer"
    listing = client.get("/v1/functions/news/reports", headers={"Authorization": f"Bearer {key}"}).json()
    assert listing == {"function": "news", "reports": [{"name": "drift-20261206T110000.html", "path": route}]}
    outside = client.get("/v1/functions/photos/reports/latest.html", headers={"Authorization": f"Bearer {key}"})
    assert outside.status_code == 403 and "outside this API key's scope" in outside.json()["detail"]
    missing = client.get("/v1/functions/news/reports/drift-1.html", headers={"Authorization": f"Bearer {key}"})
    assert missing.status_code == 404 and "lists them" in missing.json()["detail"]

    _, path, expires, signature = split(report_links.signed_url(settings, "photos", "latest.html"))
    linked = client.get(path, params={"expires": expires, "signature": signature})  # no key: the link is enough
    assert linked.status_code == 200 and linked.text == "<html>photos</html>"
    other = client.get(route, params={"expires": expires, "signature": signature})  # photos' link, news's report
    assert other.status_code == 401 and "invalid or has expired" in other.json()["detail"]
    listing = client.get("/v1/functions/photos/reports", params={"expires": expires, "signature": signature})
    assert listing.status_code == 401  # a link opens its report, not the listing
    _, path, expires, signature = split(report_links.signed_url(settings, "news", "latest.html", now=0))
    assert client.get(path, params={"expires": expires, "signature": signature}).status_code == 401  # expired


def test_a_review_summary_escapes_what_callers_sent(settings) -> None:
    from datetime import UTC, datetime

    from loopml.review_report import write_review_summary

    path = write_review_summary(
        report_links.reports_dir(settings, "news") / "review-20261206T120000.html",
        function="news",
        model_tag="news:v3",
        window=(datetime(2026, 12, 6, 11, tzinfo=UTC), datetime(2026, 12, 6, 12, tzinfo=UTC)),
        candidates=40,
        sent=2,
        budget=50,
        reasons={"low_confidence": 1, "flagged": 1},
        rows=[
            {"reason": "flagged", "label": "sport", "confidence": 0.91, "input_text": "<script>alert(1)</script>"},
            {"reason": "low_confidence", "label": "tech", "confidence": 0.4, "input_text": "data:image/png;base64,AA"},
        ],
        labelstudio_project_url="http://127.0.0.1:8080/projects/3/data",
    )
    page = path.read_text(encoding="utf-8")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "[image]" in page and "base64" not in page
    assert "40 candidates, 2 selected (budget 50), 2 sent to Label Studio" in page
    assert report_links.list_reports(settings, "news") == ["review-20261206T120000.html"]
