"""The demo: two text functions and an image function on real data shipped in packages, a simulated annotator and
a simulated product calling the API.

The image function (Fashion-MNIST, from Debian's ``dataset-fashion-mnist``, installed by ``make demo``) is left
out, with a message, where that package is missing.

The annotator labels tasks through the Label Studio API from the data set's ground truth (kept under
LOOPML_HOME/demo, never shown to Label Studio), at a configurable pace, so the loop turns by itself.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from loopml.config import Settings
from loopml.dataset import input_hash


@dataclass(frozen=True)
class DemoFunction:
    name: str
    labels: list[str]
    loader: Callable[[], tuple[list, list[str]]]  # texts, or images as data URIs; and their true labels
    input_type: str = "text"


def load_fashion_images() -> tuple[list[str], list[str]]:
    """Fashion-MNIST's first 10,000 training images as data URIs (what the demo imports and calls with)."""
    from loopml.demo_data import load_fashion_mnist
    from loopml.images import data_uri

    images, labels = load_fashion_mnist("train", limit=10_000)
    return [data_uri(image) for image in images], labels


def demo_functions(echo: Callable[[str], None] | None = None) -> list[DemoFunction]:
    """The demo's functions; the image one only where its data set is installed (``echo`` says when not)."""
    from loopml.demo_data import (
        FASHION_MNIST_LABELS,
        DemoDataMissing,
        fashion_mnist_files,
        load_bbc_news,
        load_rotten_tomatoes,
    )

    functions = [
        DemoFunction("review-sentiment", ["positive", "negative"], load_rotten_tomatoes),
        DemoFunction("news-topic", ["business", "entertainment", "politics", "sports", "tech"], load_bbc_news),
    ]
    try:
        fashion_mnist_files()
    except DemoDataMissing as missing:
        if echo is not None:
            echo(f"the image demo function is left out: {missing}")
        return functions
    return [*functions, DemoFunction("fashion-item", list(FASHION_MNIST_LABELS), load_fashion_images, "image")]


def truth_path(settings: Settings, function: str) -> Path:
    return settings.home / "demo" / f"{function}.truth.parquet"


def sample_items(
    texts: list[str], labels: list[str], items: int, seed: int = 0, input_type: str = "text"
) -> tuple[list[str], list[str]]:
    """A deterministic random sample of ``items`` (all when fewer), duplicates removed."""
    seen: set[str] = set()
    pairs = []
    for text, label in zip(texts, labels, strict=True):
        key = input_hash(text, input_type)
        if text.strip() and key not in seen:
            seen.add(key)
            pairs.append((text, label))
    random.Random(seed).shuffle(pairs)
    chosen = pairs[:items]
    return [t for t, _ in chosen], [label for _, label in chosen]


IMPORT_STEP = 250  # tasks per step of the demo's import progress bar


