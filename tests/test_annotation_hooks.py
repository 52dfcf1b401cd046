"""Label Studio's webhook on a function's project, against a real Label Studio: registered once, called with
LoopML's key on every annotation change, repaired when its key was revoked."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loopml.annotation_hooks import HOOK_ACTIONS, ensure_hook, hook_key
from loopml.functions import render_label_config
from tests.conftest import free_port

pytestmark = [pytest.mark.e2e]


class Receiver:
    """Stands in for the serving API's hook route: records each call's path and Authorization header."""

    def __init__(self) -> None:
        calls: list[tuple[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                self.rfile.read(int(self.headers.get("content-length") or 0))
                calls.append((self.path, self.headers.get("authorization", "")))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.calls = calls
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 120) -> list[tuple[str, str]]:
        deadline = time.monotonic() + timeout_s  # a bound for a hook that never comes, not a speed target
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.calls)


def test_label_studio_calls_the_hook_with_loopmls_key_on_every_annotation_change(labelstudio) -> None:
    from loopml.apikeys import list_keys, revoke_key, verify

    receiver = Receiver()
    try:
        settings = replace(labelstudio.settings, serving_port=receiver.port)
        client = labelstudio.client
        project = client.create_project(f"hooks-{uuid.uuid4().hex[:8]}", render_label_config("text", ["a", "b"]))
        assert ensure_hook(settings, client, "hooked", project) is True
        assert ensure_hook(settings, client, "hooked", project) is False  # idempotent: one hook per project
        (hook,) = client.sdk.webhooks.list(project=str(project))
        assert hook.url == f"http://127.0.0.1:{receiver.port}/v1/hooks/labelstudio/hooked"
        assert set(hook.actions) == set(HOOK_ACTIONS) and not hook.send_payload

        client.import_tasks(project, [{"data": {"text": "a fine film"}}])
        task = client.unlabeled_tasks(project, limit=1)[0]
        annotation = client.create_annotation(task.task_id, "a")
        client.update_annotation(annotation, "b")
        calls = receiver.wait_for(3)  # tasks created, annotation created, annotation updated
        assert len(calls) >= 3
        secret = hook_key(settings)
        assert set(calls) == {("/v1/hooks/labelstudio/hooked", f"Bearer {secret}")}
        assert verify(settings, secret) is not None

        (key,) = [k for k in list_keys(settings) if k.name == "labelstudio-webhook"]
        revoke_key(settings, key.key_id)
        assert ensure_hook(settings, client, "hooked", project) is True  # a new key, the hook updated
        (hook,) = client.sdk.webhooks.list(project=str(project))
        renewed = hook_key(settings)
        assert renewed != secret and hook.headers == {"Authorization": f"Bearer {renewed}"}
    finally:
        receiver.server.shutdown()
