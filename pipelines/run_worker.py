"""The warm run worker: Dagster runs start in milliseconds instead of seconds.

Dagster's default launcher starts every run in a fresh Python process, which then imports Dagster, this
code location, the Label Studio SDK, Great Expectations, torch and Lightning: several seconds on a small CPU,
paid on every turn of the loop. The run worker imports all of that once, waits on a Unix socket, and forks a
child per run; the child starts with everything imported and executes the run exactly as
``dagster api execute_run`` would (same event log, same compute logs, same run status).

``WarmRunLauncher`` (configured in ``dagster.yaml`` by ``loopml up``) hands runs to the worker and falls back
to Dagster's default launcher when no worker answers, so nothing depends on the worker being up.
The worker imports the code once: after editing pipeline code, restart it (``loopml down && loopml up``).

    python -m pipelines.run_worker SOCKET_PATH
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster._core.launcher.base import LaunchRunContext
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher

PID_TAG = "loopml/run_worker_pid"
SOCKET_ENV = "LOOPML_RUN_WORKER_SOCKET"
# Imported once by the worker; a forked run finds them loaded.
WARM_MODULES = (
    "dagster._cli.api",
    "dagster._core.execution.api",
    "pipelines.definitions",
    "label_studio_sdk.client",  # the package itself imports lazily
    "label_studio_sdk.label_interface",
    "loopml.labelstudio",
    "loopml.labelstudio_server",
    "loopml.encoders",
    "loopml.automl",
    "serving.model_store",
    "bentoml.models",
    "great_expectations",
    "torch",
    "pytorch_lightning",
    "sklearn.feature_extraction.text",
    "sklearn.linear_model",
    "cleanlab.filter",
    "evidently",
    "onnxruntime",
    "tokenizers",
    "bentoml",
    "polars",
    "pandas",
    "pyarrow.parquet",
)


def socket_path() -> Path:
    """Where the worker listens: ``$LOOPML_RUN_WORKER_SOCKET`` or the settings' ``run_worker_socket``."""
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    from loopml.config import get_settings

    return get_settings().run_worker_socket


# ---------------------------------------------------------------------------------------------- the client


# Runs off the annotation -> serving path: on a busy machine they yield the CPU to training and deployment runs.
BACKGROUND_JOBS = frozenset({"inspect_function", "preannotate_function", "monitor_function", "review_function"})
BACKGROUND_NICENESS = 10


def submit_run(
    path: Path, run_id: str, instance_ref: str, timeout_s: float = 5.0, *, background: bool = False
) -> int | None:
    """Ask the worker at ``path`` to start ``run_id`` (at a lower CPU priority when ``background``); the child's
    PID, or None when no worker answers."""
    if not path.exists():
        return None
    request = json.dumps({"run_id": run_id, "instance_ref": instance_ref, "background": background}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            conn.connect(str(path))
            conn.sendall(request)
            reply = _read_line(conn)
    except OSError:
        return None
    answer = json.loads(reply) if reply else {}
    pid = answer.get("pid")
    return int(pid) if pid else None


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.strip()


class WarmRunLauncher(DefaultRunLauncher):
    """Launches runs in the warm run worker (forked, pre-imported); Dagster's default launcher otherwise."""

    def launch_run(self, context: LaunchRunContext) -> None:
        from dagster._serdes import serialize_value

        run = context.dagster_run
        pid = submit_run(
            socket_path(),
            run.run_id,
            serialize_value(self._instance.get_ref()),
            background=run.job_name in BACKGROUND_JOBS,
        )
        if pid is None:
            super().launch_run(context)
            return
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(pid)})
        self._run_ids.add(run.run_id)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: Any) -> Any:
        """For Dagster's run monitoring (``run_monitoring`` in dagster.yaml): a run forked by the warm worker is
        alive while its process is (a zombie counts as gone). A run killed mid-step (kill -9, out of memory) is
        then marked failed within a poll interval, and run retries start it again, instead of staying STARTED and
        holding back its function's next training. Runs started the default way (the worker was down) are not
        watched."""
        from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus

        from loopml.services import pid_alive

        pid = run.tags.get(PID_TAG)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "started by the default launcher: not watched")
        if pid_alive(int(pid)):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=pid)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the run's process {pid} is gone", run_worker_id=pid)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        if run is None or PID_TAG not in run.tags:
            return super().terminate(run_id)
        if run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        try:
            os.kill(int(run.tags[PID_TAG]), signal.SIGINT)  # the run sees KeyboardInterrupt and cancels itself
        except ProcessLookupError:
            return False
        return True