def setup_demo(settings: Settings, items: int, echo: Callable[[str], None] = print) -> None:
    """Create the demo functions (once) and import their items into Label Studio as unlabelled tasks, with a
    progress bar per function (the image function's 2,000 pictures take a while on a busy machine)."""
    from tqdm import tqdm

    from loopml.functions import FunctionRegistry, create_function, input_key
    from loopml.labelstudio import LabelStudioClient

    registry = FunctionRegistry(settings)
    client = LabelStudioClient.from_settings(settings)
    for demo in demo_functions(echo):
        if demo.name in registry.names():
            echo(f"demo function {demo.name} exists already")
            continue
        texts, labels = sample_items(*demo.loader(), items=items, input_type=demo.input_type)
        path = truth_path(settings, demo.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        hashes = [input_hash(t, demo.input_type) for t in texts]
        pl.DataFrame({"content_hash": hashes, "label": labels}).write_parquet(path)
        project_id = create_function(settings, demo.name, demo.input_type, demo.labels)
        key = input_key(demo.input_type)
        tasks = [{"data": {key: text}} for text in texts]
        count = 0
        with tqdm(total=len(tasks), unit="task", desc=f"importing {demo.name} into Label Studio") as bar:
            for start in range(0, len(tasks), IMPORT_STEP):
                count += client.import_tasks(project_id, tasks[start : start + IMPORT_STEP])
                bar.update(min(IMPORT_STEP, len(tasks) - start))
        echo(f"demo function {demo.name}: {count} tasks imported into Label Studio project {project_id}")


def start_annotator(settings: Settings, pace: float, noise: float) -> None:
    from loopml import services

    if services.pid_alive(services.read_pid(settings, "demo-annotator")):
        return
    services.spawn(
        settings,
        "demo-annotator",
        [sys.executable, "-m", "loopml.cli", "demo-annotator", "--pace", str(pace), "--noise", str(noise)],
    )


def run_annotator(settings: Settings, pace: float, noise: float, max_annotations: int | None = None) -> int:
    """Label the demo functions' tasks round-robin, one every ``pace`` seconds, until none are left."""
    from loopml.functions import FunctionRegistry
    from loopml.labelstudio import LabelStudioClient, LabelStudioUnavailable

    rng = random.Random(1)
    registry = FunctionRegistry(settings)
    client = LabelStudioClient.from_settings(settings)
    from loopml.functions import input_key

    truths: dict[str, dict[str, str]] = {}
    projects: dict[str, int] = {}
    input_types: dict[str, str] = {}
    for demo in demo_functions():
        path = truth_path(settings, demo.name)
        if demo.name in registry.names() and path.exists():
            frame = pl.read_parquet(path)
            truths[demo.name] = dict(zip(frame["content_hash"], frame["label"], strict=True))
            projects[demo.name] = registry.get(demo.name).labelstudio_project_id or 0
            input_types[demo.name] = demo.input_type
    queues: dict[str, list] = {name: [] for name in truths}
    done = 0
    while truths and (max_annotations is None or done < max_annotations):
        for name in list(truths):
            try:
                if not queues[name]:
                    queues[name] = client.unlabeled_tasks(projects[name], limit=50)
                    if not queues[name]:
                        print(f"{name}: every task is labelled", flush=True)
                        truths.pop(name)
                        continue
                task = queues[name].pop(0)
                kind = input_types[name]
                label = truths[name].get(input_hash(str(task.data.get(input_key(kind), "")), kind))
                if label is None:
                    continue
                if rng.random() < noise:
                    label = rng.choice([other for other in set(truths[name].values()) if other != label])
                client.create_annotation(task.task_id, label, to_name=input_key(kind))
                done += 1
                print(f"{name}: task {task.task_id} -> {label} ({done} so far)", flush=True)
            except LabelStudioUnavailable as error:
                print(f"{error}; retrying in 5 s", flush=True)
                time.sleep(5)
            time.sleep(pace / max(len(truths), 1))
    return done


DEMO_CLIENT_KEY = "demo-client.key"


def demo_client_key(settings: Settings) -> str:
    """The demo client's API key secret, created once and kept in LOOPML_HOME/secrets (mode 0600)."""
    import os

    from loopml.apikeys import create_key

    path = settings.secrets_dir / DEMO_CLIENT_KEY
    if path.exists():
        return path.read_text().strip()
    _, secret = create_key(settings, "demo-client")
    path.write_text(secret)
    os.chmod(path, 0o600)
    return secret


def start_client(settings: Settings, rate: float, feedback: float) -> None:
    from loopml import services

    demo_client_key(settings)
    if services.pid_alive(services.read_pid(settings, "demo-client")):
        return
    services.spawn(
        settings,
        "demo-client",
        [sys.executable, "-m", "loopml.cli", "demo-client", "--rate", str(rate), "--feedback", str(feedback)],
    )


def run_client(settings: Settings, rate: float, feedback: float, max_calls: int | None = None, seed: int = 2) -> int:
    """Call the serving API like a product would (:class:`loopml.client.Client`): ``rate`` calls a second over the
    demo functions, with the true label sent back as feedback on a ``feedback`` share of the calls (flagged when
    wrong).
    """
    from loopml.client import Client, ConnectionFailedError, LoopMLError, NotFoundError, ServiceUnavailableError

    rng = random.Random(seed)
    functions = demo_functions()
    pools = {demo.name: list(zip(*demo.loader(), strict=True)) for demo in functions}
    kinds = {demo.name: demo.input_type for demo in functions}
    calls = 0
    # no retries: a function without a deployed version answers 503 until its first model; the loop moves on
    with Client(settings.serving_url, demo_client_key(settings), timeout=10, retries=0) as client:
        while max_calls is None or calls < max_calls:
            name = rng.choice(sorted(pools))
            item, truth = rng.choice(pools[name])
            try:
                if kinds[name] == "image":
                    answer = client.invoke(name, image=item)
                else:
                    answer = client.invoke(name, item)
            except ConnectionFailedError as error:
                print(f"{error}; retrying in 5 s", flush=True)
                time.sleep(5)
                continue
            except (NotFoundError, ServiceUnavailableError):  # no function or no deployed version yet
                time.sleep(2)
                continue
            except LoopMLError as error:
                print(f"{name}: {error}", flush=True)
                answer = None
            calls += 1
            if answer is not None and rng.random() < feedback:
                try:
                    client.feedback(answer.invocation_id, label=truth, flagged=answer.label != truth)
                except LoopMLError as error:
                    print(f"feedback on {answer.invocation_id}: {error}", flush=True)
            if calls % 100 == 0:
                print(f"{calls} calls", flush=True)
            time.sleep(1.0 / rate)
    return calls
