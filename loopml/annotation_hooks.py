"""Label Studio's webhook on each function's project: annotation changes reach LoopML in about a second.

Label Studio posts an event on every annotation created, updated or deleted (and tasks added or deleted) to the
serving API's ``/v1/hooks/labelstudio/{function}`` route, with an API key LoopML created for it; the route leaves a
signal that the annotation sensor reads every second (:mod:`loopml.loop_signals`). Polling stays as the fallback,
so a hook that is missing or cannot reach the serving API only costs speed.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from loopml.config import Settings

if TYPE_CHECKING:
    from loopml.labelstudio import LabelStudioClient

HOOK_ACTIONS = [
    "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
    "TASKS_CREATED",
    "TASKS_DELETED",
]
KEY_NAME = "labelstudio-webhook"
KEY_FILE = "labelstudio-webhook.json"


def hook_url(settings: Settings, function: str) -> str:
    return f"{settings.serving_url}/v1/hooks/labelstudio/{function}"


def hook_key(settings: Settings) -> str:
    """The API key Label Studio sends with its webhook calls: created once, kept in ``secrets/`` (0600), and made
    anew if it was revoked or the platform database was replaced."""
    from loopml.apikeys import create_key, verify

    path = settings.secrets_dir / KEY_FILE
    if path.exists():
        secret = str(json.loads(path.read_text()).get("secret", ""))
        if secret and verify(settings, secret) is not None:
            return secret
    _, secret = create_key(settings, KEY_NAME, rights=("hooks",))  # it can signal changes, nothing more
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"secret": secret}))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return secret


def ensure_hook(settings: Settings, client: LabelStudioClient, function: str, project_id: int) -> bool:
    """Register (or repair) the webhook of ``function``'s project; True when something was created or changed.
    Idempotent: an existing hook with the right URL, key and actions is left alone; stale LoopML hooks of the
    project (another port, another key) are replaced."""
    url = hook_url(settings, function)
    headers = {"Authorization": f"Bearer {hook_key(settings)}"}
    ours = [h for h in client.project_webhooks(project_id) if str(h.url).endswith(f"/v1/hooks/labelstudio/{function}")]
    current = [
        h
        for h in ours
        if h.url == url and (h.headers or {}) == headers and set(h.actions or []) == set(HOOK_ACTIONS) and h.is_active
    ]
    stale = [h for h in ours if h not in current[:1]]
    for hook in stale:
        client.delete_webhook(int(hook.id))
    if current:
        return bool(stale)
    client.create_webhook(project_id, url, headers, HOOK_ACTIONS)
    return True


def ensure_hooks(settings: Settings, client: LabelStudioClient) -> list[str]:
    """Register the webhook of every function with a Label Studio project (``loopml up``); returns the functions
    whose hook was created or repaired."""
    from loopml.functions import FunctionRegistry

    changed = []
    for spec in FunctionRegistry(settings).list():
        project = spec.labelstudio_project_id
        if project is not None and ensure_hook(settings, client, spec.name, project):
            changed.append(spec.name)
    return changed
