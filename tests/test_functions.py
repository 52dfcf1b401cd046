"""Function names, label sets and the registry."""

from dataclasses import replace

import pytest

from loopml.config import get_settings
from loopml.functions import (
    FunctionError,
    FunctionRegistry,
    FunctionSpec,
    create_function,
    labels_from_label_config,
    parse_labels,
    render_label_config,
    validate_name,
)


@pytest.mark.parametrize("name", ["review-sentiment", "a1", "news-topic-v2"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Review", "1abc", "a--b", "a_b", "-a", "a-", "x" * 49, "a b", "a/b"])
def test_invalid_names_say_what_is_allowed(name: str) -> None:
    with pytest.raises(FunctionError, match="lower-case letters"):
        validate_name(name)


def test_labels_are_stripped_and_kept_in_order() -> None:
    assert parse_labels(" positive, negative ,neutral") == ["positive", "negative", "neutral"]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("positive", "at least two labels"),
        ("a,,b", "empty label"),
        ("a,b,a", "duplicate labels"),
        ("a,<b>", "invalid label"),
        (",".join(f"l{i}" for i in range(201)), "too many labels"),
    ],
)
def test_invalid_label_sets(labels: str, message: str) -> None:
    with pytest.raises(FunctionError, match=message):
        parse_labels(labels)


def test_label_config_round_trip_escapes_labels() -> None:
    config = render_label_config("text", ["positive", "very & quite"])
    assert '<Text name="text" value="$text"/>' in config
    assert labels_from_label_config(config) == ["positive", "very & quite"]
    from loopml.functions import input_key

    assert (input_key("text"), input_key("image")) == ("text", "image")  # the tasks' data key of the input
    image = render_label_config("image", ["cat", "dog"])
    assert '<Image name="image" value="$image"' in image and 'toName="image"' in image
    assert labels_from_label_config(image) == ["cat", "dog"]
    # each label once, in the label control (not in the template's comment, which "--" in a label would end)
    dashed = render_label_config("text", ["pre--post", "b"])
    assert labels_from_label_config(dashed) == ["pre--post", "b"] and dashed.count("<Choice value=") == 3


def test_registry_add_get_list_and_unknown(tmp_path) -> None:
    settings = replace(get_settings(), home=tmp_path, database_url_override=None)
    registry = FunctionRegistry(settings)
    registry.add(FunctionSpec("b-fn", "text", ["x", "y"], "minilm-l6-int8", 3))
    registry.add(FunctionSpec("a-fn", "text", ["p", "q"], "minilm-l6-int8", 4))
    assert registry.names() == ["a-fn", "b-fn"]
    assert registry.get("b-fn").labelstudio_project_id == 3
    with pytest.raises(FunctionError, match="already exists"):
        registry.add(FunctionSpec("a-fn", "text", ["p", "q"], "minilm-l6-int8", 5))
    with pytest.raises(FunctionError, match="unknown function 'nope'.*known: a-fn, b-fn"):
        registry.get("nope")
    registry.set_labels("a-fn", ["p", "q", "r"])
    assert registry.get("a-fn").labels == ["p", "q", "r"]


# --- create_function: idempotent, whatever Label Studio answers ----------------------------------------------


