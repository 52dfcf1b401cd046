"""Start, stop and inspect the platform's services: Label Studio, the Dagster webserver and daemon.

Each service runs detached in its own process group; its PID file and log live in LOOPML_HOME/run, so
``loopml down`` stops exactly what ``loopml up`` started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from loopml.config import PROJECT_ROOT, Settings

WARM_LAUNCHER = """\
# Runs fork from a warm worker that has the stack imported (Dagster's default launcher when it is down).
run_launcher:
  module: pipelines.run_worker
  class: WarmRunLauncher
"""
DAGSTER_YAML = (
    """\
# Written by `loopml up`. Dagster's instance for LoopML (SQLite storage in this folder, or PostgreSQL: `storage`).
telemetry:
  enabled: false
# no new-user pop-up (the community invitation) over the graph on the first visit
nux:
  enabled: false
# Runs launch at once (no queue hop): the annotation sensor already allows one run per function.
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
"""
    + WARM_LAUNCHER
    + """\
run_retries:
  enabled: true
# a run whose process died (kill -9, out of memory) is marked failed within seconds (the launcher checks its
# PID, or pings its Celery worker) and retried (train_function: dagster/max_retries), so the annotation sensor
# never waits on a dead run
run_monitoring:
  enabled: true
  poll_interval_seconds: 5
  start_timeout_seconds: 180
  cancel_timeout_seconds: 60
  max_resume_run_attempts: 0
# sensors wait on Label Studio and the code server, not the CPU: four at once, so the annotation sensor never
# queues behind the others
sensors:
  use_threads: true
  num_workers: 4
schedules:
  use_threads: true
  num_workers: 2
# the annotation sensor ticks every second: keep its skipped ticks for a day, not Dagster's default week
retention:
  sensor:
    purge_after_days:
      skipped: 1
"""
)


class ServiceError(RuntimeError):
    """A service failed to start or is not healthy; the message says where to look."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    url: str | None


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.log"


def read_pid(settings: Settings, name: str) -> int | None:
    path = _pid_file(settings, name)
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return True


def service_env(settings: Settings) -> dict[str, str]:
    """Environment for every service: LoopML's home, Dagster's home, nothing written to ~."""
    env = dict(os.environ)
    env.update(
        LOOPML_HOME=str(settings.home),
        DAGSTER_HOME=str(settings.dagster_home),
        BENTOML_HOME=str(settings.bentoml_home),
        BENTOML_DO_NOT_TRACK="true",
        TMPDIR=str(settings.tmp_dir),
        XDG_CACHE_HOME=str(settings.home / "cache"),  # onnxruntime and others keep caches there, not in ~
        PYTHONUNBUFFERED="1",
    )
    return env


