"""The Label Studio client and server lifecycle; ``e2e`` tests use the real server (``labelstudio``)."""

from __future__ import annotations

import socket
import stat
import time
import uuid
from collections.abc import Iterator

import pytest

from loopml.config import get_settings
from loopml.labelstudio import (
    LabelStudioClient,
    LabelStudioError,
    LabelStudioUnavailable,
    Prediction,
    choice_result,
    extract_label,
    format_timestamp,
)
from loopml.labelstudio_server import LabelStudioNotInstalled, ensure_credentials, labelstudio_bin

LABELS = ("positive", "negative", "neutral")


def label_config(labels: tuple[str, ...] = LABELS) -> str:
    choices = "".join(f'<Choice value="{label}"/>' for label in labels)
    return (
        '<View><Text name="text" value="$text"/>'
        '<Choices name="label" toName="text" choice="single-radio" showInline="true">'
        f"{choices}</Choices></View>"
    )


@pytest.fixture
def project(labelstudio) -> Iterator[int]:
    client: LabelStudioClient = labelstudio.client
    project_id = client.create_project(f"test-{uuid.uuid4().hex[:8]}", label_config(), description="e2e")
    yield project_id
    if labelstudio.running:
        client.delete_project(project_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_tasks(client: LabelStudioClient, project_id: int, n: int, prefix: str = "text") -> list[int]:
    """Import ``n`` tasks and return their ids (in id order)."""
    tasks = [{"data": {"text": f"{prefix} {i}"}, "meta": {"loopml_source": "test", "i": i}} for i in range(n)]
    assert client.import_tasks(project_id, tasks) == n
    return [t.task_id for t in client.unlabeled_tasks(project_id, limit=n + 100)]


# --- without a server -------------------------------------------------------------------------------------


def test_credentials_are_generated_once_and_private(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path))
    settings = get_settings()
    first = ensure_credentials(settings)
    again = ensure_credentials(settings)
    assert first == again
    assert len(first.api_key) == 40 and "@" in first.username
    path = settings.secrets_dir / "labelstudio.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.secrets_dir.stat().st_mode) == 0o700


def test_missing_binary_says_make_install(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPML_LABELSTUDIO_BIN", str(tmp_path / "nope" / "label-studio"))
    with pytest.raises(LabelStudioNotInstalled, match="make install"):
        labelstudio_bin()


def test_client_without_credentials_says_loopml_up(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path))
    with pytest.raises(LabelStudioUnavailable, match="loopml up"):
        LabelStudioClient.from_settings(get_settings())


def test_unreadable_credentials_are_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path))
    settings = get_settings()
    settings.secrets_dir.mkdir(parents=True)
    (settings.secrets_dir / "labelstudio.json").write_text("{not json")
    with pytest.raises(LabelStudioError, match="unreadable"):
        LabelStudioClient.from_settings(settings)


def test_timestamps_and_labels():
    assert format_timestamp("2026-11-28T02:17:01.5+00:00") == "2026-11-28T02:17:01.500000Z"
    assert format_timestamp("2026-11-28T02:17:01.123456Z") == "2026-11-28T02:17:01.123456Z"
    result = [
        {"from_name": "other", "value": {"choices": ["x"]}},
        {"from_name": "label", "value": {"choices": ["negative"]}},
    ]
    assert extract_label(result) == "negative"
    assert extract_label([]) is None