# ---------------------------------------------------------------------------------------------- the worker


def warm_up(modules: tuple[str, ...] = WARM_MODULES) -> dict[str, float]:
    """Import ``modules`` (seconds per module, for the log); a module that fails is left to the run."""
    import tqdm

    tqdm.tqdm.monitor_interval = 0  # no monitor thread: the worker stays single-threaded, so forking is safe
    took: dict[str, float] = {}
    for name in modules:
        started = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the run imports it again and reports properly
            print(f"run worker: could not pre-import {name}: {exc}", flush=True)
        took[name] = round(time.perf_counter() - started, 2)
    return took


def _warm_code_location() -> None:
    """Load the code location as a run does (the first load pays one-time costs)."""
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from loopml.config import PROJECT_ROOT

    pointer = ModuleCodePointer("pipelines.definitions", "defs", working_directory=str(PROJECT_ROOT))
    ReconstructableRepository(pointer).get_reconstructable_job("train_function").get_definition()


def _warm_validation() -> None:
    """Create the process's Great Expectations context and run one expectation on a pandas frame (GX
    registers expectations and metrics lazily); forked runs reuse the context. Pandas, not polars: polars
    would start its thread pool, and a forked child would wait on threads it does not have."""
    import great_expectations as gx
    import pandas as pd

    from loopml.validation import shared_validator

    shared_validator().validate_pandas(
        pd.DataFrame({"label": ["x", "y"]}),
        gx.expectations.ExpectColumnValuesToBeInSet(column="label", value_set=["x", "y"]),
    )


def _warm_encoder() -> None:
    """Load the default text encoder and embed one text on its one-thread session (no thread pool, so forked
    runs can use it; they embed a few new items each). Skipped with a GPU: CUDA does not survive a fork."""
    import onnxruntime as ort

    from loopml import encoders

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        encoders.SINGLE_THREAD_BATCH = 2  # a run embeds a few new items: one thread, no pool to lose in a fork
        encoders.get_encoder().encode(["warm"])


def _warm_instance() -> None:
    """Open and close the Dagster instance (storage modules import on first use)."""
    from dagster import DagsterInstance

    if os.environ.get("DAGSTER_HOME"):
        with DagsterInstance.get() as instance:
            instance.get_runs(limit=1)


WARM_CALLS = (_warm_code_location, _warm_validation, _warm_encoder, _warm_instance)


def _exercise_thread_pools() -> None:
    """What a run does first with each native thread pool: polars, numpy/BLAS, torch, the encoder."""
    import numpy as np
    import polars as pl
    import torch

    from loopml.encoders import get_encoder

    assert pl.DataFrame({"a": list(range(10_000))}).filter(pl.col("a") > 5).height == 9_994
    assert float((np.ones((256, 256)) @ np.ones((256, 256)))[0, 0]) == 256.0
    assert float((torch.ones(256, 256) @ torch.ones(256, 256))[0, 0]) == 256.0
    assert get_encoder().encode(["fork"]).shape == (1, 384)