def spawn(settings: Settings, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` detached (own session) with its output in the service log; record its PID."""
    log = open(log_file(settings, name), "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        argv,
        cwd=PROJECT_ROOT,
        env=env or service_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    _pid_file(settings, name).write_text(str(proc.pid))
    return proc


def stop(settings: Settings, name: str, timeout_s: float = 15.0) -> bool:
    """Stop a service's whole process group: SIGTERM, then SIGKILL after ``timeout_s``. Its descendants in other
    sessions too, but for the supervisor's: the services it restarted are not part of it."""
    pid = read_pid(settings, name)
    _pid_file(settings, name).unlink(missing_ok=True)
    if not pid_alive(pid):
        return False
    assert pid is not None
    # some servers start workers in sessions of their own
    descendants = _descendants(pid) if name != "supervisor" else []
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        _signal_all(pid, descendants, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid) and not any(pid_alive(child.pid) for child in descendants):
                return True
            time.sleep(0.2)
    return True


def _signal_all(pid: int, descendants: list, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    for child in descendants:
        try:
            child.send_signal(sig)
        except Exception:  # noqa: BLE001 - already gone
            pass


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def dagster_healthy(settings: Settings) -> bool:
    return http_ok(f"{settings.dagster_url}/server_info")


def _venv_bin(tool: str) -> str:
    return str(Path(sys.executable).parent / tool)


def dagster_yaml(settings: Settings) -> str:
    """The instance config: :data:`DAGSTER_YAML`, with PostgreSQL storage when the platform database is there,
    and dagster-celery's run launcher in place of the warm run worker's when a broker is set
    (``LOOPML_BROKER_URL``)."""
    text = DAGSTER_YAML + settings.stores.dagster_storage_yaml()
    if settings.broker_url:
        from pipelines.celery_runs import launcher_yaml

        text = text.replace(WARM_LAUNCHER, launcher_yaml(settings.broker_url, settings.database_url))
    return text


def write_dagster_yaml(settings: Settings) -> None:
    path = settings.dagster_home / "dagster.yaml"
    text = dagster_yaml(settings)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


CODE_LOCATION = "loopml"  # the location name of workspace.yaml


def workspace_yaml(settings: Settings) -> str:
    """The workspace of the webserver and the daemon: the code server `loopml up` runs (see start_code_server)."""
    return (
        "# Written by `loopml up`: the webserver and the daemon share one running code server.\n"
        "# (The repository's workspace.yaml loads the same code location in-process, for `dagster dev`.)\n"
        "load_from:\n"
        "  - grpc_server:\n"
        f"      socket: {settings.code_server_socket}\n"
        f"      location_name: {CODE_LOCATION}\n"
    )


def start_code_server(settings: Settings) -> None:
    """Dagster's code server for the code location (``dagster api grpc``), shared by the webserver and the daemon.

    Given a ``python_module`` workspace, each of them would start a code server of its own, and the daemon would
    replace its own every 60 s (importing the whole code location again: seconds of CPU, sensor ticks stalled
    meanwhile). A standalone server, as Dagster recommends in production, loads the code once. After editing
    pipeline code, restart it (``loopml down && loopml up``), as the run worker.
    """
    path = settings.code_server_socket
    write_dagster_yaml(settings)
    if pid_alive(read_pid(settings, "code-server")):
        return
    path.unlink(missing_ok=True)  # left by a crash: the server would not bind
    settings.workspace_file.write_text(workspace_yaml(settings))
    spawn(
        settings,
        "code-server",
        [
            sys.executable,
            "-m",
            "pipelines.code_server",  # `dagster api grpc` with the storage speed-ups (pipelines/storage_speedups.py)
            "--socket",
            str(path),
            "--module-name",
            "pipelines.definitions",
            "--attribute",
            "defs",
            "--working-directory",
            str(PROJECT_ROOT),
            "--location-name",
            CODE_LOCATION,
        ],
    )


def socket_answers(path: Path) -> bool:
    """Whether a server accepts connections on the Unix socket ``path``."""
    import socket

    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(2)
        try:
            conn.connect(str(path))
        except OSError:
            return False
    return True


def code_server_ready(settings: Settings) -> bool:
    """The code server has loaded the code location and listens (it binds its socket only after loading)."""
    return pid_alive(read_pid(settings, "code-server")) and socket_answers(settings.code_server_socket)


def start_dagster_webserver(settings: Settings) -> None:
    """The Dagster webserver on loopback. Start it (and wait for it) before the daemon: the first process
    on a new Dagster home creates its storage, and two doing so at once collide."""
    write_dagster_yaml(settings)
    if not pid_alive(read_pid(settings, "dagster-webserver")):
        workspace = str(settings.workspace_file)
        spawn(
            settings,
            "dagster-webserver",
            [
                _venv_bin("dagster-webserver"),
                "-w",
                workspace,
                "-h",
                settings.dagster_host,
                "-p",
                str(settings.dagster_port),
            ],
        )


def start_dagster_daemon(settings: Settings) -> None:
    """The Dagster daemon: sensors, schedules and run launching, on the same instance as the webserver."""
    if not pid_alive(read_pid(settings, "dagster-daemon")):
        # pipelines/daemon.py: the stock daemon whose sensor loop wakes on Label Studio's webhook signals
        workspace = str(settings.workspace_file)
        spawn(settings, "dagster-daemon", [sys.executable, "-m", "pipelines.daemon", "run", "-w", workspace])


def start_run_worker(settings: Settings) -> None:
    """The warm run worker (pipelines/run_worker.py): runs fork from it with the stack already imported. With a
    broker (``LOOPML_BROKER_URL``) it is a Celery worker of this machine instead (pipelines/celery_runs.py)."""
    write_dagster_yaml(settings)  # before any Dagster process opens the instance (its storage is in there)
    if pid_alive(read_pid(settings, "run-worker")):
        return
    if settings.broker_url:
        from pipelines.celery_runs import worker_argv, worker_concurrency, worker_name

        (settings.run_dir / CELERY_READY_FILE).unlink(missing_ok=True)
        env = service_env(settings) | {"LOOPML_WORKER_READY_FILE": "1"}
        spawn(settings, "run-worker", worker_argv(worker_name("local"), worker_concurrency()), env)
        return
    spawn(settings, "run-worker", [sys.executable, "-m", "pipelines.run_worker", str(settings.run_worker_socket)])


CELERY_READY_FILE = "celery-worker.ready"  # written by the local Celery worker when it consumes


def run_worker_ready(settings: Settings) -> bool:
    ready = settings.run_dir / CELERY_READY_FILE if settings.broker_url else settings.run_worker_socket
    return ready.exists() and pid_alive(read_pid(settings, "run-worker"))


def service_running(settings: Settings, name: str) -> bool:
    return pid_alive(read_pid(settings, name))


def daemon_running(settings: Settings) -> bool:
    return pid_alive(read_pid(settings, "dagster-daemon"))


def start_labelstudio_service(settings: Settings) -> None:
    from loopml.labelstudio_server import start_labelstudio

    if pid_alive(read_pid(settings, "labelstudio")):
        return
    proc = start_labelstudio(settings, log_file(settings, "labelstudio"))
    _pid_file(settings, "labelstudio").write_text(str(proc.pid))


def start_serving(settings: Settings) -> None:
    """The BentoML HTTP service (every function, hot-reloaded versions) on loopback: ``bentoml serve`` through
    ``serving/serve.py``, which respawns a dead worker within a second."""
    if pid_alive(read_pid(settings, "serving")):
        return
    spawn(
        settings,
        "serving",
        [sys.executable, "-m", "serving.serve", "--host", "127.0.0.1", "--port", str(settings.serving_port)],
    )


def start_supervisor(settings: Settings) -> None:
    """The supervisor (loopml/supervisor.py): restarts any of the services above that dies, with backoff."""
    if not pid_alive(read_pid(settings, "supervisor")):
        spawn(settings, "supervisor", [sys.executable, "-m", "loopml.supervisor"])


def serving_healthy(settings: Settings) -> bool:
    """LoopML's serving API answers ready (its own health document, so another program on the port does not
    pass for it)."""
    try:
        response = requests.get(f"{settings.serving_url}/v1/health", timeout=2)
        return response.status_code == 200 and response.json().get("ready") is True
    except (requests.RequestException, ValueError, AttributeError):
        return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` can be bound now (nothing listens on it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


PORTS: dict[str, tuple[str, str]] = {  # service -> (settings attribute, environment variable)
    "labelstudio": ("labelstudio_port", "LOOPML_LABELSTUDIO_PORT"),
    "dagster-webserver": ("dagster_port", "LOOPML_DAGSTER_PORT"),
    "serving": ("serving_port", "LOOPML_SERVING_PORT"),
}


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_dagster_bind(settings: Settings, environ: dict[str, str] | None = None) -> None:
    """Dagster's webserver has no authentication and its GraphQL API takes mutations (launch, wipe, delete runs):
    refuse to bind it beyond loopback unless ``LOOPML_DAGSTER_EXPOSE=1`` says that an authenticating proxy (or a
    private network) stands in front of it (README: "Exposing Dagster")."""
    env = os.environ if environ is None else environ
    if settings.dagster_host in LOOPBACK or settings.dagster_host.startswith("127."):
        return
    if env.get("LOOPML_DAGSTER_EXPOSE", "").strip().lower() in ("1", "true", "yes"):
        return
    raise ServiceError(
        f"LOOPML_DAGSTER_HOST={settings.dagster_host} would open Dagster to the network, and Dagster has no "
        "authentication: anyone reaching the port can launch, cancel and delete runs. Keep it on 127.0.0.1 and put "
        "an authenticating reverse proxy in front (README: 'Exposing Dagster'), or set LOOPML_DAGSTER_EXPOSE=1 if "
        "one already guards that address."
    )


def check_ports(settings: Settings) -> None:
    """Raise :class:`ServiceError` when two services are given one port, or when the port of a service that is
    not running yet is taken by another program (which would otherwise answer in its place)."""
    ports = {name: int(getattr(settings, attribute)) for name, (attribute, _) in PORTS.items()}
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            first = seen[port]
            raise ServiceError(
                f"{PORTS[first][1]} and {PORTS[name][1]} are both {port}: give each service its own port"
            )
        seen[port] = name
    for name, port in ports.items():
        if not pid_alive(read_pid(settings, name)) and not port_free(port):
            raise ServiceError(
                f"port {port} ({PORTS[name][1]}) is already in use by another program: stop it, or start LoopML "
                f"with another port, e.g. {PORTS[name][1]}={port + 1} loopml up"
            )


def labelstudio_healthy(settings: Settings) -> bool:
    return http_ok(f"{settings.labelstudio_url}/health")


def status(settings: Settings) -> list[ServiceStatus]:
    checks: dict[str, tuple[Callable[[], bool], str | None]] = {
        "labelstudio": (lambda: labelstudio_healthy(settings), settings.labelstudio_url),
        "dagster-webserver": (lambda: dagster_healthy(settings), settings.dagster_url),
        "dagster-daemon": (lambda: True, None),
        "code-server": (lambda: code_server_ready(settings), None),
        "run-worker": (lambda: run_worker_ready(settings), None),
        "serving": (lambda: serving_healthy(settings), settings.serving_url),
        "supervisor": (lambda: True, None),
        "demo-annotator": (lambda: True, None),
        "demo-client": (lambda: True, None),
    }
    result = []
    for name, (check, url) in checks.items():
        pid = read_pid(settings, name)
        running = pid_alive(pid)
        result.append(ServiceStatus(name, pid, running, running and check(), url))
    return result


SERVICES_IN_STOP_ORDER = (
    "supervisor",  # first: it would start the others again
    "demo-client",
    "demo-annotator",
    "serving",
    "dagster-webserver",
    "dagster-daemon",
    "code-server",
    "run-worker",
    "labelstudio",
)


def down(settings: Settings) -> list[str]:
    """Stop every service ``up`` started; returns the names that were running."""
    return [name for name in SERVICES_IN_STOP_ORDER if stop(settings, name)]