def test_unanswered_connection_times_out_as_unavailable():
    """A port that accepts connections but never answers: a timeout, reported as unavailable."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = LabelStudioClient(url, "0" * 40, timeout=0.5, max_retries=0)
        assert client.health() is False
        with pytest.raises(LabelStudioUnavailable, match="not reachable at"):
            client.latest_task_update(1)


# --- against the real server ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_unused_port_is_unavailable_with_a_clear_message(labelstudio):
    url = f"http://127.0.0.1:{free_port()}"
    client = LabelStudioClient(url, labelstudio.api_key)
    assert client.health() is False
    started = time.perf_counter()
    with pytest.raises(LabelStudioUnavailable) as caught:
        client.changed_tasks(1, None)
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert message.startswith(f"Label Studio is not reachable at {url} (")
    assert message.endswith("start it with `loopml up`")
    with pytest.raises(LabelStudioUnavailable, match="loopml up"):
        client.ensure_reachable()


@pytest.mark.e2e
def test_server_keeps_its_files_and_secrets_to_itself(labelstudio):
    settings = labelstudio.settings
    data = settings.labelstudio_data_dir
    assert (data / "label_studio.sqlite3").is_file()
    assert (data / "home" / ".config" / "label-studio").is_dir()  # not the user's ~/.config
    creds = ensure_credentials(settings)
    argv = " ".join(labelstudio.proc.args)
    assert creds.password not in argv and creds.api_key not in argv


@pytest.mark.e2e
def test_health_and_http_errors(labelstudio, project):
    client: LabelStudioClient = labelstudio.client
    assert client.health()
    client.ensure_reachable()
    with pytest.raises(LabelStudioError, match="HTTP 404"):
        client.get_label_config(10**9)
    wrong = LabelStudioClient(labelstudio.url, "f" * 40)
    with pytest.raises(LabelStudioError, match="rejected"):
        wrong.latest_task_update(project)


@pytest.mark.e2e
def test_label_config_roundtrip(labelstudio, project):
    client: LabelStudioClient = labelstudio.client
    assert 'value="neutral"' in client.get_label_config(project)
    client.update_label_config(project, label_config((*LABELS, "mixed")))
    assert 'value="mixed"' in client.get_label_config(project)


@pytest.mark.e2e
def test_import_in_batches_and_unlabeled(labelstudio, project):
    client = LabelStudioClient(labelstudio.url, labelstudio.api_key)
    client.import_batch = 2
    assert client.latest_task_update(project) is None
    ids = add_tasks(client, project, 5)
    assert len(ids) == 5 and ids == sorted(ids)
    first = client.unlabeled_tasks(project, limit=2)
    assert [t.task_id for t in first] == ids[:2]
    assert first[0].data == {"text": "text 0"}
    assert first[0].meta == {"loopml_source": "test", "i": 0}
    assert first[0].annotations == []
    client.create_annotation(ids[0], "positive")
    client.skip_task(ids[1])
    assert [t.task_id for t in client.unlabeled_tasks(project, limit=10)] == ids[2:]
    assert client.unlabeled_tasks(project, limit=0) == []


@pytest.mark.e2e
def test_annotate_edit_skip_delete_and_cursor(labelstudio, project):
    """Every change to a task's annotations bumps its updated_at; cursors are strict."""
    client: LabelStudioClient = labelstudio.client
    a, b, c = add_tasks(client, project, 3)
    imported = client.latest_task_update(project)
    assert imported is not None
    assert client.changed_tasks(project, None) == []
    assert {t.task_id for t in client.changed_tasks(project, "2000-01-01T00:00:00.000000Z")} == {a, b, c}
    assert client.changed_tasks(project, imported) == []

    annotation = client.create_annotation(a, "positive")
    changed = client.changed_tasks(project, imported)
    assert [t.task_id for t in changed] == [a]
    (record,) = changed[0].annotations
    assert (record.annotation_id, record.task_id, record.label, record.was_cancelled) == (
        annotation,
        a,
        "positive",
        False,
    )
    assert record.completed_by is not None and record.created_at.endswith("Z")
    cursor = client.latest_task_update(project)
    assert cursor == changed[0].updated_at and cursor > imported
    assert client.changed_tasks(project, cursor) == []

    client.update_annotation(annotation, "negative")  # editing bumps updated_at
    changed = client.changed_tasks(project, cursor)
    assert [(t.task_id, [x.label for x in t.annotations]) for t in changed] == [(a, ["negative"])]
    cursor = changed[0].updated_at

    skip = client.skip_task(b)  # skipping bumps updated_at
    changed = client.changed_tasks(project, cursor)
    assert [t.task_id for t in changed] == [b]
    assert changed[0].annotations[0].annotation_id == skip
    assert changed[0].annotations[0].was_cancelled and changed[0].annotations[0].label is None
    cursor = changed[0].updated_at

    client.delete_annotation(annotation)  # deleting bumps updated_at too
    changed = client.changed_tasks(project, cursor)
    assert [(t.task_id, t.annotations) for t in changed] == [(a, [])]
    assert client.annotated_task_ids(project) == {b}
    everything = client.changed_tasks(project, None)
    assert [t.task_id for t in everything] == [b]


@pytest.mark.e2e
def test_deleted_task_disappears_from_annotated_ids(labelstudio, project):
    client: LabelStudioClient = labelstudio.client
    a, b = add_tasks(client, project, 2)
    client.create_annotation(a, "positive")
    client.create_annotation(b, "neutral")
    cursor = client.latest_task_update(project)
    fingerprint = client.task_fingerprint(project)
    assert fingerprint == (cursor, 2)
    assert client.annotated_task_ids(project) == {a, b}
    client.sdk.tasks.delete(id=a)
    assert client.changed_tasks(project, cursor) == []  # invisible to the cursor...
    assert client.annotated_task_ids(project) == {b}  # ...but not to the set difference
    assert client.task_fingerprint(project) == (cursor, 1)  # nor to the fingerprint


@pytest.mark.e2e
def test_listing_pages_by_id(labelstudio, project):
    client = LabelStudioClient(labelstudio.url, labelstudio.api_key)
    client.page_size = 2
    client.id_page_size = 3
    ids = add_tasks(client, project, 8)
    for i, task_id in enumerate(ids[:7]):
        if i == 3:
            client.skip_task(task_id)
        else:
            client.create_annotation(task_id, LABELS[i % 3])
    client.create_annotation(ids[3], "neutral")  # a task with a skip and a label
    changed = client.changed_tasks(project, None)
    assert [t.task_id for t in changed] == ids[:7]
    assert sorted(x.was_cancelled for x in changed[3].annotations) == [False, True]
    assert client.annotated_task_ids(project) == set(ids[:7])
    assert [t.task_id for t in client.changed_tasks(project, "2000-01-01T00:00:00.000000Z")] == ids
    assert [t.task_id for t in client.unlabeled_tasks(project, limit=5)] == ids[7:]


