"""Loop latency: annotation saved in Label Studio -> new version registered -> answering canary traffic.

Starts the platform (`loopml up`: Label Studio, Dagster webserver + daemon + run worker, the serving API) in a
temporary LOOPML_HOME on spare ports, with the product's default settings. Two measurements:

1. A brand-new function: created, its tasks imported unlabelled, then annotated one at a time through the Label
   Studio API as a person would; timed from the annotation that lets it train (every label has its minimum,
   LOOPML_MIN_EXAMPLES_PER_LABEL, and two of each in the training split) until the serving API answers with the
   first version.
2. A function with N labelled RottenTomatoes texts (and with ``--images N`` an image function with N labelled
   Fashion-MNIST images, on the default image encoder): single annotations saved through the Label Studio API, each
   timed until the next version is registered and until the serving API answers with it as canary. No traffic
   reaches the canary here, so before each round the bench promotes the previous canary by hand (what the
   controller does after a healthy ramp): each round starts with no rollout in progress.

Prints the raw speed of the encoder on this machine (the learning stages scale with it), p50/p95 and a
breakdown per stage from Dagster's run and step stats; "not learning" is everything but embed and train.

    .venv/bin/python bench/loop_latency.py [--labelled 2000] [--rounds 8] [--new-functions 3] [--images 1000]
        [--database-url postgresql://user@host/loopml_bench] [--broker-url redis://host:6379/0]
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
    parser.add_argument("--new-functions", type=int, default=3)
    parser.add_argument(
        "--images", type=int, default=0, help="also an image function with this many labelled Fashion-MNIST images"
    )
    parser.add_argument("--image-rounds", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="leave the services running")
    parser.add_argument(
        "--database-url", help="LOOPML_DATABASE_URL for the run: a PostgreSQL database (created when missing)"
    )
    parser.add_argument("--broker-url", help="LOOPML_BROKER_URL for the run: Dagster runs on Celery workers")
    args = parser.parse_args()

    temporary_home("loopml-bench-", 18400)
    if args.database_url:
        os.environ["LOOPML_DATABASE_URL"] = args.database_url
    if args.broker_url:
        os.environ["LOOPML_BROKER_URL"] = args.broker_url
    stores = "PostgreSQL" if os.environ.get("LOOPML_DATABASE_URL", "").startswith("postgres") else "SQLite"
    runs = "Celery workers" if os.environ.get("LOOPML_BROKER_URL") else "the warm run worker"
    print(f"stores on {stores}, runs on {runs}", flush=True)
    loopml = [sys.executable, "-m", "loopml.cli"]
    print_encoder_speed()
    subprocess.run([*loopml, "up"], check=True, cwd=ROOT)
    try:
        new_function_rounds(args.new_functions)
        if args.rounds:
            run_rounds(args.labelled, args.rounds)
        if args.images:
            run_rounds(args.images, args.image_rounds, input_type="image")
    finally:
        if not args.keep:
            subprocess.run([*loopml, "down"], cwd=ROOT)


def temporary_home(prefix: str, ports: int) -> Path:
    """A fresh LOOPML_HOME (and Dagster's and BentoML's homes in it) with the services on spare ports
    (``ports`` + 80 Label Studio, + 30 Dagster, + 90 serving), set in this process's environment."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(
        LOOPML_HOME=str(home),
        LOOPML_LABELSTUDIO_PORT=str(ports + 80),
        LOOPML_DAGSTER_PORT=str(ports + 30),
        LOOPML_SERVING_PORT=str(ports + 90),
        DAGSTER_HOME=str(home / "dagster"),
        BENTOML_HOME=str(home / "bentoml"),
    )
    return home


def print_encoder_speed() -> None:
    """Raw speed of the default encoder on this machine: the embed stage scales with it."""
    from loopml.demo_data import load_rotten_tomatoes
    from loopml.encoders import DEFAULT_TEXT_ENCODER, get_encoder

    texts = load_rotten_tomatoes()[0][:512]
    encoder = get_encoder(DEFAULT_TEXT_ENCODER)
    encoder.encode(texts[:64])  # warm-up
    started = time.perf_counter()
    encoder.encode(texts)
    batch = len(texts) / (time.perf_counter() - started)
    singles = []
    for text in texts[:50]:
        t0 = time.perf_counter()
        encoder.encode([text])
        singles.append(time.perf_counter() - t0)
    print(
        f"encoder {DEFAULT_TEXT_ENCODER} on this machine: {batch:.0f} texts/s in batches of 64, "
        f"{statistics.median(singles) * 1000:.1f} ms per single text (p50)\n",
        flush=True,
    )


