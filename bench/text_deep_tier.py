"""Is a text deep tier worth having? SetFit-style fine-tuned MiniLM against LoopML's frozen-encoder AutoML.

Same fixed stratified 20 % holdout (seed 0) and the same draws of 8, 32 and 128 labelled examples per class as
``bench/learning_curve.py``. Per data set, size and seed, two arms on the same training rows:

* AutoML: ``run_automl`` on texts + cached MiniLM embeddings, the rest of the training pool's embeddings as
  unlabelled items: exactly ``bench/learning_curve.py``'s LoopML arm;
* deep: :func:`loopml.automl.text_deep.fit_text_deep` (contrastive fine-tuning of MiniLM's last
  ``--train-layers`` layers, default all 6, on SetFit's pairs, 20 per row, 1 epoch, then a
  temperature-calibrated logistic regression; ``folds=0``: no per-fold fine-tuning).

Printed: holdout accuracy and expected calibration error of both (mean over seeds, ± half the range), the
difference deep - AutoML with its paired standard error over seeds, the seconds each arm trains on this machine,
the deep arm's seconds to answer the whole test set (the frozen prefix of the test texts is computed once per
data set and timed; each version's tail then runs on it), and the weights one fine-tuned version adds.

    .venv/bin/python bench/text_deep_tier.py [--quick] [--seeds 2] [--sizes 8,32,128] [--datasets rotten_tomatoes]
        [--train-layers 2] [--threads 1] [--log runs.jsonl]   # several processes may share one log
    .venv/bin/python bench/text_deep_tier.py --from-log runs.jsonl   # tables of logged runs

On two CPU cores a run is slow: fine-tuning all 6 layers took about 6 minutes at 32 labels per class on
RottenTomatoes (80 steps of 16 pairs), and BBC News' 256-token articles cost about 15 times more per step than
RottenTomatoes' snippets. The default sizes and seeds take hours on a CPU; a GPU is what this is sized for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automl_speed import DATASETS, load_with_embeddings  # noqa: E402
from learning_curve import Split, draw, holdout_split, loopml  # noqa: E402

WHOLE_ENCODER_PARAMETERS = 22_565_376  # all-MiniLM-L6-v2 with its embeddings (BERT pooler unused)


@dataclass
class Run:
    """One data set, size and seed: both arms' scores and costs."""

    dataset: str
    per_class: int
    seed: int
    automl_accuracy: float
    automl_ece: float
    automl_seconds: float
    deep_accuracy: float
    deep_ece: float
    deep_train_seconds: float
    deep_steps_run: int
    deep_steps_planned: int
    deep_temperature: float
    deep_test_tail_seconds: float
    deep_memory_bytes: int


def evaluate(
    name: str,
    sizes: list[int],
    seeds: dict[int, int],
    train_layers: int,
    budget: float,
    log: Path | None,
    threads: int | None = None,
    first_seed: int = 0,
) -> tuple[list[Run], float, int]:
    """Every run of one data set, the seconds to compute the test texts' frozen prefix, and the test size."""
    from loopml.automl.metrics import expected_calibration_error
    from loopml.automl.text_deep import fit_text_deep, shared_backbone

    texts, labels, emb = load_with_embeddings(name)
    label_array = np.array(labels)
    pool, test = holdout_split(labels)
    test_texts = [texts[i] for i in test]
    label_set = sorted(set(labels))
    test_y = np.array([label_set.index(label) for label in label_array[test]])
    started = time.perf_counter()
    test_states = shared_backbone().prefix_states(test_texts, train_layers)
    prefix_seconds = time.perf_counter() - started
    print(f"  {name}: test prefix of {len(test)} texts {prefix_seconds:.1f} s", file=sys.stderr, flush=True)
    runs = []
    for per_class in sizes:
        for seed in range(first_seed, first_seed + seeds[per_class]):
            rows = draw(pool, label_array, per_class, seed)
            train_texts, train_labels = [texts[i] for i in rows], list(label_array[rows])
            rest = np.setdiff1d(pool, rows)
            split = Split(train_texts, emb[rows], train_labels, test_texts, emb[test], emb[rest])
            t0 = time.perf_counter()
            automl_proba = np.asarray(loopml(split), dtype=np.float64)
            automl_seconds = time.perf_counter() - t0
            deep = fit_text_deep(
                train_texts,
                train_labels,
                label_set,
                seed=seed,
                train_layers=train_layers,
                time_budget_s=budget,
                threads=threads,
            )
            t0 = time.perf_counter()
            deep_proba = deep.model.predict_proba(test_texts, states=test_states)
            tail_seconds = time.perf_counter() - t0
            run = Run(
                name,
                per_class,
                seed,
                float(np.mean(automl_proba.argmax(axis=1) == test_y)),
                expected_calibration_error(automl_proba, test_y),
                automl_seconds,
                float(np.mean(deep_proba.argmax(axis=1) == test_y)),
                expected_calibration_error(deep_proba, test_y),
                deep.train_seconds,
                deep.steps_run,
                deep.steps_planned,
                deep.temperature,
                tail_seconds,
                deep.model.memory_bytes(),
            )
            runs.append(run)
            print(f"  {json.dumps(asdict(run))}", file=sys.stderr, flush=True)
            if log is not None:
                with log.open("a", encoding="utf-8") as f:
                    extra = {"test_prefix_seconds": prefix_seconds, "test_texts": len(test)}
                    f.write(json.dumps(asdict(run) | extra) + "\n")
    return runs, prefix_seconds, len(test)


