"""Loop latency: annotation saved in Label Studio -> new version registered -> answering canary traffic.

Starts its own Label Studio and Dagster (webserver + daemon) in a temporary LOOPML_HOME on spare ports,
creates a function with N labelled RottenTomatoes texts (imported with their annotations), waits for the
first version, then saves single annotations through the Label Studio API and times each until the next
version is registered, and until the running serving API answers with it as canary (or primary). Prints
p50/p95 and a breakdown per stage from Dagster's run and step stats.

    .venv/bin/python bench/loop_latency.py [--labelled 2000] [--rounds 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="leave the services running")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="loopml-bench-"))
    os.environ.update(
        LOOPML_HOME=str(home),
        LOOPML_LABELSTUDIO_PORT="18480",
        LOOPML_DAGSTER_PORT="18430",
        LOOPML_SERVING_PORT="18490",
        LOOPML_ANNOTATION_POLL_SECONDS="1",
        # no traffic here, so a canary never finishes its rollout: each new version replaces it at once (what is
        # measured is annotation -> answering as canary, not the one-rollout-at-a-time policy)
        LOOPML_ROLLOUT_PATIENCE_SECONDS="0",
        DAGSTER_HOME=str(home / "dagster"),
        BENTOML_HOME=str(home / "bentoml"),
    )
    loopml = [sys.executable, "-m", "loopml.cli"]
    subprocess.run([*loopml, "up"], check=True, cwd=ROOT)
    try:
        run_rounds(args.labelled, args.rounds)
    finally:
        if not args.keep:
            subprocess.run([*loopml, "down"], cwd=ROOT)


def run_rounds(labelled: int, rounds: int) -> None:
    from dagster import DagsterInstance

    from loopml.config import get_settings
    from loopml.demo import sample_items
    from loopml.demo_data import load_rotten_tomatoes
    from loopml.functions import create_function
    from loopml.labelstudio import LabelStudioClient
    from serving.model_store import list_versions

    settings = get_settings()
    client = LabelStudioClient.from_settings(settings)
    texts, labels = sample_items(*load_rotten_tomatoes(), items=labelled + rounds)
    project = create_function(settings, "bench-sentiment", "text", ["positive", "negative"])
    choice = lambda label: [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]  # noqa: E731
    client.import_tasks(
        project,
        [
            {"data": {"text": t}, "annotations": [{"result": choice(lab)}]}
            for t, lab in zip(texts[:labelled], labels[:labelled], strict=True)
        ],
    )
    client.import_tasks(project, [{"data": {"text": t}} for t in texts[labelled:]])
    print(f"imported {labelled} labelled + {rounds} unlabelled tasks; waiting for the first version ...", flush=True)
    wait_for_version(settings, "bench-sentiment", 1, timeout_s=300)
    instance = DagsterInstance.get()
    from loopml.apikeys import create_key

    headers = {"Authorization": f"Bearer {create_key(settings, 'bench')[1]}"}
    unlabelled = client.unlabeled_tasks(project, limit=rounds)
    rows = []
    for i, task in enumerate(unlabelled):
        have = len(list_versions(settings, "bench-sentiment"))
        time.sleep(0.5)
        t0 = time.time()
        client.create_annotation(task.task_id, labels[labelled + i] if labelled + i < len(labels) else "positive")
        wait_for_version(settings, "bench-sentiment", have + 1, timeout_s=120)
        total = time.time() - t0
        new_tag = list_versions(settings, "bench-sentiment")[-1].tag
        serving = wait_for_serving(settings, "bench-sentiment", new_tag, headers, timeout_s=60)
        serving_total = (serving - t0) if serving else float("nan")
        run = wait_for_run(instance, t0)
        steps = {s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(run.dagster_run.run_id)}
        rows.append(
            {
                "answering_canary_traffic": serving_total,
                "registered": total,
                "sensor_wait": run.create_timestamp.timestamp() - t0,
                "run_launch": (run.start_time or 0) - run.create_timestamp.timestamp(),
                "pull": steps.get("annotations", 0.0),
                "validate": steps.get("dataset", 0.0),
                "embed": steps.get("features", 0.0),
                "train+register": steps.get("model", 0.0),
                "run_total": (run.end_time or 0) - (run.start_time or 0),
            }
        )
        print(f"round {i + 1}: registered {total:.2f} s, serving {serving_total:.2f} s", flush=True)
    print_table(rows, labelled)


def wait_for_run(instance, t0: float, timeout_s: float = 60):
    """The training run created after ``t0``, once it has finished."""
    from datetime import UTC, datetime

    from dagster import DagsterRunStatus, RunsFilter

    since = datetime.fromtimestamp(t0, UTC)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        records = instance.get_run_records(filters=RunsFilter(job_name="train_function", created_after=since))
        done = [r for r in records if r.dagster_run.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)]
        if records and len(done) == len(records):
            return min(done, key=lambda r: r.create_timestamp)
        time.sleep(0.2)
    raise TimeoutError("the training run did not finish")


def wait_for_serving(settings, function: str, tag: str, headers: dict[str, str], timeout_s: float) -> float | None:
    """When the serving API first lists ``tag`` as its canary or primary (None: the gate rejected it)."""
    import requests

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        info = requests.get(f"{settings.serving_url}/v1/functions/{function}", headers=headers, timeout=5).json()
        serving = {(info.get(role) or {}).get("version") for role in ("primary", "canary")}
        if tag in serving:
            return time.time()
        from loopml.deployments import DeploymentStore

        last = DeploymentStore(settings).history(function, limit=1)[-1]
        if last.action == "reject" and last.details.get("candidate") == tag:
            return None
        time.sleep(0.05)
    return None


def wait_for_version(settings, function: str, count: int, timeout_s: float) -> None:
    from serving.model_store import list_versions

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if len(list_versions(settings, function)) >= count:
            return
        time.sleep(0.1)
    raise TimeoutError(f"no version {count} of {function} after {timeout_s} s; see the Dagster UI")


def print_table(rows: list[dict[str, float]], labelled: int) -> None:
    print(
        f"\nAnnotation saved -> new version registered / answering canary traffic ({labelled} labelled texts, "
        f"{len(rows)} rounds)\n"
    )
    print("| stage | p50 s | p95 s |")
    print("|---|---|---|")
    for key in rows[0]:
        values = sorted(r[key] for r in rows if r[key] == r[key])
        if not values:
            print(f"| {key} | n/a | n/a |")
            continue
        p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
        print(f"| {key} | {statistics.median(values):.2f} | {p95:.2f} |")


if __name__ == "__main__":
    main()