@pytest.fixture
def partitions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Dagster partitions create_function asks for (no Dagster needed)."""
    import loopml.dagster_api

    added: list[str] = []
    monkeypatch.setattr(loopml.dagster_api, "add_function_partition", lambda url, name: added.append(name) or True)
    return added


@pytest.fixture
def api():
    from tests.fake_labelstudio_api import FakeLabelStudioAPI

    return FakeLabelStudioAPI()


def test_create_function_twice_leaves_one_project(settings, api, partitions) -> None:
    client = api.client()
    first = create_function(settings, "fn", "text", "a,b", client=client)
    again = create_function(settings, "fn", "text", "b, a", client=client)  # the same label set
    assert again == first and list(api.projects) == [first]
    assert api.projects[first].description == "LoopML function fn: text -> a, b"
    assert FunctionRegistry(settings).get("fn").labelstudio_project_id == first
    assert partitions == ["fn", "fn"]  # a partition missing after the first run is added by the second


def test_create_function_with_a_locked_create_leaves_one_project(settings, api, partitions) -> None:
    """The incident: Label Studio made the project, then answered 500 "database is locked"."""
    api.fail("POST", r"/api/projects/", "locked-after")
    project_id = create_function(settings, "fn", "text", "a,b", client=api.client())
    assert list(api.projects) == [project_id]
    assert FunctionRegistry(settings).get("fn").labelstudio_project_id == project_id


def test_concurrent_creates_agree_on_the_oldest_project(settings, api, partitions) -> None:
    """Another `functions create` of the same name made its project between this one's check and create."""
    api.fail("POST", r"/api/projects/", "concurrent")
    project_id = create_function(settings, "fn", "text", "a,b", client=api.client())
    assert list(api.projects) == [project_id]  # the other's, the older
    assert ("DELETE", f"/api/projects/{project_id + 1}/") in api.requests  # ours, newer and empty
    assert FunctionRegistry(settings).get("fn").labelstudio_project_id == project_id


def test_create_function_with_other_labels_or_type_fails(settings, api, partitions) -> None:
    client = api.client()
    project_id = create_function(settings, "fn", "text", "a,b", client=client)
    with pytest.raises(FunctionError, match="already exists as text -> a, b.*add-label"):
        create_function(settings, "fn", "text", "a,b,c", client=client)
    with pytest.raises(FunctionError, match="already exists with encoder minilm-l6-int8"):
        create_function(settings, "fn", "text", "a,b", encoder_id="e5-small-q4", client=client)
    assert list(api.projects) == [project_id] and FunctionRegistry(settings).get("fn").labels == ["a", "b"]


def test_create_function_adopts_the_project_of_an_interrupted_create(settings, api, partitions) -> None:
    """Interrupted after Label Studio made the project, before the registry row: the next run adopts it."""
    orphan = api.add_project("fn", "LoopML function fn: text -> a, b", render_label_config("text", ["a", "b"]))
    said: list[str] = []
    assert create_function(settings, "fn", "text", "a,b", client=api.client(), echo=said.append) == orphan
    assert list(api.projects) == [orphan] and FunctionRegistry(settings).get("fn").labelstudio_project_id == orphan
    assert said == [f"function fn: adopting Label Studio project {orphan}, made by an earlier attempt"]
    (hook,) = api.webhooks.values()  # annotation changes reach the serving API's hook route
    assert hook["project"] == orphan and hook["url"].endswith("/v1/hooks/labelstudio/fn")
    assert create_function(settings, "fn", "text", "a,b", client=api.client()) == orphan
    assert len(api.webhooks) == 1  # registered once


def test_create_function_does_not_adopt_a_project_with_other_labels(settings, api, partitions) -> None:
    orphan = api.add_project("fn", "LoopML function fn: text -> x, y", render_label_config("text", ["x", "y"]))
    with pytest.raises(FunctionError, match=f"project {orphan} .*has the labels x, y"):
        create_function(settings, "fn", "text", "a,b", client=api.client())
    assert FunctionRegistry(settings).find("fn") is None and partitions == []


def test_create_function_keeps_the_oldest_project_and_deletes_empty_duplicates(settings, api, partitions) -> None:
    config = render_label_config("text", ["a", "b"])
    oldest, empty, full = (api.add_project("fn", "LoopML function fn: text -> a, b", config) for _ in range(3))
    users = api.add_project("fn", "not LoopML's", config)
    client = api.client()
    client.import_tasks(full, [{"data": {"text": "kept"}}])
    said: list[str] = []
    assert create_function(settings, "fn", "text", "a,b", client=client, echo=said.append) == oldest
    assert sorted(api.projects) == [oldest, full, users]
    assert f"duplicates {full} (1 tasks) have tasks and were kept" in said[-1]


def test_registered_function_whose_project_was_deleted_gets_a_new_one(settings, api, partitions) -> None:
    client = api.client()
    gone = create_function(settings, "fn", "text", "a,b", client=client)
    client.delete_project(gone)
    said: list[str] = []
    again = create_function(settings, "fn", "text", "a,b", client=client, echo=said.append)
    assert again != gone and list(api.projects) == [again]
    assert FunctionRegistry(settings).get("fn").labelstudio_project_id == again
    assert said == [f"Label Studio project {gone} of function fn no longer exists; it gets a new, empty one"]