def fork_self_test(timeout_s: float = 30.0) -> None:
    """Fork once and use every thread pool in the child: a pool the warm-up started in this process would
    leave the child waiting on threads it does not have. Raise (the worker then does not serve, and runs
    fall back to Dagster's launcher) instead of hanging runs."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _exercise_thread_pools()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError("run worker: a forked child failed its self-test; not serving")
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise RuntimeError("run worker: a forked child hung on a thread pool started by the warm-up; not serving")


def warm_calls() -> dict[str, float]:
    """Exercise first-use paths that need no threads (fork-safe); seconds per call, for the log."""
    took: dict[str, float] = {}
    for call in WARM_CALLS:
        started = time.perf_counter()
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - only a warm-up
            print(f"run worker: warm-up {call.__name__} failed: {exc}", flush=True)
        took[call.__name__] = round(time.perf_counter() - started, 2)
    return took


def execute_run(run_id: str, instance_ref: str) -> int:
    """Execute one run in this process, as ``dagster api execute_run`` does."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._core.instance import DagsterInstance, InstanceRef
    from dagster._serdes import deserialize_value

    with DagsterInstance.from_ref(deserialize_value(instance_ref, InstanceRef)) as instance:
        return _execute_run_command_body(run_id, instance, lambda _event: None, set_exit_code_on_failure=True)


def remember_dynamic_partitions() -> None:
    """Answer "does this dynamic partition exist?" from memory once it was found in storage.

    Dagster asks several times per step (output handling, partition ranges, data versions), each a query of the
    event log database: a tenth of a second or more per run on a small machine. A partition that existed when the
    run asked stays known for the rest of the run (one forked process); an absent one is asked again.
    """
    from dagster import DagsterInstance

    original = DagsterInstance.has_dynamic_partition
    if getattr(original, "remembers", False):
        return
    known: set[tuple[str, str]] = set()

    def has_dynamic_partition(self: DagsterInstance, partitions_def_name: str, partition_key: str) -> bool:
        if (partitions_def_name, partition_key) in known:
            return True
        found = original(self, partitions_def_name, partition_key)
        if found:
            known.add((partitions_def_name, partition_key))
        return found

    has_dynamic_partition.remembers = True  # type: ignore[attr-defined]
    DagsterInstance.has_dynamic_partition = has_dynamic_partition  # type: ignore[method-assign]


def _child(request: Mapping[str, Any]) -> None:
    """In the forked child: fresh randomness, default signals, run, exit without running parent cleanups."""
    code = 1
    try:
        random.seed()
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        remember_dynamic_partitions()
        from pipelines.storage_speedups import keep_databases_open

        keep_databases_open()  # after the fork: the run's own idle SQLite connections
        if request.get("background"):
            os.nice(BACKGROUND_NICENESS)
        code = execute_run(str(request["run_id"]), str(request["instance_ref"]))
    except BaseException as exc:  # noqa: BLE001 - the run's own failure is in its event log already
        print(f"run worker: run {request.get('run_id')} ended with {exc!r}", flush=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return


def serve(path: Path) -> None:
    """Warm up, then fork one child per run request until SIGTERM."""
    started = time.perf_counter()
    took = warm_up() | warm_calls()
    fork_self_test()
    slowest = ", ".join(f"{k} {v}s" for k, v in sorted(took.items(), key=lambda kv: -kv[1])[:5])
    print(f"run worker: warm in {time.perf_counter() - started:.1f} s ({slowest})", flush=True)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(16)
    listener.settimeout(0.5)
    stopping = False

    def _stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"run worker: listening on {path}", flush=True)
    try:
        while not stopping:
            _reap()
            try:
                conn, _ = listener.accept()
            except (TimeoutError, InterruptedError):
                continue
            with conn:
                conn.settimeout(5.0)
                try:
                    request = json.loads(_read_line(conn))
                except (OSError, ValueError) as exc:
                    print(f"run worker: bad request ({exc})", flush=True)
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _child(request)
                print(f"run worker: run {request.get('run_id')} in pid {pid}", flush=True)
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    from pipelines.storage_speedups import install

    install(open_databases=False)  # forked runs inherit it; each opens its own databases (see _child)
    args = sys.argv[1:] if argv is None else argv
    serve(Path(args[0]) if args else socket_path())


if __name__ == "__main__":
    main()
