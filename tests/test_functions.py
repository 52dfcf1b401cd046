"""Function names, label sets and the registry."""

from dataclasses import replace

import pytest

from loopml.config import get_settings
from loopml.functions import (
    FunctionError,
    FunctionRegistry,
    FunctionSpec,
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
