"""The platform as a user runs it: `loopml up` starts real services, the daemon's sensor trains by itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.conftest import free_ports
from tests.test_pipeline import NEGATIVE, POSITIVE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def loopml(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loopml.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


STATE: dict[str, object] = {}  # what the first test built, for the browser test (the platform stays up)


@pytest.fixture(scope="module")
def platform_env(tmp_path_factory):
    env = dict(os.environ)
    label_studio, dagster, serving = free_ports(3)
    env.update(
        LOOPML_HOME=str(tmp_path_factory.mktemp("platform") / "home"),
        LOOPML_LABELSTUDIO_PORT=str(label_studio),
        LOOPML_DAGSTER_PORT=str(dagster),
        LOOPML_SERVING_PORT=str(serving),
        LOOPML_ANNOTATION_POLL_SECONDS="1",
    )
    yield env
    loopml(env, "down", timeout=120)


def test_up_create_annotate_and_the_daemon_trains_a_model(platform_env) -> None:
    up = loopml(platform_env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Label Studio" in up.stdout and "Dagster" in up.stdout
    status = loopml(platform_env, "status")
    for service in ("labelstudio", "dagster-webserver", "dagster-daemon", "run-worker", "serving"):
        assert any(line.split()[:2] == [service, "healthy"] for line in status.stdout.splitlines()), status.stdout

    created = loopml(platform_env, "functions", "create", "platform-sentiment", "--labels", "positive,negative")
    assert created.returncode == 0, created.stdout + created.stderr

    from loopml.config import get_settings
    from loopml.functions import FunctionRegistry
    from loopml.labelstudio import LabelStudioClient, choice_result
    from serving.model_store import list_versions

    settings = get_settings({k: v for k, v in platform_env.items() if k.startswith("LOOPML_")})
    client = LabelStudioClient.from_settings(settings)
    project = FunctionRegistry(settings).get("platform-sentiment").labelstudio_project_id
    # labelled tasks arrive in one import (annotations included), so the sensor's first look sees all of them
    labelled = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    client.import_tasks(
        project, [{"data": {"text": t}, "annotations": [{"result": choice_result(label)}]} for t, label in labelled]
    )
    client.import_tasks(project, [{"data": {"text": "a warm and wonderful film"}}])  # left for pre-annotation

    deadline = time.time() + 900  # a bound for a broken loop, not a speed target (bench/loop_latency.py)
    while time.time() < deadline and not list_versions(settings, "platform-sentiment"):
        time.sleep(1)
    versions = list_versions(settings, "platform-sentiment")
    assert [v.version for v in versions] == ["v1"], (settings.run_dir / "dagster-daemon.log").read_text()[-3000:]
    assert versions[0].metadata["cv_accuracy"] >= 0.7

    # the daemon's run also deployed it: the running service answers with v1 (hot-loaded, no restart)
    created_key = loopml(platform_env, "keys", "create", "platform-test")
    secret = created_key.stdout.strip().splitlines()[-1]
    url = f"{settings.serving_url}/v1/functions/platform-sentiment/invoke"
    assert requests.post(url, json={"text": "great film"}, timeout=10).status_code == 401
    answer = {}
    deadline = time.time() + 300
    while time.time() < deadline and answer.get("version") != "platform-sentiment:v1":
        response = requests.post(
            url, json={"text": "a wonderful, moving film"}, timeout=10, headers={"Authorization": f"Bearer {secret}"}
        )
        answer = response.json() if response.ok else {}
        time.sleep(0.5)
    assert answer.get("version") == "platform-sentiment:v1" and answer["label"] == "positive", answer

    # runs fork from the warm run worker
    from dagster import DagsterInstance, RunsFilter

    from pipelines.run_worker import PID_TAG

    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        runs = instance.get_runs(filters=RunsFilter(job_name="train_function"))
        assert runs and all(PID_TAG in run.tags for run in runs), [run.tags for run in runs]

    # the new primary pre-annotates the unlabelled task in Label Studio (preannotation sensor -> run)
    (unlabelled,) = client.unlabeled_tasks(project, limit=10)
    predictions: list = []
    deadline = time.time() + 600
    while time.time() < deadline and not predictions:
        predictions = client.task_predictions(unlabelled.task_id)
        time.sleep(1)
    assert [(p["model_version"], p["label"]) for p in predictions] == [("platform-sentiment:v1", "positive")]
    assert 0.5 < predictions[0]["score"] <= 1.0
    project_settings = client.sdk.projects.get(id=project)
    assert project_settings.model_version == "platform-sentiment:v1"
    assert project_settings.sampling == "Uncertainty sampling"  # "Label All Tasks": least sure first

    STATE.update(settings=settings, project=project, task=unlabelled.task_id, prediction=predictions[0])

    # what the services wrote meanwhile (databases, versions, logs, Label Studio's data) is the owner's alone
    from loopml.permissions import open_paths

    assert open_paths(settings.home) == []
    assert (settings.home.stat().st_mode & 0o777) == 0o700
    assert ((settings.home / "loopml.db").stat().st_mode & 0o777) == 0o600


def test_an_image_function_from_image_files_to_answers_over_http(platform_env, tmp_path) -> None:
    """`functions create --type image`, `items add` of a folder of images (labels from folder names) and one
    unlabelled image: the daemon trains and deploys, the API answers JSON and file uploads, and the unlabelled
    image task gets its pre-annotation."""
    import base64

    from loopml.functions import FunctionRegistry
    from loopml.labelstudio import LabelStudioClient
    from serving.model_store import list_versions
    from tests.serving_support import IMAGE_ENCODER, png

    assert STATE, "the platform test above did not get as far as a pre-annotated task"
    name = "platform-tone"
    created = loopml(
        platform_env,
        "functions",
        "create",
        name,
        "--type",
        "image",
        "--labels",
        "light,dark",
        "--encoder",
        IMAGE_ENCODER,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    for label, levels in (("light", range(250, 200, -5)), ("dark", range(5, 55, 5))):
        (tmp_path / label).mkdir()
        for i, level in enumerate(levels):
            (tmp_path / label / f"{i}.png").write_bytes(png(level, seed=level))
    open_image = tmp_path / "open.png"
    open_image.write_bytes(png(235, seed=1000))
    added = loopml(
        platform_env, "items", "add", name, str(tmp_path / "light"), str(tmp_path / "dark"), "--folder-labels"
    )
    assert added.returncode == 0 and f"added 20 items to {name} (20 labelled)" in added.stdout, (
        added.stdout + added.stderr
    )
    assert loopml(platform_env, "items", "add", name, str(open_image)).returncode == 0

    settings = STATE["settings"]
    client = LabelStudioClient.from_settings(settings)
    project = FunctionRegistry(settings).get(name).labelstudio_project_id
    deadline = time.time() + 900  # a bound for a broken loop, not a speed target
    while time.time() < deadline and not list_versions(settings, name):
        time.sleep(1)
    assert list_versions(settings, name), (settings.run_dir / "dagster-daemon.log").read_text()[-3000:]

    secret = loopml(platform_env, "keys", "create", "platform-images").stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {secret}"}
    url = f"{settings.serving_url}/v1/functions/{name}/invoke"
    answer: dict = {}
    deadline = time.time() + 300
    while time.time() < deadline and answer.get("version") != f"{name}:v1":
        response = requests.post(url, json={"image": base64.b64encode(png(245, seed=7)).decode()}, headers=headers)
        answer = response.json() if response.ok else {}
        time.sleep(0.5)
    assert answer.get("label") == "light", answer
    upload = requests.post(url, files={"image": ("x.png", png(10, seed=8), "image/png")}, headers=headers, timeout=30)
    assert upload.status_code == 200 and upload.json()["label"] == "dark", upload.text
    wrong = requests.post(url, json={"text": "a text"}, headers=headers, timeout=30)
    assert wrong.status_code == 422 and "classifies images" in wrong.json()["detail"]

    (unlabelled,) = client.unlabeled_tasks(project, limit=10)
    assert unlabelled.data["image"].startswith("data:image/png;base64,")
    predictions: list = []
    deadline = time.time() + 600
    while time.time() < deadline and not predictions:
        predictions = client.task_predictions(unlabelled.task_id)
        time.sleep(1)
    assert [(p["model_version"], p["label"]) for p in predictions] == [(f"{name}:v1", "light")], predictions
    STATE.update(image_project=project, image_task=unlabelled.task_id, image_prediction=predictions[0])


def test_the_user_sees_the_lifecycle_in_dagster_and_the_prediction_in_label_studio(platform_env) -> None:
    """Headless Chromium: the asset graph with its partition, the model's metrics plotted across
    materializations, and a Label Studio task with its pre-annotation. Screenshots are kept in
    test-artifacts/browser/."""
    from loopml.labelstudio import LabelStudioClient
    from loopml.labelstudio_server import ensure_credentials
    from tests.browser import chromium, click_button, screenshot, wait_for_text

    assert STATE, "the platform test above did not get as far as a pre-annotated task"
    settings = STATE["settings"]
    groups = {  # the lifecycle, stage by stage; every stage but serving is partitioned by function
        "annotate": ["annotations", "dataset", "preannotations"],
        "train": ["features", "model"],
        "deploy": ["deployment"],
        "serve": ["invocations"],
        "review": ["review_set"],
        "monitor": ["drift_report"],
        "inspect": ["label_issues"],
    }
    with chromium() as browser:
        for group, assets in groups.items():
            partitioned = group != "serve"  # the serving API writes the invocation log, not a Dagster run
            browser.get(f"{settings.dagster_url}/locations/loopml/asset-groups/{group}")
            text = wait_for_text(  # "2 partitions" once no run of the group is materializing one (the daemon's
                browser,  # follow-ups, e.g. the inspection after a training run, may still be going)
                lambda t, assets=assets, p=partitioned: all(a in t for a in assets) and (not p or "2 partitions" in t),
                timeout_s=300,
            )
            # the first visit: no new-user dialog over the graph (dagster.yaml has nux disabled)
            assert not browser.find_elements("xpath", "//button[normalize-space()='Skip']")
            screenshot(browser, f"dagster-{group}")
            assert all(a in text for a in assets) and (not partitioned or "2 partitions" in text), text[:2000]
        browser.get(f"{settings.dagster_url}/assets/model?view=partitions")
        text = wait_for_text(browser, lambda t: "platform-sentiment" in t and "platform-tone" in t)
        screenshot(browser, "dagster-model-partitions")
        assert "Materialized (2)" in text, text[:2000]  # the text function and the image function
        # the model's numbers, plotted across materializations: accuracy, calibration, labels, F1 per label
        browser.get(f"{settings.dagster_url}/assets/model")  # the overview's Metadata: Table or Plots
        wait_for_text(browser, lambda t: "Metadata" in t and "Plots" in t)
        click_button(browser, "Plots")
        click_button(browser, "Events")  # across materializations (the default groups by partition)
        plotted = ("cv_accuracy", "holdout_accuracy", "cv_ece", "labelled_items", "f1_positive", "f1_light")
        deadline = time.monotonic() + 30
        while len(browser.find_elements("css selector", "canvas")) < len(plotted) and time.monotonic() < deadline:
            time.sleep(0.2)  # a chart per numeric metadata entry, drawn once the events are loaded
        text = wait_for_text(browser, lambda t: all(name in t for name in plotted))
        screenshot(browser, "dagster-model-plots")
        assert all(name in text for name in plotted), text[:2000]
        assert len(browser.find_elements("css selector", "canvas")) >= len(plotted), "fewer charts than metrics"

        creds = ensure_credentials(settings)
        browser.get(f"{settings.labelstudio_url}/user/login")
        wait_for_text(browser, lambda t: "Log in" in t or "Sign in" in t or "Email" in t, 20)
        browser.find_element("name", "email").send_keys(creds.username)
        browser.find_element("name", "password").send_keys(creds.password)
        browser.find_element("css selector", "button[type=submit], input[type=submit]").click()
        wait_for_text(browser, lambda t: "Projects" in t, 20)
        client = LabelStudioClient.from_settings(settings)

        def open_with_prediction(project: int, task: int, shows: Callable[[str], bool]) -> tuple[str, dict]:
            """Open the task until the page shows its current prediction's score: the daemon may have trained
            and pre-annotated a newer version since the tests above (its pass replaces the predictions)."""
            text, prediction = "", {}
            for _ in range(3):
                deadline = time.monotonic() + 300
                while not (predictions := client.task_predictions(task)) and time.monotonic() < deadline:
                    time.sleep(1)  # between a pass's removal of the old prediction and its new one
                assert predictions, f"task {task} has no prediction"
                prediction = predictions[0]
                score = f"{100 * prediction['score']:.2f}%"
                browser.get(f"{settings.labelstudio_url}/projects/{project}/data?task={task}")
                text = wait_for_text(browser, lambda t, score=score: score in t and shows(t))
                if score in text and shows(text):
                    break
            return text, prediction

        text, prediction = open_with_prediction(
            STATE["project"], STATE["task"], lambda t: "a warm and wonderful film" in t
        )
        screenshot(browser, "labelstudio-task-with-prediction")
        score, version = f"{100 * prediction['score']:.2f}%", prediction["model_version"].rsplit(":", 1)[1]
        assert prediction["model_version"].startswith("platform-sentiment:") and prediction["label"] == "positive"
        assert "a warm and wonderful film" in text and score in text and version in text, text[-3000:]

        if "image_task" in STATE:  # the image function's task: the picture shows, with its pre-annotation
            text, prediction = open_with_prediction(STATE["image_project"], STATE["image_task"], lambda t: True)
            score, version = f"{100 * prediction['score']:.2f}%", prediction["model_version"].rsplit(":", 1)[1]
            shown = browser.execute_script(
                "return [...document.querySelectorAll('img, image')].filter(e => (e.currentSrc || e.href?.baseVal "
                "|| e.src || '').startsWith('data:image/png') && (e.naturalWidth || e.getBBox?.().width || 0) > 0)"
                ".length"
            )
            screenshot(browser, "labelstudio-image-task-with-prediction")
            assert prediction["model_version"].startswith("platform-tone:") and prediction["label"] == "light"
            assert shown >= 1 and score in text and f"one:{version}" in text  # Label Studio shortens the name


def test_a_training_run_killed_mid_step_recovers_without_a_hand(platform_env) -> None:
    """kill -9 of a training run while its model step runs: run monitoring marks it failed (its process is gone),
    run retries start it again, and the new version serves, with no one cancelling or relaunching anything. The
    seconds it took are printed (README: the fault table)."""
    import signal

    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, EventRecordsFilter, RunsFilter

    from loopml.deployments import DeploymentStore
    from loopml.labelstudio import LabelStudioClient, choice_result
    from pipelines.run_worker import PID_TAG
    from serving.model_store import list_versions

    assert STATE, "the platform test above did not get as far as a served version"
    settings = STATE["settings"]
    client = LabelStudioClient.from_settings(settings)
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        # settle first: no training run in flight and no rollout in progress (a new version would wait for it,
        # LOOPML_ROLLOUT_PATIENCE_SECONDS), so that the time measured is the recovery's
        mine = RunsFilter(job_name="train_function", tags={"dagster/partition": "platform-sentiment"})
        deadline = time.time() + 300
        while any(not r.dagster_run.is_finished for r in instance.get_run_records(filters=mine, limit=5)):
            assert time.time() < deadline, "training runs did not settle"
            time.sleep(0.5)
        store = DeploymentStore(settings)
        state = store.get("platform-sentiment")
        if state is not None and state.canary_tag is not None:
            store.promote("platform-sentiment", "test: end the rollout before the fault", actor="test")
        victim = None
        for attempt in range(3):  # a run that finishes before it is caught is left alone; new labels, new run
            known = {r.dagster_run.run_id for r in instance.get_run_records(filters=mine)}
            more = [(f"an absolutely wonderful film, take {attempt} number {i}", "positive") for i in range(6)]
            more += [(f"a thoroughly dreadful film, take {attempt} number {i}", "negative") for i in range(6)]
            client.import_tasks(
                STATE["project"],
                [{"data": {"text": t}, "annotations": [{"result": choice_result(label)}]} for t, label in more],
            )
            deadline = time.time() + 300  # bounds for a broken loop, not speed targets
            while victim is None and time.time() < deadline:
                records = instance.get_run_records(filters=mine, limit=5)
                fresh = [r.dagster_run for r in records if r.dagster_run.run_id not in known]
                running = [r for r in fresh if r.status == DagsterRunStatus.STARTED and PID_TAG in r.tags]
                if running:
                    try:
                        os.kill(int(running[0].tags[PID_TAG]), signal.SIGKILL)
                        victim = running[0]
                    except ProcessLookupError:
                        pass
                elif any(r.is_finished for r in fresh):
                    break  # it finished before it was caught
                time.sleep(0.02)
            if victim is not None:
                break
        assert victim is not None, "no training run was caught while it ran"
        killed_at = time.time()
        before = {v.tag for v in list_versions(settings, "platform-sentiment")}  # a new one must come from the retry
        steps = instance.get_event_records(EventRecordsFilter(DagsterEventType.STEP_START), limit=50, ascending=False)
        in_step = [e.event_log_entry.step_key for e in steps if e.run_id == victim.run_id][:1]
        print(f"\nkilled run {victim.run_id[:8]} in step {in_step}")
        serving_url = f"{settings.serving_url}/v1/functions/platform-sentiment"
        secret = loopml(platform_env, "keys", "create", "recovery-test").stdout.strip().splitlines()[-1]
        served: set[str] = set()
        while not served - before:
            assert time.time() - killed_at < 600, "no new version served after the kill"
            body = requests.get(serving_url, headers={"Authorization": f"Bearer {secret}"}, timeout=10).json()
            served = {v["version"] for v in (body.get("primary"), body.get("canary")) if v}
            time.sleep(0.2)
        recovered_s = time.time() - killed_at
        failed = instance.get_run_by_id(victim.run_id)
        assert failed is not None and failed.status == DagsterRunStatus.FAILURE
        retries = instance.get_run_records(
            filters=RunsFilter(job_name="train_function", tags={"dagster/parent_run_id": victim.run_id})
        )
        assert retries, "the version came from a run that was not the killed run's retry"
    print(f"killed run {victim.run_id[:8]} recovered: a new version served {recovered_s:.1f} s after the kill")


def test_label_studio_down_for_several_sensor_ticks_then_back(platform_env) -> None:
    """Label Studio stopped right after a reviewer's annotations arrive, for several of the annotation sensor's
    ticks, then started again by `loopml up`: the sensor (or a run's retried step, if one started before the stop)
    picks the annotations up, none is lost, and a version trained on all of them serves. The seconds from the
    restart to that version serving are printed (README: the fault table)."""
    import contextlib

    from dagster import DagsterInstance, RunsFilter

    from loopml import services
    from loopml.deployments import DeploymentError, DeploymentStore
    from loopml.labelstudio import LabelStudioClient, choice_result
    from pipelines.sensors import SENSOR_TICK_SECONDS

    assert STATE, "the platform test above did not get as far as a served version"
    settings = STATE["settings"]
    client = LabelStudioClient.from_settings(settings)
    project = STATE["project"]
    mine = RunsFilter(job_name="train_function", tags={"dagster/partition": "platform-sentiment"})
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        deadline = time.time() + 300
        while any(not r.dagster_run.is_finished for r in instance.get_run_records(filters=mine, limit=5)):
            assert time.time() < deadline, "training runs did not settle"
            time.sleep(0.5)
    store = DeploymentStore(settings)
    state = store.get("platform-sentiment")
    if state is not None and state.canary_tag is not None:  # a new version would wait for this rollout
        store.promote("platform-sentiment", "test: end the rollout before the fault", actor="test")
    secret = loopml(platform_env, "keys", "create", "labelstudio-down").stdout.strip().splitlines()[-1]
    info_url = f"{settings.serving_url}/v1/functions/platform-sentiment"
    headers = {"Authorization": f"Bearer {secret}"}
    more = [(f"a gripping, beautiful film while the tool was down {i}", "positive") for i in range(4)]
    more += [(f"a hollow, grating film while the tool was down {i}", "negative") for i in range(4)]
    client.import_tasks(
        project, [{"data": {"text": t}, "annotations": [{"result": choice_result(label)}]} for t, label in more]
    )
    annotated = client.annotated_task_count(project)
    services.stop(settings, "labelstudio")
    stopped_at = time.time()
    assert not services.http_ok(settings.labelstudio_url)
    while time.time() - stopped_at < 4 * SENSOR_TICK_SECONDS:  # the fault: down for several sensor ticks
        answer = requests.post(f"{info_url}/invoke", json={"text": "fine"}, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text  # serving does not depend on Label Studio
        time.sleep(1)
    up = loopml(platform_env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    back_at = time.time()

    def rows(tag: str) -> int:
        from serving.model_store import list_versions

        (version,) = [v for v in list_versions(settings, "platform-sentiment") if v.tag == tag]
        return int(version.metadata["train_rows"]) + int(version.metadata["holdout_rows"])

    served: set[str] = set()
    while not any(rows(tag) == annotated for tag in served):
        assert time.time() - back_at < 600, f"no version trained on all {annotated} annotated tasks served"
        body = requests.get(info_url, headers=headers, timeout=10).json()
        served = {v["version"] for v in (body.get("primary"), body.get("canary")) if v}
        canary = (body.get("canary") or {}).get("version")
        if canary and rows(canary) != annotated:  # an older rollout (from the tests before): the new version
            with contextlib.suppress(DeploymentError):  # waits for its end; the controller may end it first
                store.promote("platform-sentiment", "test: end an older rollout", actor="test")
        time.sleep(0.5)
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        records = instance.get_run_records(filters=mine, limit=20)
        since = [r.dagster_run.status.value for r in records if r.create_timestamp.timestamp() > stopped_at - 5]
    print(
        f"\nLabel Studio down {back_at - stopped_at:.0f} s: a version with all {annotated} annotations served "
        f"{time.time() - back_at:.1f} s after it was back (training runs from 5 s before the stop: {since})"
    )


def test_the_supervisor_brings_back_killed_services(platform_env) -> None:
    """kill -9 of the whole serving process (arbiter and worker) and of the Dagster daemon: the supervisor that
    `loopml up` started restarts both, and the serving API answers again with the version it served. The seconds
    are printed (README: the fault table)."""
    import signal

    import psutil

    from loopml import services
    from loopml.supervisor import restarts

    assert STATE, "the platform test above did not get as far as a served version"
    settings = STATE["settings"]
    secret = loopml(platform_env, "keys", "create", "supervisor-test").stdout.strip().splitlines()[-1]
    url = f"{settings.serving_url}/v1/functions/platform-sentiment/invoke"
    headers = {"Authorization": f"Bearer {secret}"}
    before = requests.post(url, json={"text": "a fine film"}, headers=headers, timeout=30).json()["version"]
    killed = {}
    trees = []
    for name in ("serving", "dagster-daemon"):
        pid = services.read_pid(settings, name)
        assert pid is not None and services.pid_alive(pid)
        trees += [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        killed[name] = pid
    for process in trees:
        process.send_signal(signal.SIGKILL)
    killed_at = time.time()
    psutil.wait_procs(trees, timeout=10)
    answer: dict = {}
    while answer.get("version") != before:
        assert time.time() - killed_at < 300, "the serving API did not come back"
        try:
            response = requests.post(url, json={"text": "a fine film"}, headers=headers, timeout=10)
            answer = response.json() if response.ok else {}
        except requests.RequestException:
            pass
        time.sleep(0.1)
    back_s = time.time() - killed_at
    while not services.pid_alive(services.read_pid(settings, "dagster-daemon")):
        assert time.time() - killed_at < 120, "the Dagster daemon did not come back"
        time.sleep(0.2)
    journal = {entry["service"]: entry for entry in restarts(settings)}
    assert (
        journal["serving"]["old_pid"] == killed["serving"]
        and journal["dagster-daemon"]["old_pid"] == killed["dagster-daemon"]
    )
    since_restart = killed_at + back_s - journal["serving"]["at"]
    print(f"\nserving killed: answering again {back_s:.1f} s after the kill, {since_restart:.1f} s after its restart")


def test_down_stops_everything(platform_env) -> None:
    down = loopml(platform_env, "down", timeout=120)
    assert "labelstudio" in down.stdout and "dagster-daemon" in down.stdout and "serving" in down.stdout
    assert "run-worker" in down.stdout and "supervisor" in down.stdout
    after = loopml(platform_env, "status")
    assert "healthy" not in after.stdout
