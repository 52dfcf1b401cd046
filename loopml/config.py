"""Where LoopML keeps what it makes, and how to reach its services.

Everything a run creates lives under ``LOOPML_HOME`` (default ``.loopml/`` in the checkout). Settings are
read from the environment when :func:`get_settings` is called, never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from loopml.stores import Stores

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MAX_TEXT_BYTES = 1 << 20  # LOOPML_MAX_TEXT_BYTES: the longest text the serving API and `items add` take
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    home: Path
    labelstudio_host: str
    labelstudio_port: int
    dagster_port: int
    serving_port: int
    database_url_override: str | None
    annotation_poll_seconds: int
    min_examples_per_label: int
    dagster_host: str = "127.0.0.1"  # LOOPML_DAGSTER_HOST; another address needs LOOPML_DAGSTER_EXPOSE=1
    broker_url: str | None = None  # LOOPML_BROKER_URL: Dagster runs on Celery workers (pipelines/celery_runs.py)

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @property
    def labelstudio_data_dir(self) -> Path:
        return self.home / "labelstudio"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def run_dir(self) -> Path:
        """PID files and service logs."""
        return self.home / "run"

    @property
    def run_worker_socket(self) -> Path:
        """Where the warm run worker (pipelines/run_worker.py) listens."""
        return self.run_dir / "run-worker.sock"

    @property
    def code_server_socket(self) -> Path:
        """Where the Dagster code server (the code location, loaded once) listens."""
        return self.run_dir / "code-server.sock"

    @property
    def workspace_file(self) -> Path:
        """The Dagster workspace `loopml up` gives the webserver and the daemon: the running code server."""
        return self.run_dir / "workspace.yaml"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def database_url(self) -> str:
        if self.database_url_override:
            return self.database_url_override
        return f"sqlite:///{self.home / 'loopml.db'}"

    @property
    def stores(self) -> Stores:
        """The platform database, Dagster's storage and Label Studio's database (:mod:`loopml.stores`)."""
        from loopml.stores import stores_for

        return stores_for(self.database_url)

    @property
    def labelstudio_url(self) -> str:
        return f"http://{self.labelstudio_host}:{self.labelstudio_port}"

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.serving_port}"

    @property
    def dagster_url(self) -> str:
        host = "127.0.0.1" if self.dagster_host in ("0.0.0.0", "::", "") else self.dagster_host
        return f"http://{host}:{self.dagster_port}"

    def ensure_dirs(self) -> None:
        for path in (
            self.home,
            self.dagster_home,
            self.bentoml_home,
            self.labelstudio_data_dir,
            self.data_dir,
            self.features_dir,
            self.run_dir,
            self.tmp_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)  # the owner's alone (loopml.permissions: `loopml up` tightens what is inside)
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)


def usable_cores() -> int:
    """The number of CPU cores this process may run on (its affinity mask on Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def env_int(name: str, default: int) -> int:
    """A positive whole number from the environment variable ``name`` (``default`` when unset); a clear
    :class:`ValueError` for anything else."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as error:
        raise ValueError(f"{name}={raw!r} is not an integer; unset it or give a whole number") from error
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is switched on (1, true, yes or on; anything else is off)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def gpu_mode() -> Literal["auto", "on", "off"]:
    """``LOOPML_SERVING_GPU``: ``auto`` (default: a GPU when present), ``on`` or ``off`` (0/false/no/off)."""
    flag = os.environ.get("LOOPML_SERVING_GPU", "auto").strip().lower()
    if flag in _FALSE:
        return "off"
    if flag in ("1", "true", "yes", "on"):
        return "on"
    return "auto"


def get_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from the environment (``LOOPML_*`` variables), or from ``environ`` if given."""
    env = os.environ if environ is None else environ
    home = Path(env.get("LOOPML_HOME", PROJECT_ROOT / ".loopml")).resolve()
    return Settings(
        home=home,
        labelstudio_host=env.get("LOOPML_LABELSTUDIO_HOST", "127.0.0.1"),
        labelstudio_port=int(env.get("LOOPML_LABELSTUDIO_PORT", "8080")),
        dagster_port=int(env.get("LOOPML_DAGSTER_PORT", "3000")),
        serving_port=int(env.get("LOOPML_SERVING_PORT", "3100")),
        dagster_host=env.get("LOOPML_DAGSTER_HOST", "127.0.0.1"),
        database_url_override=env.get("LOOPML_DATABASE_URL") or None,
        annotation_poll_seconds=int(env.get("LOOPML_ANNOTATION_POLL_SECONDS", "10")),
        min_examples_per_label=int(env.get("LOOPML_MIN_EXAMPLES_PER_LABEL", "3")),
        broker_url=env.get("LOOPML_BROKER_URL") or None,
    )
