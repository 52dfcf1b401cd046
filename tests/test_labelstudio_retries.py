"""The Label Studio client's retries, without a server: an in-memory API behind ``httpx.MockTransport`` that
answers 500 "database is locked" (before or after committing), times out, or creates less than it was sent."""

from __future__ import annotations

from collections import Counter

import pytest

from loopml.labelstudio import IncompleteWrite, LabelStudioError, LabelStudioUnavailable, Prediction, choice_result
from tests.fake_labelstudio_api import NO_WAIT, FakeLabelStudioAPI

CONFIG = '<View><Text name="text" value="$text"/><Choices name="label" toName="text"/></View>'
PROJECTS = r"/api/projects/"
IMPORT = r"/api/projects/\d+/import"
PREDICTIONS = r"/api/projects/\d+/import/predictions"
ANNOTATIONS = r"/api/tasks/\d+/annotations/"


@pytest.fixture
def api() -> FakeLabelStudioAPI:
    return FakeLabelStudioAPI()


def texts(api: FakeLabelStudioAPI, project_id: int) -> Counter[str]:
    return Counter(t.data["text"] for t in api.project_tasks(project_id))


def annotated(n: int) -> list[dict]:
    """``n`` tasks, the even ones with an inline annotation."""
    return [
        {"data": {"text": f"item {i}"}, **({"annotations": [{"result": choice_result("a")}]} if i % 2 == 0 else {})}
        for i in range(n)
    ]


# --- projects ---------------------------------------------------------------------------------------------


def test_project_committed_then_locked_is_created_once(api) -> None:
    """The incident: the create answered 500 "database is locked" after Label Studio had made the project."""
    api.fail("POST", PROJECTS, "locked-after")
    client = api.client()
    project_id = client.create_project("fn", CONFIG, "LoopML function fn: text -> a, b")
    assert list(api.projects) == [project_id]
    assert api.count("POST", PROJECTS) == 1  # found by the check, not sent again


def test_project_create_that_timed_out_after_commit_is_adopted(api) -> None:
    api.fail("POST", PROJECTS, "timeout-after")
    project_id = api.client().create_project("fn", CONFIG, "LoopML function fn: text -> a, b")
    assert list(api.projects) == [project_id] and api.count("POST", PROJECTS) == 1


def test_project_create_locked_before_commit_is_sent_again(api) -> None:
    api.fail("POST", PROJECTS, "locked", times=2)
    project_id = api.client().create_project("fn", CONFIG, "LoopML function fn: text -> a, b")
    assert list(api.projects) == [project_id] and api.count("POST", PROJECTS) == 3


def test_create_project_returns_the_existing_one(api) -> None:
    client = api.client()
    first = client.create_project("fn", CONFIG, "LoopML function fn: text -> a, b")
    assert client.create_project("fn", CONFIG, "LoopML function fn: text -> a, b") == first
    other = client.create_project("fn", CONFIG, "another description")  # another project of the same title
    assert other != first and api.count("POST", PROJECTS) == 2


def test_projects_are_matched_by_exact_title_across_pages(api) -> None:
    for i in range(150):
        api.add_project(f"fn-{i}")  # the server's title filter is a substring match
    wanted = api.add_project("fn", "LoopML function fn: x")
    client = api.client()
    assert [p.project_id for p in client.projects_titled("fn")] == [wanted]
    assert api.count("GET", PROJECTS) == 2  # two pages of 100


def test_empty_duplicates_are_deleted_and_the_others_reported(api) -> None:
    client = api.client()
    keep = api.add_project("fn", "LoopML function fn: a")
    empty = api.add_project("fn", "LoopML function fn: a")
    full = api.add_project("fn", "LoopML function fn: a")
    foreign = api.add_project("fn", "a user's project")
    client.import_tasks(full, [{"data": {"text": "x"}}])
    left = client.remove_duplicate_projects(keep, "fn", lambda p: p.description.startswith("LoopML function fn:"))
    assert [(p.project_id, p.task_count) for p in left] == [(full, 1)]
    assert sorted(api.projects) == [keep, full, foreign] and empty not in api.projects


