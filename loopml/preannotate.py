"""Pre-annotations: the serving model's answer on every unlabelled task, so annotators confirm instead of type.

Scores come from the function's primary version (the one answering most traffic); embeddings of task texts are
read from, and added to, the feature cache, so a later promotion re-scores without re-encoding. A pass plans
its work cached-first (:func:`plan_chunks`): tasks whose embeddings are cached are only scored, which takes
milliseconds, so they go first and in big chunks; tasks still to embed follow in small chunks (a long article
takes tens of milliseconds to embed), and :class:`Progress` times the two kinds apart for an honest ETA.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from loopml.dataset import content_hash
from loopml.features import FeatureCache
from loopml.labelstudio import Prediction, TaskRecord


@dataclass(frozen=True)
class PreannotationResult:
    predictions: list[Prediction]
    newly_embedded: int

    def label_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.predictions:
            counts[p.label] = counts.get(p.label, 0) + 1
        return counts


def task_text(task: TaskRecord, key: str = "text") -> str:
    """The task's input under ``key`` (``text``, or ``image`` for an image function's data URI), or ``""`` when
    it has none worth scoring."""
    text = str(task.data.get(key) or "")
    return text if text.strip() else ""


def predict_tasks(
    tasks: Sequence[TaskRecord],
    predict_proba: Callable[[list[str], np.ndarray], np.ndarray],
    label_set: Sequence[str],
    model_version: str,
    cache: FeatureCache,
    encode: Callable[[list[str]], np.ndarray],
    *,
    hash_of: Mapping[int, str] | None = None,
    known: Mapping[str, np.ndarray] | None = None,
    key: str = "text",
) -> PreannotationResult:
    """One :class:`Prediction` per task with text: the top label and its calibrated probability.

    ``hash_of`` (task id -> content hash) spares hashing the texts again; ``known`` (content hash -> embedding,
    looked up in ``cache`` beforehand) spares reading the cache again when it holds every task's embedding.
    ``key`` names the input in the tasks' data and the object the predictions label (``to_name``)."""
    usable = [t for t in tasks if task_text(t, key)]
    if not usable:
        return PreannotationResult([], 0)
    texts = [task_text(t, key) for t in usable]
    hashes = [hash_of[t.task_id] if hash_of else content_hash(text) for t, text in zip(usable, texts, strict=True)]
    if known is not None and all(h in known for h in hashes):
        embeddings, new = np.stack([known[h] for h in hashes]), 0
    else:
        embeddings, new = cache.embed(hashes, texts, encode)
    proba = np.asarray(predict_proba(texts, embeddings.astype(np.float32)))
    best = proba.argmax(axis=1)
    predictions = [
        Prediction(task.task_id, label_set[int(i)], float(proba[row, i]), model_version, to_name=key)
        for row, (task, i) in enumerate(zip(usable, best, strict=True))
    ]
    return PreannotationResult(predictions, int(new))


@dataclass(frozen=True)
class Chunk:
    """Tasks scored and imported together; ``cached``: every embedding is in the cache (nothing to encode)."""

    tasks: list[TaskRecord]
    cached: bool


def plan_chunks(
    tasks: Sequence[TaskRecord],
    hash_of: Mapping[int, str],
    cached: Collection[str],
    embed_chunk: int,
    score_chunk: int,
) -> list[Chunk]:
    """The pass's work, cached first: the tasks whose embedding is cached (or that have no text) in chunks of
    ``score_chunk``, then the tasks to embed in chunks of ``embed_chunk``; each group keeps the tasks' order."""
    ready: list[TaskRecord] = []
    to_embed: list[TaskRecord] = []
    for task in tasks:
        digest = hash_of.get(task.task_id)
        (ready if digest is None or digest in cached else to_embed).append(task)
    return [Chunk(ready[i : i + score_chunk], True) for i in range(0, len(ready), max(score_chunk, 1))] + [
        Chunk(to_embed[i : i + embed_chunk], False) for i in range(0, len(to_embed), max(embed_chunk, 1))
    ]


@dataclass
class Progress:
    """Counts, rate and ETA of a pass. Scoring cached tasks and embedding new ones go at rates that differ a
    hundredfold, so each kind is counted and timed apart and the ETA adds the two remainders."""

    cached_total: int
    new_total: int
    cached_done: int = 0
    new_done: int = 0
    cached_seconds: float = 0.0
    new_seconds: float = 0.0

    @classmethod
    def of(cls, chunks: Sequence[Chunk]) -> Progress:
        cached = sum(len(c.tasks) for c in chunks if c.cached)
        return cls(cached, sum(len(c.tasks) for c in chunks) - cached)

    @property
    def total(self) -> int:
        return self.cached_total + self.new_total

    @property
    def done(self) -> int:
        return self.cached_done + self.new_done

    @property
    def seconds(self) -> float:
        return self.cached_seconds + self.new_seconds

    def add(self, chunk: Chunk, seconds: float) -> None:
        if chunk.cached:
            self.cached_done += len(chunk.tasks)
            self.cached_seconds += seconds
        else:
            self.new_done += len(chunk.tasks)
            self.new_seconds += seconds

    def rate(self) -> float:
        """Tasks per second so far (0 before any work)."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def eta_seconds(self) -> float | None:
        """Seconds left at the rates measured so far; ``None`` while a kind of work left has not been timed."""
        left = 0.0
        for remaining, done, seconds in (
            (self.cached_total - self.cached_done, self.cached_done, self.cached_seconds),
            (self.new_total - self.new_done, self.new_done, self.new_seconds),
        ):
            if remaining <= 0:
                continue
            if done == 0 or seconds <= 0:
                return None
            left += remaining * seconds / done
        return left

    def summary(self) -> str:
        """``768/2000 tasks (512 embedded, 256 re-scored from cached embeddings), 15.2 tasks/s, about 81 s left``"""
        eta = self.eta_seconds()
        left = f"about {eta:.0f} s left" if eta is not None else "time left unknown"
        return (
            f"{self.done}/{self.total} tasks ({self.new_done} embedded, {self.cached_done} re-scored from cached "
            f"embeddings), {self.rate():.1f} tasks/s, {'done' if self.done >= self.total else left}"
        )
