"""Closed doors: Label Studio's sign-up, Dagster's bind address, file modes under LOOPML_HOME. (API key scopes are
tested through the serving app: tests/test_service_asgi.py::test_keys_are_scoped_to_functions_and_rights.)"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

from loopml.config import get_settings
from loopml.labelstudio_server import USERNAME
from loopml.permissions import open_paths, secure_home
from loopml.services import ServiceError, check_dagster_bind


@pytest.mark.e2e
def test_label_studio_refuses_a_sign_up(labelstudio) -> None:
    """A stranger who reaches Label Studio's port cannot make an account (and so cannot see or relabel any project);
    the only account is the one LoopML made."""
    with requests.Session() as stranger:
        page = stranger.get(f"{labelstudio.url}/user/signup/", timeout=30)
        token = stranger.cookies.get("csrftoken") or re.search(
            r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text
        ).group(1)  # type: ignore[union-attr]
        response = stranger.post(
            f"{labelstudio.url}/user/signup/",
            data={"csrfmiddlewaretoken": token, "email": "intruder@example.com", "password": "intruder-pass-123"},
            headers={"Referer": f"{labelstudio.url}/user/signup/"},
            allow_redirects=False,
            timeout=30,
        )
        assert response.status_code == 403, (response.status_code, response.text[:300])
    users = requests.get(
        f"{labelstudio.url}/api/users/", headers={"Authorization": f"Token {labelstudio.api_key}"}, timeout=30
    ).json()
    assert [user["email"] for user in users] == [USERNAME]


@pytest.mark.parametrize(
    ("host", "expose", "refused"),
    [
        ("127.0.0.1", "", False),
        ("localhost", "", False),
        ("0.0.0.0", "", True),
        ("10.1.2.3", "", True),
        ("0.0.0.0", "1", False),
    ],
)
def test_dagster_stays_on_loopback_unless_asked(host: str, expose: str, refused: bool) -> None:
    settings = get_settings({"LOOPML_DAGSTER_HOST": host})
    if refused:
        with pytest.raises(ServiceError, match="no authentication.*LOOPML_DAGSTER_EXPOSE=1"):
            check_dagster_bind(settings, {"LOOPML_DAGSTER_EXPOSE": expose})
    else:
        check_dagster_bind(settings, {"LOOPML_DAGSTER_EXPOSE": expose})
    assert settings.dagster_url.startswith("http://127.0.0.1:") or host not in ("0.0.0.0",)


def test_the_home_is_made_private_and_links_are_not_followed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "labelstudio" / "media").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("not LoopML's")
    os.chmod(outside, 0o644)
    for path, mode in [
        (home / "loopml.db", 0o644),
        (home / "labelstudio" / "label_studio.sqlite3", 0o664),
        (home / "labelstudio" / "media" / "a.png", 0o666),
        (home / "run.sh", 0o755),
    ]:
        path.write_bytes(b"x")
        os.chmod(path, mode)
    for folder in (home, home / "labelstudio", home / "labelstudio" / "media"):
        os.chmod(folder, 0o755)
    (home / "link").symlink_to(outside)
    assert len(open_paths(home)) == 7
    tightened = secure_home(home)
    assert (tightened.folders, tightened.files) == (3, 4)
    assert open_paths(home) == []
    assert (home / "loopml.db").stat().st_mode & 0o777 == 0o600
    assert (home / "run.sh").stat().st_mode & 0o777 == 0o700  # the owner's execute bit kept
    assert (home / "labelstudio").stat().st_mode & 0o777 == 0o700
    assert outside.stat().st_mode & 0o777 == 0o644
    assert secure_home(home).any is False  # a second pass finds nothing