def new_function_rounds(count: int) -> None:
    """Brand-new functions annotated one task at a time: last minimum example saved -> first version answers."""
    from loopml.apikeys import create_key
    from loopml.config import get_settings
    from loopml.demo import sample_items
    from loopml.demo_data import load_rotten_tomatoes
    from loopml.functions import create_function
    from loopml.labelstudio import LabelStudioClient

    if count <= 0:
        return
    settings = get_settings()
    client = LabelStudioClient.from_settings(settings)
    headers = {"Authorization": f"Bearer {create_key(settings, 'bench-new')[1]}"}
    minimum = settings.min_examples_per_label
    texts, labels = sample_items(*load_rotten_tomatoes(), items=400, seed=7)
    by_label = {label: [t for t, lab in zip(texts, labels, strict=True) if lab == label] for label in set(labels)}
    rows = []
    for n in range(count):
        name = f"bench-new-{n + 1}"
        project = create_function(settings, name, "text", sorted(by_label))
        extra = 3 * minimum  # examples a person may have to add when the first ones fell in the holdout
        chosen = [(by_label[label][n * extra + i], label) for i in range(extra) for label in sorted(by_label)]
        client.import_tasks(project, [{"data": {"text": t}} for t, _ in chosen])
        task_of = {task.data["text"]: task.task_id for task in client.unlabeled_tasks(project, limit=len(chosen))}
        saved = {label: 0 for label in by_label}
        registered = answering = float("nan")
        for text, label in chosen:
            t0 = time.time()
            client.create_annotation(task_of[text], label)
            saved[label] += 1
            if min(saved.values()) < minimum:
                time.sleep(0.3)  # a person's pace
                continue
            try:  # every label has its minimum: the first version should follow (unless a split left one short)
                wait_for_version(settings, name, 1, timeout_s=30)
            except TimeoutError:
                continue
            registered = time.time() - t0
            answered = wait_for_serving(settings, name, f"{name}:v1", headers, timeout_s=120)
            answering = (answered - t0) if answered else float("nan")
            break
        rows.append({"first_version_answering": answering, "registered": registered})
        print(
            f"new function {n + 1}: {sum(saved.values())} examples, registered {registered:.2f} s, "
            f"answering {answering:.2f} s after the last one",
            flush=True,
        )
    print_table(rows, f"A new function: the example that lets it train saved -> first version ({minimum} per label)")


def promote_canary(settings, function: str) -> None:
    """End the previous round's rollout as a healthy ramp would (no traffic reaches the canary here)."""
    from loopml.deployments import DeploymentStore

    store = DeploymentStore(settings)
    state = store.get(function)
    if state is not None and state.canary_tag:
        store.promote(function, "bench: the previous round's canary, promoted by hand", actor="bench")


