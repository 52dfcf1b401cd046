"""Loop latency beside the field's tool: LoopML and a Label Studio ML backend, side by side on the same data.

A team that wants "retrain on every annotation" with Label Studio today connects an ML backend
(``label-studio-ml``): Label Studio calls its webhook on each annotation, the backend forks a training job that
reads the project's annotations and fits a model, and ``/setup`` + ``/predict`` (what Label Studio calls before
it shows predictions) answer with the newest finished version. ``bench/field/lsml_text_classifier.py`` is such a
backend with the classifier of Label Studio's examples (TF-IDF + logistic regression on every annotated task),
in its own environment (``make bench-field`` builds ``.venv-field``).

Both loops run at once on one Label Studio, with the same N labelled RottenTomatoes texts each, and take turns:
each round saves one annotation in LoopML's project and waits until the serving API answers with the new version
(as canary), then saves the same annotation in the backend's project and waits until ``/predict`` answers with a
new model version. LoopML's loop also validates (Great Expectations), runs the AutoML search (heads, CV,
calibration), gates the candidate against the primary and rolls it out; the backend does none of these.

    .venv/bin/python bench/loop_latency_field.py [--labelled 2000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

FIELD_PYTHON = ROOT / ".venv-field" / "bin" / "python"
BACKEND = ROOT / "bench" / "field" / "lsml_text_classifier.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if not FIELD_PYTHON.exists():
        sys.exit(f"{FIELD_PYTHON} is missing: run `make bench-field` (it builds the ML backend's environment)")

    from loop_latency import print_encoder_speed, temporary_home

    home = temporary_home("loopml-field-", 18600)
    loopml = [sys.executable, "-m", "loopml.cli"]

    print_encoder_speed()
    subprocess.run([*loopml, "up"], check=True, cwd=ROOT)
    started: list[subprocess.Popen] = []  # the ML backend, stopped whatever happens
    try:
        side_by_side(home, args.labelled, args.rounds, started)
    finally:
        for backend in started:
            backend.terminate()
            backend.wait(timeout=30)
        subprocess.run([*loopml, "down"], cwd=ROOT)


def start_backend(home: Path, project: int) -> tuple[subprocess.Popen, str]:
    from loopml.config import get_settings
    from loopml.labelstudio_server import load_credentials

    settings = get_settings()
    port = free_port()
    creds = load_credentials(settings)
    assert creds is not None
    log = open(home / "ml-backend.log", "ab")  # noqa: SIM115 - the child's log
    proc = subprocess.Popen(
        [
            str(FIELD_PYTHON),
            str(BACKEND),
            str(port),
            str(home / "ml-backend-models"),
            settings.labelstudio_url,
            creds.api_key,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "AUTO_UPDATE": "1", "LABEL_STUDIO_ML_BACKEND_V2": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"the ML backend did not start; see {home / 'ml-backend.log'}")


def backend_version(url: str, project: int, text: str) -> str:
    """What Label Studio does before it shows a backend's predictions: ``/setup``, then ``/predict``."""
    requests.post(f"{url}/setup", json={"project": str(project), "schema": ""}, timeout=30).raise_for_status()
    answer = requests.post(
        f"{url}/predict", json={"tasks": [{"data": {"text": text}}], "project": str(project)}, timeout=30
    )
    answer.raise_for_status()
    return str(answer.json()["model_version"])


def wait_backend_version(url: str, project: int, text: str, other_than: str, timeout_s: float = 120) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        version = backend_version(url, project, text)
        if version not in (other_than, "INITIAL"):
            return version
        time.sleep(0.05)
    raise TimeoutError(f"the ML backend answered with {other_than} for {timeout_s} s")


