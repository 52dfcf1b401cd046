"""Faults a key holder can send, against a real serving process: abusive bodies with a probe client beside them,
requests that once answered 500 and dropped the connection, and generated requests (schemathesis over the served
OpenAPI document; hypothesis for what schemathesis does not send: lone surrogates, invalid UTF-8, raw bytes).

The latencies under abuse are measured by ``bench/abuse.py`` (README table); here the behaviour is checked (the
refusal names the count and has a bounded body; every probe beside the abusive request is answered).
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.real_server import Server, beside_a_probe, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("faults-requests"), "review-sentiment") as server:
        yield server


def test_a_million_blank_texts_are_refused_from_their_count(server: Server) -> None:
    body = json.dumps({"texts": [""] * 1_000_000}).encode()  # 4 MB: under the body limit
    response, _, probe = beside_a_probe(server, body)
    # refused from the count (a child process decodes it), before any item is validated: bench/abuse.py times it
    assert response.status_code == 413, response.text[:500]
    assert len(response.content) < 1000 and "1,000,00" in response.json()["detail"]
    assert all(status == 200 for _, status in probe.health + probe.single)


def test_many_invalid_items_get_a_bounded_error_body(server: Server) -> None:
    with requests.Session() as session:
        response = server.invoke(session, {"texts": ["", " ", "\x00"] * 80})
    assert response.status_code == 422
    payload = response.json()
    assert len(payload["errors"]) == 10 and payload["errors_left_out"] == 230
    assert "texts[0]" in payload["detail"] and "230 more" in payload["detail"]


def test_long_texts_are_read_as_far_as_the_encoder_reads(server: Server) -> None:
    """256 texts of 65 KB each (within every limit) once took 120 s and a 504; a text is read to its first 16,384
    characters, so the batch costs what 256 full-length texts cost, and the probe is answered meanwhile."""
    body = json.dumps({"texts": ["word " * 13_000] * 256}).encode()
    response, _, probe = beside_a_probe(server, body)
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["results"]) == 256
    assert all(status == 200 for _, status in probe.health + probe.single)  # latencies: bench/abuse.py


def _raw_post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={**headers, "Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"text": "a\\ud800"}', 422, "lone surrogate"),
        (b'{"texts": ["fine", "\\udfff b"]}', 422, "texts[1]"),
        (b'{"text": "\xff\xfe bad"}', 422, "UTF-8"),
        (b"[" * 5000 + b"]" * 5000, 422, "nests"),
        (b'{"text": "\\u0000\\u0001\\u001f"}', 422, "empty"),
        (b'{"text": "\\u200b\\ufeff "}', 422, "empty"),
    ],
)
def test_bad_text_gets_a_documented_422_and_the_connection_lives(
    server: Server, body: bytes, status: int, says: str
) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    path = f"/v1/functions/{server.function}/invoke"
    try:
        got, payload = _raw_post(conn, path, body, server.headers)
        assert got == status, payload[:300]
        answer = json.loads(payload)
        assert answer["error"] == "invalid_request" and says in answer["detail"], answer
        sock = conn.sock
        assert sock is not None, "the server closed the keep-alive connection"
        got, payload = _raw_post(conn, path, b'{"text": "still here"}', server.headers)
        assert got == 200, payload[:300]
        assert conn.sock is sock, "the next request needed a new connection"
    finally:
        conn.close()


def test_unknown_paths_and_methods_answer_json(server: Server) -> None:
    with requests.Session() as session:
        for method, path, status in [
            ("GET", "/v1/nothing-here", 404),
            ("GET", "/nothing", 404),
            ("GET", f"/v1/functions/{server.function}/invoke", 405),
        ]:
            response = session.request(method, f"{server.url}{path}", headers=server.headers, timeout=30)
            assert response.status_code == status, (path, response.text)
            assert response.headers["content-type"].startswith("application/json"), (path, response.headers)
            assert response.json()["error"] in ("not_found", "method_not_allowed")


_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)  # surrogates included
_BODIES = st.one_of(
    st.binary(max_size=200),  # invalid UTF-8, truncated JSON, anything
    st.builds(lambda t: json.dumps({"text": t}).encode(), _ANY_TEXT),
    st.builds(lambda ts: json.dumps({"texts": ts}).encode(), st.lists(_ANY_TEXT, max_size=5)),
    st.builds(lambda t: json.dumps({"flagged": True, "true_label": t}).encode(), _ANY_TEXT),
    st.recursive(
        st.none() | st.booleans() | st.integers() | _ANY_TEXT, lambda c: st.lists(c) | st.dictionaries(_ANY_TEXT, c)
    ).map(lambda v: json.dumps({"text": v}).encode()),
)


def test_generated_bodies_never_get_a_5xx_nor_lose_the_connection(server: Server) -> None:
    """Hypothesis: raw bytes, lone surrogates, control characters and nested values in every body field, sent to
    invoke and feedback over one keep-alive connection; every answer is a 2xx or a JSON 4xx and the connection is
    kept."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    answered = invoked = 0
    with requests.Session() as session:
        invocation = server.invoke(session, {"text": "seed"}).json()["invocation_id"]
    paths = [f"/v1/functions/{server.function}/invoke", f"/v1/invocations/{invocation}/feedback"]

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=_BODIES, target=st.sampled_from(paths))
    def send(body: bytes, target: str) -> None:
        nonlocal answered, invoked
        status, payload = _raw_post(conn, target, body, server.headers)
        assert status < 500, (body, status, payload[:300])
        if status >= 400:
            assert "error" in json.loads(payload), payload[:300]
        assert conn.sock is not None, f"the connection was closed after {body!r}"
        answered += 1
        invoked += target.endswith("/invoke")

    try:
        send()
    finally:
        conn.close()
    assert answered >= 300 and invoked > 50


def test_schemathesis_finds_no_server_error(server: Server, tmp_path: Path) -> None:
    """schemathesis over the served OpenAPI document: examples, coverage, fuzzing and stateful phases, positive
    and negative data; a 5xx or a network error (a dropped connection) fails the run."""
    st_cli = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st_cli),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {server.key}",
            "--max-examples",
            "200",
            "--checks",
            "not_a_server_error",
            "--mode",
            "all",
            "--seed",
            "1",
            "--no-shrink",
            "--request-timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated is not None, output[-2000:]
    assert int(generated.group(1)) >= 1000 and generated.group(1) == generated.group(2), generated.group(0)