def run_rounds(labelled: int, rounds: int, input_type: str = "text") -> None:
    """A function with ``labelled`` labelled items (RottenTomatoes texts, or Fashion-MNIST images for
    ``input_type="image"``), then ``rounds`` single annotations, each timed to the next version."""
    from dagster import DagsterInstance

    from loopml.config import get_settings
    from loopml.demo import load_fashion_images, sample_items
    from loopml.demo_data import FASHION_MNIST_LABELS, load_rotten_tomatoes
    from loopml.functions import create_function, input_key
    from loopml.labelstudio import LabelStudioClient, choice_result
    from serving.model_store import list_versions

    settings = get_settings()
    client = LabelStudioClient.from_settings(settings)
    if input_type == "image":
        name, label_set, loaded = "bench-fashion", list(FASHION_MNIST_LABELS), load_fashion_images()
    else:
        name, label_set, loaded = "bench-sentiment", ["positive", "negative"], load_rotten_tomatoes()
    texts, labels = sample_items(*loaded, items=labelled + rounds, input_type=input_type)
    key = input_key(input_type)
    project = create_function(settings, name, input_type, label_set)
    client.import_tasks(
        project,
        [
            {"data": {key: t}, "annotations": [{"result": choice_result(lab, to_name=key)}]}
            for t, lab in zip(texts[:labelled], labels[:labelled], strict=True)
        ],
    )
    client.import_tasks(project, [{"data": {key: t}} for t in texts[labelled:]])
    print(f"imported {labelled} labelled + {rounds} unlabelled tasks; waiting for the first version ...", flush=True)
    started = time.time()
    wait_for_version(settings, name, 1, timeout_s=900)
    instance = DagsterInstance.get()
    wait_until_trained_on(instance, name, labelled)
    print(f"trained on all {labelled} in {time.time() - started:.0f} s", flush=True)
    from loopml.apikeys import create_key

    headers = {"Authorization": f"Bearer {create_key(settings, 'bench')[1]}"}
    unlabelled = client.unlabeled_tasks(project, limit=rounds)
    rows = []
    for i, task in enumerate(unlabelled):
        promote_canary(settings, name)
        have = len(list_versions(settings, name))
        time.sleep(1.0)
        t0 = time.time()
        client.create_annotation(task.task_id, labels[min(labelled + i, len(labels) - 1)], to_name=key)
        wait_for_version(settings, name, have + 1, timeout_s=120)
        total = time.time() - t0
        new_tag = list_versions(settings, name)[-1].tag
        serving = wait_for_serving(settings, name, new_tag, headers, timeout_s=60)
        serving_total = (serving - t0) if serving else float("nan")
        run = wait_for_run(instance, t0, name)
        steps = {s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(run.dagster_run.run_id)}
        learning = steps.get("features", 0.0) + steps.get("model", 0.0)
        rows.append(
            {
                "answering_canary_traffic": serving_total,
                "registered": total,
                "not_learning (all but embed, train)": serving_total - learning,
                "sensor_wait": run.create_timestamp.timestamp() - t0,
                "run_launch": (run.start_time or 0) - run.create_timestamp.timestamp(),
                "pull": steps.get("annotations", 0.0),
                "validate": steps.get("dataset", 0.0),
                "embed": steps.get("features", 0.0),
                "train+register": steps.get("model", 0.0),
                "gate+deploy": steps.get("deployment", 0.0),
                "run_total": (run.end_time or 0) - (run.start_time or 0),
                "serving_pick_up": (serving - (run.end_time or serving)) if serving else float("nan"),
            }
        )
        print(f"round {i + 1}: registered {total:.2f} s, serving {serving_total:.2f} s", flush=True)
    print_table(rows, f"Annotation saved -> new version registered / answering as canary ({labelled} labelled {key}s)")


def wait_until_trained_on(instance, function: str, annotated: int, timeout_s: float = 600) -> None:
    """Until a finished training run of ``function`` pulled ``annotated`` annotated tasks (an import arrives in
    batches; the first version may have seen only the first one) and no training run is active."""
    from dagster import AssetKey, AssetRecordsFilter, DagsterRunStatus, RunsFilter

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        records = instance.fetch_materializations(
            records_filter=AssetRecordsFilter(asset_key=AssetKey("annotations"), asset_partitions=[function]), limit=1
        ).records
        pulled = records[0].event_log_entry.asset_materialization.metadata.get("annotated_tasks") if records else None
        active = instance.get_run_records(
            filters=RunsFilter(
                job_name="train_function",
                tags={"dagster/partition": function},
                statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED],
            ),
            limit=1,
        )
        if pulled is not None and int(pulled.value) >= annotated and not active:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{function} was not trained on its {annotated} annotated tasks in {timeout_s} s")


def wait_for_run(instance, t0: float, function: str, timeout_s: float = 60):
    """The training run of ``function`` created after ``t0``, once it has finished."""
    from datetime import UTC, datetime

    from dagster import DagsterRunStatus, RunsFilter

    since = datetime.fromtimestamp(t0, UTC)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        records = instance.get_run_records(
            filters=RunsFilter(job_name="train_function", created_after=since, tags={"dagster/partition": function})
        )
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

        history = DeploymentStore(settings).history(function, limit=1)
        if history and history[-1].action == "reject" and history[-1].details.get("candidate") == tag:
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


def print_table(rows: list[dict[str, float]], title: str) -> None:
    """p50 and p95 per stage, with the spread (min, max) and how many rounds had a value."""
    print(f"\n{title}, {len(rows)} rounds\n")
    print("| stage | p50 s | p95 s | min s | max s | n |")
    print("|---|---|---|---|---|---|")
    for key in rows[0]:
        values = sorted(r[key] for r in rows if r[key] == r[key])
        if not values:
            print(f"| {key} | n/a | n/a | n/a | n/a | 0 |")
            continue
        p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
        print(
            f"| {key} | {statistics.median(values):.2f} | {p95:.2f} | {values[0]:.2f} | {values[-1]:.2f} "
            f"| {len(values)} |"
        )


if __name__ == "__main__":
    main()
