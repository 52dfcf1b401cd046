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
    assert code == 2 and "unknown input type 'video'" in out


def test_label_studio_not_running_says_to_run_up(monkeypatch, capsys) -> None:
    code, out = loopml(monkeypatch, capsys, "functions", "create", "ok-name", "--labels", "a,b")
    assert code == 2 and "loopml up" in out
    code, out = loopml(monkeypatch, capsys, "functions", "list")
    assert code == 0 and "no functions yet" in out


def test_status_with_nothing_running(monkeypatch, capsys) -> None:
    code, out = loopml(monkeypatch, capsys, "status")
    assert code == 0 and "labelstudio" in out and "stopped" in out and "functions: none" in out