def side_by_side(home: Path, labelled: int, rounds: int, started: list[subprocess.Popen]) -> None:
    from dagster import DagsterInstance
    from loop_latency import (
        print_table,
        promote_canary,
        wait_for_run,
        wait_for_serving,
        wait_for_version,
        wait_until_trained_on,
    )

    from loopml.apikeys import create_key
    from loopml.config import get_settings
    from loopml.demo import sample_items
    from loopml.demo_data import load_rotten_tomatoes
    from loopml.functions import create_function, render_label_config
    from loopml.labelstudio import LabelStudioClient
    from serving.model_store import list_versions

    settings = get_settings()
    client = LabelStudioClient.from_settings(settings)
    texts, labels = sample_items(*load_rotten_tomatoes(), items=labelled + rounds)
    choice = lambda label: [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]  # noqa: E731
    labelled_tasks = [
        {"data": {"text": t}, "annotations": [{"result": choice(lab)}]}
        for t, lab in zip(texts[:labelled], labels[:labelled], strict=True)
    ]
    open_tasks = [{"data": {"text": t}} for t in texts[labelled:]]

    ours = create_function(settings, "field-loopml", "text", ["positive", "negative"])
    theirs = client.create_project("field-ml-backend", render_label_config("text", ["positive", "negative"]))
    for project in (ours, theirs):
        client.import_tasks(project, labelled_tasks)
        client.import_tasks(project, open_tasks)
    print(f"imported {labelled} labelled + {rounds} open tasks into both projects", flush=True)

    backend, url = start_backend(home, theirs)
    started.append(backend)
    client.sdk.webhooks.create(  # what "retrain on annotation" registers: the backend's /webhook
        url=f"{url}/webhook",
        project=theirs,
        actions=["ANNOTATION_CREATED"],
        send_for_all_actions=False,
        send_payload=True,
        is_active=True,
    )
    requests.post(f"{url}/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": theirs}}, timeout=30)
    probe = texts[0]
    version = wait_backend_version(url, theirs, probe, "none")
    wait_for_version(settings, "field-loopml", 1, timeout_s=300)
    instance = DagsterInstance.get()
    wait_until_trained_on(instance, "field-loopml", labelled)
    print("both have a first version; rounds start", flush=True)
    headers = {"Authorization": f"Bearer {create_key(settings, 'field')[1]}"}
    ours_open = client.unlabeled_tasks(ours, limit=rounds)
    theirs_open = {t.data["text"]: t.task_id for t in client.unlabeled_tasks(theirs, limit=rounds)}
    rows_ours, rows_theirs = [], []
    for i, task in enumerate(ours_open):
        label = labels[labelled + i] if labelled + i < len(labels) else "positive"
        promote_canary(settings, "field-loopml")
        have = len(list_versions(settings, "field-loopml"))
        time.sleep(1.0)
        t0 = time.time()
        client.create_annotation(task.task_id, label)
        wait_for_version(settings, "field-loopml", have + 1, timeout_s=120)
        registered = time.time() - t0
        tag = list_versions(settings, "field-loopml")[-1].tag
        served = wait_for_serving(settings, "field-loopml", tag, headers, timeout_s=60)
        wait_for_run(instance, t0)
        rows_ours.append(
            {"new version answering": (served - t0) if served else float("nan"), "new version trained": registered}
        )

        time.sleep(1.0)
        t0 = time.time()
        client.create_annotation(theirs_open[task.data["text"]], label)
        version = wait_backend_version(url, theirs, probe, version)
        answered = time.time() - t0
        rows_theirs.append({"new version answering": answered, "new version trained": answered})
        print(
            f"round {i + 1}: LoopML {rows_ours[-1]['new version answering']:.2f} s, ML backend {answered:.2f} s",
            flush=True,
        )
    print_table(rows_ours, f"LoopML (validate, AutoML, gate, canary): annotation -> new version ({labelled} labelled)")
    print_table(
        rows_theirs, f"Label Studio ML backend (TF-IDF + LR refit): annotation -> new version ({labelled} labelled)"
    )


if __name__ == "__main__":
    main()