def read_logs(paths: list[Path]) -> dict[str, tuple[list[Run], float, int]]:
    """Runs written with ``--log`` (e.g. by several processes, one per data set), grouped as :func:`evaluate`."""
    fields = set(Run.__dataclass_fields__)
    results: dict[str, tuple[list[Run], float, int]] = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            name = record["dataset"]
            n_test = record.get("test_texts") or len(holdout_split(DATASETS[name]()[1])[1])
            runs, _, _ = results.setdefault(name, ([], record["test_prefix_seconds"], n_test))
            runs.append(Run(**{k: v for k, v in record.items() if k in fields}))
    return results


def _mean_spread(values: list[float], digits: int = 4) -> str:
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ±{(max(values) - min(values)) / 2:.{digits - 1}f}"


def _paired(a: list[float], b: list[float]) -> tuple[float, str]:
    diff = np.subtract(a, b)
    se = f"{diff.std(ddof=1) / np.sqrt(len(diff)):.4f}" if len(diff) > 1 else "-"
    return float(diff.mean()), se


def print_tables(results: dict[str, tuple[list[Run], float, int]], train_layers: int) -> None:
    """The accuracy, calibration and cost tables (Markdown)."""
    print(
        f"# Text deep tier: fine-tuned MiniLM (last {train_layers} layers, SetFit pairs) against frozen-encoder "
        f"AutoML ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})\n"
    )
    print("| data set | labels/class | seeds | AutoML acc | deep acc | deep - AutoML | paired SE |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    groups: dict[tuple[str, int], list[Run]] = {}
    for runs, _, _ in results.values():
        for run in runs:
            groups.setdefault((run.dataset, run.per_class), []).append(run)
    for (name, size), runs in groups.items():
        a = [r.automl_accuracy for r in runs]
        d = [r.deep_accuracy for r in runs]
        delta, se = _paired(d, a)
        print(f"| {name} | {size} | {len(runs)} | {_mean_spread(a)} | {_mean_spread(d)} | {delta:+.4f} | {se} |")
    print("\nExpected calibration error (top label, 15 bins; lower is better)\n")
    print("| data set | labels/class | AutoML ECE | deep ECE | deep - AutoML | paired SE | deep temperature |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (name, size), runs in groups.items():
        a = [r.automl_ece for r in runs]
        d = [r.deep_ece for r in runs]
        delta, se = _paired(d, a)
        temps = statistics.mean(r.deep_temperature for r in runs)
        print(f"| {name} | {size} | {_mean_spread(a, 3)} | {_mean_spread(d, 3)} | {delta:+.3f} | {se} | {temps:.2f} |")
    print("\nCost on this machine (mean per seed)\n")
    print(
        "| data set | labels/class | AutoML train s | deep train s | deep steps run/planned | deep test answer s "
        "(prefix + tail) | test texts | deep MB per version |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, size), runs in groups.items():
        _, prefix_seconds, n_test = results[name]
        tail = statistics.mean(r.deep_test_tail_seconds for r in runs)
        steps = f"{statistics.mean(r.deep_steps_run for r in runs):.0f}/{runs[0].deep_steps_planned}"
        mb = runs[0].deep_memory_bytes / 1e6
        print(
            f"| {name} | {size} | {statistics.mean(r.automl_seconds for r in runs):.1f} | "
            f"{statistics.mean(r.deep_train_seconds for r in runs):.1f} | {steps} | "
            f"{prefix_seconds + tail:.1f} ({prefix_seconds:.1f} + {tail:.1f}) | {n_test} | {mb:.1f} |"
        )
    print(
        f"\n(A version stores the trained layers and the head; fine-tuning the whole encoder instead would store "
        f"{WHOLE_ENCODER_PARAMETERS * 4 / 1e6:.1f} MB of float32 weights per version.)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 and 32 per class, 2 seeds, RottenTomatoes only")
    parser.add_argument("--seeds", type=int, default=3, help="seeds at 8 and 32 per class")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed, first-seed + 1, ...")
    parser.add_argument("--seeds-large", type=int, default=1, help="seeds at 128 per class (and above)")
    parser.add_argument("--sizes", default="8,32,128", help="labelled examples per class, comma-separated")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--train-layers", type=int, default=6, help="encoder layers fine-tuned (6: all; 2: faster)")
    parser.add_argument("--budget", type=float, default=3600.0, help="seconds one deep fit may take")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all usable)")
    parser.add_argument("--log", type=Path, default=None, help="append each run as a JSON line to this file")
    parser.add_argument("--from-log", type=Path, nargs="+", default=None, help="only print tables of these logs")
    args = parser.parse_args()
    if args.from_log:
        print_tables(read_logs(args.from_log), args.train_layers)
        return
    if args.quick:
        args.sizes, args.seeds, args.datasets = "8,32", 2, "rotten_tomatoes"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    seeds = {size: args.seeds if size <= 32 else args.seeds_large for size in sizes}
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    results = {
        name: evaluate(name, sizes, seeds, args.train_layers, args.budget, args.log, args.threads, args.first_seed)
        for name in args.datasets.split(",")
        if name
    }
    print_tables(results, args.train_layers)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
