"""Run the Label Studio server (its own application in ``.venv-labelstudio``) headless, owned by LoopML.

Auth: LoopML generates a username, password and a 40-character API key once (``secrets/labelstudio.json``,
mode 0600) and hands them to ``label-studio start --enable-legacy-api-token`` in its environment (not in
``ps``). On the first start (empty data dir) Label Studio creates the user with that key as its legacy
``Token`` and enables legacy tokens for the organization; both live in its database, so the same key keeps
working after restarts (later starts leave the existing user alone). ``label_studio_sdk.LabelStudio`` sends
a non-JWT ``api_key`` as ``Authorization: Token <key>``. Personal access tokens (JWT) would need a form login
first; ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN`` only acts when the organization is created.

Everything the server writes stays under ``settings.labelstudio_data_dir`` (its database, media, and the
HOME/XDG folders it would otherwise create in the user's home).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from loopml.config import PROJECT_ROOT, Settings

USERNAME = "admin@loopml.local"
CREDENTIALS_FILE = "labelstudio.json"
# Variables of the parent environment that must not leak into Label Studio's own Python.
_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")


class LabelStudioNotInstalled(FileNotFoundError):
    """The ``label-studio`` executable is missing."""


class LabelStudioStartError(RuntimeError):
    """The server died or did not become healthy in time."""


@dataclass(frozen=True)
class LabelStudioCredentials:
    username: str
    password: str
    api_key: str


def labelstudio_bin() -> Path:
    """``$LOOPML_LABELSTUDIO_BIN``, else ``.venv-labelstudio/bin/label-studio`` in the checkout."""
    override = os.environ.get("LOOPML_LABELSTUDIO_BIN")
    path = Path(override) if override else PROJECT_ROOT / ".venv-labelstudio" / "bin" / "label-studio"
    if not path.is_file():
        raise LabelStudioNotInstalled(
            f"Label Studio is not installed: {path} does not exist; run `make install` "
            "(or point LOOPML_LABELSTUDIO_BIN at a `label-studio` executable)"
        )
    return path


def credentials_path(settings: Settings) -> Path:
    return settings.secrets_dir / CREDENTIALS_FILE


def load_credentials(settings: Settings) -> LabelStudioCredentials | None:
    """The saved credentials, or ``None`` if none were generated yet."""
    path = credentials_path(settings)
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return LabelStudioCredentials(username=raw["username"], password=raw["password"], api_key=raw["api_key"])


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to ``path`` with mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_credentials(settings: Settings) -> LabelStudioCredentials:
    """Load the credentials, generating and saving them (mode 0600) the first time."""
    existing = load_credentials(settings)
    if existing is not None:
        return existing
    settings.secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.secrets_dir, 0o700)
    # The DRF token column holds at most 40 characters: token_hex(20) fills it exactly.
    creds = LabelStudioCredentials(USERNAME, secrets.token_hex(16), secrets.token_hex(20))
    _write_private(credentials_path(settings), json.dumps(asdict(creds), indent=2) + "\n")
    return creds


def labelstudio_env(settings: Settings, creds: LabelStudioCredentials) -> dict[str, str]:
    """Environment of the server process: data, HOME and XDG dirs under the data dir, no telemetry.

    The user, password and token are passed here rather than as ``--username/--password/--user-token``
    (which Label Studio also accepts) so that they do not show in ``ps``.
    """
    data = settings.labelstudio_data_dir
    home = data / "home"
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data),
        LABEL_STUDIO_USERNAME=creds.username,
        LABEL_STUDIO_PASSWORD=creds.password,
        LABEL_STUDIO_USER_TOKEN=creds.api_key,
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        LABEL_STUDIO_SENTRY_DSN="",
        LABEL_STUDIO_FRONTEND_SENTRY_DSN="",
        LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_LATEST_VERSION_CHECK="false",
        LABEL_STUDIO_COLLECT_ANALYTICS="false",
        # invite only: an open sign-up would let anyone who reaches the port see and relabel every project
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        TZ="UTC",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings.stores.labelstudio_env())  # PostgreSQL when LOOPML_DATABASE_URL is one (loopml/stores.py)
    return env


def labelstudio_argv(settings: Settings) -> list[str]:
    """``label-studio start`` headless on the configured host and port (credentials go in the environment)."""
    return [
        str(labelstudio_bin()),
        "start",
        "--no-browser",
        "--internal-host",
        settings.labelstudio_host,
        "-p",
        str(settings.labelstudio_port),
        "--enable-legacy-api-token",
    ]


def start_labelstudio(settings: Settings, log_path: Path) -> subprocess.Popen:
    """Start the server detached (own session, survives the caller), its output appended to ``log_path``.

    Returns at once; use :func:`wait_healthy`. The first start runs migrations (about 30 s).
    """
    creds = ensure_credentials(settings)
    argv = labelstudio_argv(settings)
    data = settings.labelstudio_data_dir
    (data / "home").mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            cwd=data,
            env=labelstudio_env(settings, creds),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def is_healthy(url: str, timeout_s: float = 2.0) -> bool:
    """``GET {url}/health`` answers 200."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(log_path: Path | None, lines: int = 30) -> str:
    if log_path is None or not log_path.is_file():
        return "(no log)"
    with open(log_path, "rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - 64_000))
        text = handle.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def wait_healthy(url: str, proc: subprocess.Popen | None = None, log_path: Path | None = None) -> float:
    """Wait for ``/health`` for as long as the server makes progress (a first start's migrations take minutes on
    a loaded machine); raise :class:`LabelStudioStartError` if ``proc`` exits or hangs. Returns seconds waited."""
    from loopml.readiness import NotReady, Progress, wait_ready

    try:
        return wait_ready(
            lambda: is_healthy(url),
            f"Label Studio on {url}",
            Progress(log_path, proc.pid if proc is not None else None),
            tail=lambda: f"last lines of {log_path or 'its log'}:\n{log_tail(log_path)}",
        )
    except NotReady as error:
        raise LabelStudioStartError(str(error)) from error


def check_api_key(url: str, api_key: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`LabelStudioStartError` if the server rejects ``api_key`` (secrets and data diverged)."""
    request = urllib.request.Request(
        f"{url.rstrip('/')}/api/current-user/whoami", headers={"Authorization": f"Token {api_key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise LabelStudioStartError(
                f"Label Studio at {url} rejects the API key in secrets/{CREDENTIALS_FILE}: its data dir was "
                "created with other credentials. Restore that file, or remove the Label Studio data dir "
                "(this deletes its projects) and start again."
            ) from error
        raise LabelStudioStartError(f"Label Studio at {url} answered HTTP {error.code} to whoami") from error