def test_registered_function_keeps_its_project_over_an_older_duplicate(settings, api, partitions) -> None:
    config = render_label_config("text", ["a", "b"])
    older = api.add_project("fn", "LoopML function fn: text -> a, b", config)
    FunctionRegistry(settings).add(FunctionSpec("fn", "text", ["a", "b"], "minilm-l6-int8", None))
    registered = api.add_project("fn", "LoopML function fn: text -> a, b", config)
    FunctionRegistry(settings).set_project("fn", registered)
    assert create_function(settings, "fn", "text", "a,b", client=api.client()) == registered
    assert list(api.projects) == [registered] and older not in api.projects


# --- against the real server ------------------------------------------------------------------------------


def _unique(prefix: str) -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.e2e
def test_e2e_creating_a_function_twice_leaves_one_project(labelstudio, partitions) -> None:
    name = _unique("twice")
    first = create_function(labelstudio.settings, name, "text", "a,b")
    assert create_function(labelstudio.settings, name, "text", "a,b") == first
    assert [p.project_id for p in labelstudio.client.projects_titled(name)] == [first]
    with pytest.raises(FunctionError, match="already exists"):
        create_function(labelstudio.settings, name, "text", "a,c")


@pytest.mark.e2e
def test_e2e_a_create_interrupted_after_the_project_is_adopted(labelstudio, partitions) -> None:
    from loopml.functions import project_description

    name = _unique("interrupted")
    client = labelstudio.client
    orphan = client.create_project(
        name, render_label_config("text", ["a", "b"]), project_description(name, "text", ["a", "b"])
    )
    assert create_function(labelstudio.settings, name, "text", "a,b") == orphan
    assert FunctionRegistry(labelstudio.settings).get(name).labelstudio_project_id == orphan
    assert [p.project_id for p in client.projects_titled(name)] == [orphan]


@pytest.mark.e2e
def test_e2e_duplicate_projects_are_cleaned_up(labelstudio, partitions) -> None:
    from loopml.functions import project_description

    name = _unique("dupes")
    client = labelstudio.client
    config, description = render_label_config("text", ["a", "b"]), project_description(name, "text", ["a", "b"])
    made = [  # what the SDK's retries of a non-idempotent POST left behind
        int(client.sdk.projects.create(title=name, label_config=config, description=description).id) for _ in range(4)
    ]
    client.import_tasks(made[3], [{"data": {"text": "someone's work"}}])
    said: list[str] = []
    try:
        assert create_function(labelstudio.settings, name, "text", "a,b", echo=said.append) == made[0]
        assert [p.project_id for p in client.projects_titled(name)] == [made[0], made[3]]
        assert f"duplicates {made[3]} (1 tasks) have tasks and were kept" in said[-1]
    finally:
        for project in client.projects_titled(name)[1:]:
            client.delete_project(project.project_id)


def test_an_image_function_gets_an_image_project_and_the_image_encoder(settings, api, partitions) -> None:
    from loopml.encoders import IMAGE_ENCODER, IMAGE_ENCODER_SMALL

    project_id = create_function(settings, "tone", "image", "light,dark", client=api.client())
    spec = FunctionRegistry(settings).get("tone")
    assert (spec.input_type, spec.encoder_id) == ("image", IMAGE_ENCODER)
    assert '<Image name="image" value="$image"' in api.projects[project_id].label_config
    create_function(settings, "tone-fast", "image", "light,dark", encoder_id=IMAGE_ENCODER_SMALL, client=api.client())
    assert FunctionRegistry(settings).get("tone-fast").encoder_id == IMAGE_ENCODER_SMALL
    with pytest.raises(FunctionError, match="unknown image encoder 'minilm-l6-int8'"):
        create_function(settings, "tone-2", "image", "a,b", encoder_id="minilm-l6-int8", client=api.client())
    with pytest.raises(FunctionError, match="unknown input type 'audio'; supported: text, image"):
        create_function(settings, "noise", "audio", "a,b", client=api.client())