def test_delete_committed_then_locked_is_done(api) -> None:
    project_id = api.add_project("fn")
    api.fail("DELETE", r"/api/projects/\d+/", "locked-after")
    api.client().delete_project(project_id)
    assert api.projects == {} and api.count("DELETE", r"/api/projects/\d+/") == 1


# --- reads ------------------------------------------------------------------------------------------------


def test_transient_500_on_a_listing_is_retried(api) -> None:
    project_id = api.add_project("fn")
    client = api.client()
    client.import_tasks(project_id, [{"data": {"text": "x"}}])
    api.fail("GET", r"/api/tasks/", "locked")
    assert client.task_fingerprint(project_id)[1] == 1
    assert api.count("GET", r"/api/tasks/") == 2


def test_a_listing_gives_up_after_the_retries(api) -> None:
    project_id = api.add_project("fn")
    api.fail("GET", r"/api/tasks/", "locked", times=100)
    with pytest.raises(LabelStudioError, match="HTTP 500.*database is locked"):
        api.client().task_fingerprint(project_id)
    assert api.count("GET", r"/api/tasks/") == NO_WAIT.retries + 1


def test_client_errors_are_not_retried(api) -> None:
    with pytest.raises(LabelStudioError, match="HTTP 404"):
        api.client().get_label_config(12345)
    assert api.count("GET", r"/api/projects/\d+/") == 1


def test_max_retries_zero_tries_once(api) -> None:
    project_id = api.add_project("fn")
    api.fail("GET", r"/api/tasks/", "locked", times=100)
    with pytest.raises(LabelStudioError):
        api.client(max_retries=0).task_fingerprint(project_id)
    assert api.count("GET", r"/api/tasks/") == 1


def test_a_refused_connection_fails_fast(api) -> None:
    """Label Studio down: one quick retry, then "start it with `loopml up`" (writes included: nothing was sent)."""
    project_id = api.add_project("fn")
    api.fail("GET", r"/api/tasks/", "refused", times=100)
    api.fail("POST", PROJECTS, "refused", times=100)
    client = api.client()
    with pytest.raises(LabelStudioUnavailable, match="loopml up"):
        client.task_fingerprint(project_id)
    assert api.count("GET", r"/api/tasks/") == NO_WAIT.connect_retries + 1
    api.fail("GET", PROJECTS, "refused", times=100)
    with pytest.raises(LabelStudioUnavailable, match="Connection refused"):
        client.create_project("other", CONFIG)
    assert api.count("POST", PROJECTS) == 0


def test_a_refused_write_is_sent_again(api) -> None:
    api.fail("POST", PROJECTS, "refused")
    project_id = api.client().create_project("fn", CONFIG, "d")
    assert list(api.projects) == [project_id] and api.count("POST", PROJECTS) == 2


# --- task imports -----------------------------------------------------------------------------------------


def test_short_import_is_completed_without_duplicates(api) -> None:
    project_id = api.add_project("fn")
    api.fail("POST", IMPORT, "short")
    client = api.client()
    tasks = [{"data": {"text": f"item {i}"}, "meta": {"source": "test"}} for i in range(10)]
    assert client.import_tasks(project_id, tasks) == 10
    assert texts(api, project_id) == Counter(f"item {i}" for i in range(10))
    assert api.count("POST", IMPORT) == 2
    assert {tuple(t.meta) for t in client.unlabeled_tasks(project_id, 100)} == {("source",)}  # the marker is hidden


def test_import_that_timed_out_after_commit_is_not_repeated(api) -> None:
    project_id = api.add_project("fn")
    api.fail("POST", IMPORT, "timeout-after")
    assert api.client().import_tasks(project_id, [{"data": {"text": f"item {i}"}} for i in range(5)]) == 5
    assert texts(api, project_id) == Counter(f"item {i}" for i in range(5))
    assert api.count("POST", IMPORT) == 1


def test_import_locked_after_commit_in_one_batch_of_several(api) -> None:
    project_id = api.add_project("fn")
    client = api.client()
    client.import_batch = 3
    api.fail("POST", IMPORT, "locked-after")
    api.fail("POST", IMPORT, "short")
    assert client.import_tasks(project_id, [{"data": {"text": f"item {i}"}} for i in range(8)]) == 8
    assert texts(api, project_id) == Counter(f"item {i}" for i in range(8))


