"""The `loopml` command's user-facing errors (no services needed)."""

from __future__ import annotations

import sys

import pytest

from loopml.cli import run


def loopml(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["loopml", *args])
    try:
        run()
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path))
    monkeypatch.setenv("LOOPML_LABELSTUDIO_PORT", "1")  # nothing listens there
    return tmp_path


def test_invalid_name_is_refused_before_anything_is_created(monkeypatch, capsys) -> None:
    code, out = loopml(monkeypatch, capsys, "functions", "create", "Bad_Name", "--labels", "a,b")
    assert code == 2 and "invalid function name 'Bad_Name'" in out


def test_invalid_label_set_is_refused(monkeypatch, capsys) -> None:
    code, out = loopml(monkeypatch, capsys, "functions", "create", "ok-name", "--labels", "a,a")
    assert code == 2 and "duplicate labels" in out


def test_unknown_input_type(monkeypatch, capsys) -> None:
    code, out = loopml(monkeypatch, capsys, "functions", "create", "ok-name", "--type", "video", "--labels", "a,b")
    assert code == 2 and "'video' is not one of 'text', 'image'" in out


def test_unknown_encoder_is_refused_before_anything_is_created(monkeypatch, capsys) -> None:
    code, out = loopml(monkeypatch, capsys, "functions", "create", "ok-name", "--labels", "a,b", "--encoder", "bert")
    assert code == 2 and "unknown text encoder 'bert'" in out and "e5-small-q4" in out and "minilm-l6-int8" in out
    # an image encoder does not read text
    code, out = loopml(
        monkeypatch, capsys, "functions", "create", "ok-name", "--labels", "a,b", "--encoder", "efficientnet-lite0-224"
    )
    assert code == 2 and "unknown text encoder 'efficientnet-lite0-224'" in out


def test_label_studio_not_running_says_to_run_up(monkeypatch, capsys) -> None:
    code, out = loopml(monkeypatch, capsys, "functions", "create", "ok-name", "--labels", "a,b")
    assert code == 2 and "loopml up" in out
    code, out = loopml(monkeypatch, capsys, "functions", "list")
    assert code == 0 and "no functions yet" in out


def test_up_refuses_shared_or_taken_ports_before_starting_anything(monkeypatch, capsys, home) -> None:
    import socket

    from tests.conftest import free_ports

    label_studio, dagster, serving = free_ports(3)
    monkeypatch.setenv("LOOPML_LABELSTUDIO_PORT", str(label_studio))
    monkeypatch.setenv("LOOPML_DAGSTER_PORT", str(dagster))
    monkeypatch.setenv("LOOPML_SERVING_PORT", str(dagster))
    code, out = loopml(monkeypatch, capsys, "up")
    assert code == 1 and "LOOPML_DAGSTER_PORT and LOOPML_SERVING_PORT are both" in out
    monkeypatch.setenv("LOOPML_SERVING_PORT", str(serving))
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", serving))
        other_program.listen()
        code, out = loopml(monkeypatch, capsys, "up")
    assert code == 1 and f"port {serving} (LOOPML_SERVING_PORT) is already in use by another program" in out
    assert not list((home / "run").glob("*.pid"))  # nothing was started


def test_status_with_nothing_running(monkeypatch, capsys) -> None:
    code, out = loopml(monkeypatch, capsys, "status")
    assert code == 0 and "labelstudio" in out and "stopped" in out and "functions: none" in out


def test_deployments_promote_and_rollback_by_hand(monkeypatch, capsys) -> None:
    from loopml.config import get_settings
    from loopml.deployments import DeploymentStore
    from loopml.functions import FunctionRegistry, FunctionSpec

    settings = get_settings()
    settings.ensure_dirs()
    FunctionRegistry(settings).add(FunctionSpec("fn", "text", ["a", "b"], "minilm-l6-int8", 1))
    code, out = loopml(monkeypatch, capsys, "deployments", "fn")
    assert code == 0 and "nothing deployed yet" in out
    code, out = loopml(monkeypatch, capsys, "promote", "fn")
    assert code == 2 and "no canary to promote" in out
    store = DeploymentStore(settings)
    store.set_primary("fn", "fn:v1", "first")
    store.start_canary("fn", "fn:v2", 0.1, "gate passed")
    code, out = loopml(monkeypatch, capsys, "rollback", "fn")
    assert code == 0 and "primary fn:v1 serves all traffic" in out
    store.start_canary("fn", "fn:v3", 0.1, "gate passed")
    store.record("fn", "wait", "gate passed; waits for the rollout", details={"candidate": "fn:v4"})
    code, out = loopml(monkeypatch, capsys, "promote", "fn", "--reason", "looks good")
    assert code == 0 and "primary is now fn:v3" in out
    assert "fn:v4 waited for this rollout; the canary controller gates it" in out
    code, out = loopml(monkeypatch, capsys, "deployments", "fn")
    assert "primary fn:v3" in out and "by cli: looks good" in out and "rollback" in out
    code, out = loopml(monkeypatch, capsys, "deployments", "nope")
    assert code == 2 and "unknown function 'nope'" in out


def test_add_and_remove_label_commands(monkeypatch, capsys) -> None:
    """`functions add-label` / `remove-label`: what changed, what to do next, and clear refusals (Label Studio's
    label config is written by the same call; here it is recorded instead of sent)."""
    from loopml import evolution
    from loopml.config import get_settings
    from loopml.functions import FunctionRegistry, FunctionSpec

    pushed: list[list[str]] = []
    monkeypatch.setattr(evolution, "_push_label_config", lambda settings, fn, labels: pushed.append(labels))
    FunctionRegistry(get_settings()).add(FunctionSpec("reviews", "text", ["pos", "neg"], "minilm-l6-int8", 1))

    code, out = loopml(monkeypatch, capsys, "functions", "add-label", "reviews", "mixed")
    assert code == 0 and "added ['mixed']" in out and "annotate at least 3 examples of 'mixed'" in out
    assert pushed == [["pos", "neg", "mixed"]]
    code, out = loopml(monkeypatch, capsys, "functions", "add-label", "reviews", "mixed")
    assert code != 0 and "already has the label 'mixed'" in out
    code, out = loopml(monkeypatch, capsys, "functions", "remove-label", "reviews", "neg")
    assert code == 0 and "removed ['neg']" in out and "excluded from the next version" in out
    code, out = loopml(monkeypatch, capsys, "functions", "remove-label", "reviews", "nope")
    assert code != 0 and "has no label 'nope'" in out
    code, out = loopml(monkeypatch, capsys, "functions", "remove-label", "reviews", "pos")
    assert code != 0 and "needs at least 2 labels" in out
    assert FunctionRegistry(get_settings()).get("reviews").labels == ["pos", "mixed"]
    assert pushed == [["pos", "neg", "mixed"], ["pos", "mixed"]]  # refusals change nothing