@pytest.mark.e2e
def test_server_down_then_back_with_the_same_key(labelstudio, project):
    client: LabelStudioClient = labelstudio.client
    (task,) = add_tasks(client, project, 1)
    client.create_annotation(task, "positive")
    labelstudio.stop()
    try:
        assert not client.health()
        with pytest.raises(LabelStudioUnavailable, match="loopml up"):
            client.ensure_reachable()
        with pytest.raises(LabelStudioUnavailable, match="not reachable"):
            client.changed_tasks(project, None)
        with pytest.raises(LabelStudioUnavailable):
            client.create_annotation(task, "negative")
    finally:
        labelstudio.start()
    fresh = LabelStudioClient.from_settings(labelstudio.settings)
    assert [t.annotations[0].label for t in fresh.changed_tasks(project, None)] == ["positive"]
    assert client.health()


@pytest.mark.e2e
def test_lost_inline_annotations_are_found_and_created_once(labelstudio, project):
    """What an import checks on the real server: its batch by the ``meta`` marker, each task's annotations by
    ``annotations_ids``; the repair creates only what is missing, and a second repair nothing."""
    client: LabelStudioClient = labelstudio.client
    key = uuid.uuid4().hex
    sent = [
        {
            "data": {"text": f"item {i}"},
            "meta": {"loopml_import": f"{key}:{i}"},
            "annotations": [{"result": choice_result(LABELS[i % 3])}] if i < 3 else [],
        }
        for i in range(4)
    ]
    lost = [{k: v for k, v in task.items() if k != "annotations"} for task in sent]  # created without them
    client.sdk.projects.import_tasks(id=project, request=lost[:1] + sent[1:])
    assert sorted(client._batch_tasks(project, key)) == [0, 1, 2, 3]
    assert client._repair_annotations(project, key, sent) == 1
    assert client._repair_annotations(project, key, sent) == 0
    labels = {t.data["text"]: [a.label for a in t.annotations] for t in client.changed_tasks(project, None)}
    assert labels == {"item 0": ["positive"], "item 1": ["negative"], "item 2": ["neutral"]}
    assert all("loopml_import" not in t.meta for t in client.unlabeled_tasks(project, 10))


@pytest.mark.e2e
def test_an_annotation_sent_twice_is_created_once(labelstudio, project):
    """The server refuses a second annotation with the same ``unique_id`` (409): resending is safe."""
    client: LabelStudioClient = labelstudio.client
    (task,) = add_tasks(client, project, 1)
    unique_id = str(uuid.uuid4())
    first = client._create_annotation(task, choice_result("positive"), was_cancelled=False, unique_id=unique_id)
    again = client._create_annotation(task, choice_result("positive"), was_cancelled=False, unique_id=unique_id)
    assert again == first
    assert [a["id"] for a in client._task_annotations(task)] == [first]


@pytest.mark.e2e
def test_predictions_are_imported_once(labelstudio, project):
    client: LabelStudioClient = labelstudio.client
    a, b = add_tasks(client, project, 2)
    predictions = [Prediction(a, "positive", 0.9, "fn:v1"), Prediction(b, "negative", 0.8, "fn:v1")]
    assert client.import_predictions(project, predictions) == 2
    assert client.import_predictions(project, predictions) == 0
    assert client.import_predictions(project, [Prediction(a, "neutral", 0.5, "fn:v1")]) == 1  # another label
    assert client.import_predictions(project, [Prediction(a, "positive", 0.9, "fn:v10")]) == 1  # another version
    assert sorted((p["model_version"], p["label"]) for p in client.task_predictions(a)) == [
        ("fn:v1", "neutral"),
        ("fn:v1", "positive"),
        ("fn:v10", "positive"),
    ]
    assert [p["label"] for p in client.task_predictions(b)] == ["negative"]


@pytest.mark.e2e
@pytest.mark.slow
def test_changed_tasks_for_2000_annotated_tasks(labelstudio, project):
    client: LabelStudioClient = labelstudio.client
    tasks = [
        {
            "data": {"text": f"review number {i} " * 4},
            "annotations": [
                {
                    "result": [
                        {
                            "from_name": "label",
                            "to_name": "text",
                            "type": "choices",
                            "value": {"choices": [LABELS[i % 3]]},
                        }
                    ]
                }
            ],
        }
        for i in range(2000)
    ] + [{"data": {"text": f"unlabeled {i}"}} for i in range(300)]
    assert client.import_tasks(project, tasks) == 2300

    changed = client.changed_tasks(project, None)
    latest = client.latest_task_update(project)
    ids = client.annotated_task_ids(project)
    assert len(changed) == 2000 and len(ids) == 2000  # every page read (the times are in the module docstring)
    assert [t.annotations[0].label for t in changed[:3]] == list(LABELS)
    assert latest is not None and client.changed_tasks(project, latest) == []