def test_import_committed_after_the_check_leaves_no_copies(api) -> None:
    """The worst case: the timed-out import commits after the client looked for it and sent it again."""
    project_id = api.add_project("fn")
    api.fail("POST", IMPORT, "timeout-late")
    assert api.client().import_tasks(project_id, [{"data": {"text": f"item {i}"}} for i in range(4)]) == 4
    assert texts(api, project_id) == Counter(f"item {i}" for i in range(4))


def test_import_that_keeps_failing_says_how_much_is_missing(api) -> None:
    project_id = api.add_project("fn")
    api.fail("POST", IMPORT, "short", times=100)
    with pytest.raises(IncompleteWrite, match="created 0 of 1"):
        api.client().import_tasks(project_id, [{"data": {"text": f"item {i}"}} for i in range(8)])
    assert sum(texts(api, project_id).values()) == 7  # halves of what was missing, never a copy
    assert max(texts(api, project_id).values()) == 1


def test_inline_annotations_lost_by_the_import_are_created(api) -> None:
    """The incident: an import with inline annotations answered 201 and created none of them."""
    project_id = api.add_project("fn")
    api.fail("POST", IMPORT, "lose-annotations")
    client = api.client()
    assert client.import_tasks(project_id, annotated(6)) == 6
    by_text = {t.data["text"]: t for t in api.project_tasks(project_id)}
    assert {text: len(t.annotations) for text, t in by_text.items()} == {
        f"item {i}": 1 if i % 2 == 0 else 0 for i in range(6)
    }
    assert {t.label for t in client.changed_tasks(project_id, None) for t in t.annotations} == {"a"}


def test_annotations_made_by_the_import_are_not_repeated(api) -> None:
    project_id = api.add_project("fn")
    client = api.client()
    tasks = annotated(4)
    tasks[0]["annotations"].append({"result": choice_result("b")})  # two annotations on one task
    client.import_tasks(project_id, tasks)
    assert sum(len(t.annotations) for t in api.project_tasks(project_id)) == 3
    assert api.count("POST", ANNOTATIONS) == 0


def test_partly_lost_annotations_are_completed(api) -> None:
    """A task sent with two annotations that has one: only the missing one is created."""
    project_id = api.add_project("fn")
    client = api.client()
    tasks = [{"data": {"text": "x"}, "annotations": [{"result": choice_result("a")}, {"result": choice_result("b")}]}]
    client.import_tasks(project_id, tasks)
    (task,) = api.project_tasks(project_id)
    del task.annotations[1]  # the import lost "b"
    key = task.meta["loopml_import"].rpartition(":")[0]
    assert client._repair_annotations(project_id, key, [{**tasks[0], "meta": task.meta}]) == 1
    assert sorted(a["result"][0]["value"]["choices"][0] for a in task.annotations) == ["a", "b"]
    assert client._repair_annotations(project_id, key, [{**tasks[0], "meta": task.meta}]) == 0


# --- annotations and predictions --------------------------------------------------------------------------


def test_annotation_committed_then_locked_is_created_once(api) -> None:
    project_id = api.add_project("fn")
    client = api.client()
    client.import_tasks(project_id, [{"data": {"text": "x"}}])
    (task,) = api.project_tasks(project_id)
    api.fail("POST", ANNOTATIONS, "locked-after")
    annotation_id = client.create_annotation(task.id, "a")
    assert [a["id"] for a in task.annotations] == [annotation_id]
    assert api.count("POST", ANNOTATIONS) == 2  # sent again with the same unique_id: refused (409)


def test_skip_that_timed_out_after_commit_is_recorded_once(api) -> None:
    project_id = api.add_project("fn")
    client = api.client()
    client.import_tasks(project_id, [{"data": {"text": "x"}}])
    (task,) = api.project_tasks(project_id)
    api.fail("POST", ANNOTATIONS, "timeout-after")
    skip = client.skip_task(task.id)
    assert [(a["id"], a["was_cancelled"]) for a in task.annotations] == [(skip, True)]


def test_delete_annotation_committed_then_locked_is_done(api) -> None:
    project_id = api.add_project("fn")
    client = api.client()
    client.import_tasks(project_id, [{"data": {"text": "x"}}])
    (task,) = api.project_tasks(project_id)
    annotation_id = client.create_annotation(task.id, "a")
    api.fail("DELETE", r"/api/annotations/\d+/", "locked-after")
    client.delete_annotation(annotation_id)
    assert task.annotations == []


def _predictions(api: FakeLabelStudioAPI, project_id: int, version: str = "fn:v1") -> list[Prediction]:
    return [Prediction(t.id, "a", 0.9, version) for t in api.project_tasks(project_id)]


def test_predictions_are_not_imported_twice(api) -> None:
    project_id = api.add_project("fn")
    client = api.client()
    client.import_tasks(project_id, [{"data": {"text": f"item {i}"}} for i in range(4)])
    assert client.import_predictions(project_id, _predictions(api, project_id)) == 4
    assert client.import_predictions(project_id, _predictions(api, project_id)) == 0
    assert client.import_predictions(project_id, _predictions(api, project_id, "fn:v2")) == 4
    issue = Prediction(api.project_tasks(project_id)[0].id, "b", 0.7, "fn:v1")  # another label of the same version
    assert client.import_predictions(project_id, [issue, issue]) == 1
    assert sorted(len(t.predictions) for t in api.project_tasks(project_id)) == [2, 2, 2, 3]


def test_prediction_import_committed_then_locked_is_not_repeated(api) -> None:
    project_id = api.add_project("fn")
    client = api.client()
    client.import_tasks(project_id, [{"data": {"text": f"item {i}"}} for i in range(4)])
    api.fail("POST", PREDICTIONS, "locked-after")
    assert client.import_predictions(project_id, _predictions(api, project_id)) == 4
    assert [len(t.predictions) for t in api.project_tasks(project_id)] == [1, 1, 1, 1]
    assert api.count("POST", PREDICTIONS) == 1


def test_short_prediction_import_is_completed(api) -> None:
    project_id = api.add_project("fn")
    client = api.client()
    client.import_tasks(project_id, [{"data": {"text": f"item {i}"}} for i in range(5)])
    api.fail("POST", PREDICTIONS, "short")
    assert client.import_predictions(project_id, _predictions(api, project_id)) == 5
    assert [len(t.predictions) for t in api.project_tasks(project_id)] == [1] * 5
    assert api.count("POST", PREDICTIONS) == 2


def test_updates_are_resent_after_a_lock(api) -> None:
    project_id = api.add_project("fn")
    api.fail("PATCH", r"/api/projects/\d+/", "locked")
    client = api.client()
    client.set_model_version(project_id, "fn:v3")
    assert api.projects[project_id].extra["model_version"] == "fn:v3"


def test_a_webhook_committed_then_locked_is_registered_once(api) -> None:
    project_id = api.add_project("fn", "LoopML function fn: text -> a, b", CONFIG)
    api.fail("POST", r"/api/webhooks/", "locked-after")
    client = api.client()
    headers = {"Authorization": "Bearer k"}
    url = "http://127.0.0.1:3100/v1/hooks/labelstudio/fn"
    hook = client.create_webhook(project_id, url, headers, ["TASKS_CREATED"])
    assert list(api.webhooks) == [hook] and api.count("POST", r"/api/webhooks/") == 1
    client.delete_webhook(hook)
    assert api.webhooks == {}


def test_a_pull_given_the_fingerprint_it_just_read_asks_one_listing_less(api) -> None:
    """The annotations asset reads the fingerprint first; handing its newest ``updated_at`` to ``changed_tasks``
    spares the call that would read it again, and the result is the same."""
    project_id = api.add_project("fn")
    client = api.client()
    client.import_tasks(project_id, annotated(4))
    latest, _ = client.task_fingerprint(project_id)
    before = api.count("GET", r"/api/tasks/")
    plain = client.changed_tasks(project_id, None)
    plain_calls = api.count("GET", r"/api/tasks/") - before
    before = api.count("GET", r"/api/tasks/")
    given = client.changed_tasks(project_id, None, upper=latest)
    assert api.count("GET", r"/api/tasks/") - before == plain_calls - 1
    assert [t.task_id for t in given] == [t.task_id for t in plain] and len(given) == 2
