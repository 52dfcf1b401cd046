"""The in-process model runtime of the serving process: heads, shared encoders, routing, hot reload.

* **Heads.** Each function's primary and canary versions are :class:`~loopml.automl.TextClassifier`
  objects loaded from the model store; the encoders they need are loaded once per process
  (:func:`loopml.encoders.get_encoder`). onnxruntime puts an encoder on CUDA when the CUDA provider is
  installed and a GPU is visible, else on the CPU; heads are tiny and run on the CPU either way.
* **Hot reload.** A thread polls :meth:`DeploymentStore.revision` every ``poll_interval_s`` (0.3 s). When it
  moves, the new deployment table is read, versions not loaded yet are loaded (and their encoders warmed),
  and only then is the :class:`Snapshot` reference swapped. A request works on the snapshot it started with,
  so in-flight requests finish on the old heads. Versions no longer deployed are dropped with the old
  snapshot; a version that fails to load is retried every ``retry_interval_s`` and the function keeps
  serving what it served before.
* **Routing.** Per item: the canary answers with probability ``canary_weight``, else the primary. With a
  caller's ``sticky_key`` the choice is deterministic: ``sha256(function, key)`` gives a stable bucket in
  [0, 1) and the canary answers when the bucket is below the weight, so raising the weight only moves
  callers from primary to canary. The canary also scores every item in shadow (the encoder runs once).
* **Adaptive batching.** :meth:`ModelRuntime.submit` queues a job; a scoring lane (a worker thread) takes
  everything waiting (up to ``max_batch_size`` texts, never waiting for more), runs each encoder once over
  all of it (sorted by length, in runs of :meth:`ModelRuntime.encoder_batch_size`), scores each head once
  over the rows that need it (the TF-IDF half of a head is computed beside the encoder) and resolves each
  job's future. Idle, a request runs alone at once; under load, batches grow with the queue.
* **Scoring lanes.** ``lanes`` such workers (default: one per core, at most 4) take batches concurrently.
  On a small CPU, two concurrent encoder calls use the cores far better than one call spread over both
  (MiniLM on 2 cores, one text per call: 128 texts/s for one caller, 190 for two), so concurrent requests
  are scored side by side rather than one batch after the other.

This module imports no BentoML; :mod:`serving.service` wraps it in HTTP.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from loopml.config import Settings, usable_cores
from loopml.deployments import DeploymentState, DeploymentStore
from loopml.encoders import DEFAULT_TEXT_ENCODER, Encoder, encoder_threads, get_encoder, warm_input
from loopml.functions import FunctionRegistry, FunctionSpec

if TYPE_CHECKING:
    from loopml.automl import TextClassifier

__all__ = [
    "ROLE_CANARY",
    "ROLE_PRIMARY",
    "FunctionServing",
    "Head",
    "ModelRuntime",
    "NotDeployedError",
    "RuntimeNotReadyError",
    "Scored",
    "Snapshot",
    "UnknownFunctionError",
    "choose_roles",
    "sticky_bucket",
]

logger = logging.getLogger(__name__)

ROLE_PRIMARY = "primary"
ROLE_CANARY = "canary"


class UnknownFunctionError(LookupError):
    """No function of this name is registered or deployed."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = list(known)
        listing = ", ".join(self.known) or "none yet"
        super().__init__(
            f"unknown function {name!r} (known functions: {listing}); create it with `loopml functions create`"
        )


class NotDeployedError(RuntimeError):
    """The function exists but no version of it is deployed (yet)."""

    def __init__(self, name: str, detail: str = "") -> None:
        self.name = name
        message = (
            f"function {name!r} has no deployed model version yet: label examples and let the pipeline "
            "train and deploy one (or deploy a version explicitly), then retry"
        )
        super().__init__(message + (f" ({detail})" if detail else ""))


class RuntimeNotReadyError(RuntimeError):
    """The runtime has not loaded the deployments yet."""


@dataclass(frozen=True)
class Head:
    """One loaded model version."""

    tag: str
    classifier: TextClassifier
    label_set: tuple[str, ...]
    encoder_id: str | None
    prefetch: _PrefetchedVectorizer | None = None

    @property
    def version(self) -> str:
        return self.tag.partition(":")[2]

    @property
    def needs_embeddings(self) -> bool:
        return bool(self.classifier.needs_embeddings)


@dataclass(frozen=True)
class FunctionServing:
    """What serves one function in a snapshot."""

    function: str
    primary: Head | None
    canary: Head | None
    canary_weight: float
    encoder_id: str
    revision: int = 0
    error: str | None = None  # why a deployed version is not loaded (retried)

    @property
    def heads(self) -> list[Head]:
        return [h for h in (self.primary, self.canary) if h is not None]


@dataclass(frozen=True)
class Snapshot:
    """Everything routing needs, swapped as one reference on reload."""

    revision: int
    functions: Mapping[str, FunctionServing]
    registered: frozenset[str]
    loaded_at: float

    @property
    def known(self) -> list[str]:
        return sorted(set(self.functions) | self.registered)


@dataclass(frozen=True)
class Scored:
    """One answered item: the answering version's result plus every scoring version's scores."""

    role: str
    answered_by: str
    label: str
    confidence: float
    scores: dict[str, float]
    version_scores: dict[str, list[float]]
    version_labels: dict[str, list[str]]
    embedding: np.ndarray | None


def sticky_bucket(function: str, key: str) -> float:
    """A stable number in [0, 1) for ``(function, key)``."""
    digest = hashlib.sha256(f"{function}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def choose_roles(
    serving: FunctionServing, n: int, sticky_key: str | None = None, rng: random.Random | None = None
) -> list[str]:
    """Which head answers each of ``n`` items: canary with probability ``canary_weight`` (sticky on a key)."""
    if serving.canary is None or serving.canary_weight <= 0.0:
        return [ROLE_PRIMARY] * n
    if sticky_key is not None:
        role = ROLE_CANARY if sticky_bucket(serving.function, sticky_key) < serving.canary_weight else ROLE_PRIMARY
        return [role] * n
    draw = (rng or random).random
    return [ROLE_CANARY if draw() < serving.canary_weight else ROLE_PRIMARY for _ in range(n)]


@dataclass
class _Job:
    serving: FunctionServing
    texts: list[str]
    roles: list[str]
    future: Future[list[Scored]] = field(default_factory=Future)


class _PrefetchedVectorizer:
    """Stands in for a head's TF-IDF vectoriser so its rows can be computed beside the encoder.

    The runtime calls :meth:`prefetch` in a helper thread while the encoder runs; when the head then asks
    :meth:`transform` for exactly those texts, it gets the rows computed ahead. Any other call goes to the
    real vectoriser, so answers never depend on the prefetch (only the latency does). Rows are kept per
    batch of texts, so scoring lanes that use the same head at once do not take each other's rows.
    """

    KEEP = 32  # batches computed ahead and not (yet) asked for; the oldest are dropped beyond this

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._ahead: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def prefetch(self, texts: list[str]) -> None:
        rows = self._inner.transform(texts)
        with self._lock:
            self._ahead[tuple(texts)] = rows
            while len(self._ahead) > self.KEEP:
                del self._ahead[next(iter(self._ahead))]

    def transform(self, texts: list[str]) -> Any:
        with self._lock:
            rows = self._ahead.pop(tuple(texts), None)
        return rows if rows is not None else self._inner.transform(texts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _prefetchable(classifier: TextClassifier) -> _PrefetchedVectorizer | None:
    """Put a :class:`_PrefetchedVectorizer` in front of the classifier's TF-IDF vectoriser, if it has one."""
    tfidf = getattr(classifier, "tfidf_head", None)
    vectorizer = getattr(tfidf, "vectorizer", None)
    if tfidf is None or vectorizer is None or not hasattr(vectorizer, "transform"):
        return None
    if not isinstance(vectorizer, _PrefetchedVectorizer):
        tfidf.vectorizer = _PrefetchedVectorizer(vectorizer)
    return tfidf.vectorizer


def _default_loader(settings: Settings) -> Callable[[str], TextClassifier]:
    def load(tag: str) -> TextClassifier:
        from loopml.encoders import torch_device
        from serving.model_store import load_classifier

        classifier = load_classifier(settings, tag)
        if os.path.exists("/dev/nvidiactl") and torch_device() == "cuda":
            classifier.to("cuda")  # heads beside the backbone on the GPU (a deep version places itself)
        return classifier

    return load


def warm_model_stack() -> None:
    """Import what loading a version needs (``loopml.automl.classifier``: torch, seconds) and load the default
    text encoder, so that a brand-new function's first version answers about a second after it is deployed
    instead of paying for them then."""
    import loopml.automl.classifier  # noqa: F401 - the import is the point (torch)

    get_encoder(DEFAULT_TEXT_ENCODER).encode(["warm up"])


def default_lanes() -> int:
    """Scoring lanes when not configured: ``LOOPML_SCORING_LANES``, else one per usable core, at most 4."""
    configured = os.environ.get("LOOPML_SCORING_LANES", "").strip()
    if configured:
        try:
            return max(1, int(configured))
        except ValueError:
            raise ValueError(f"LOOPML_SCORING_LANES must be a whole number, not {configured!r}") from None
    return min(4, usable_cores())


class ModelRuntime:
    """Loads deployed heads, routes and scores requests, and hot-reloads on deployment changes."""

    def __init__(
        self,
        settings: Settings,
        *,
        poll_interval_s: float = 0.3,
        retry_interval_s: float = 5.0,
        max_batch_size: int = 64,
        encoder_batch_size: int | None = None,
        loader: Callable[[str], TextClassifier] | None = None,
        warm_encoders: bool = True,
        lanes: int | None = None,
        warm_up: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.poll_interval_s = poll_interval_s
        self.retry_interval_s = retry_interval_s
        self.max_batch_size = max_batch_size
        self._encoder_batch_size = encoder_batch_size
        self.warm_encoders = warm_encoders
        # run once in the background at start (with warm_encoders): the model stack is ready before the first
        # deployment; readiness does not wait for it
        self._warm_up = warm_up or (warm_model_stack if warm_encoders else None)
        self.warmed = threading.Event()
        self.lanes = max(1, lanes) if lanes else default_lanes()
        self._deployments = DeploymentStore(settings)
        self._registry = FunctionRegistry(settings)
        self._load = loader or _default_loader(settings)
        self._snapshot = Snapshot(-1, {}, frozenset(), 0.0)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._reload_lock = threading.Lock()
        self._retry_at: float | None = None
        self._poller: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._helpers = ThreadPoolExecutor(max_workers=2 * self.lanes, thread_name_prefix="loopml-runtime-tfidf")
        self._stats_lock = threading.Lock()
        self._encoding = 0  # lanes scoring now: a lane alone encodes on every core, lanes side by side on one each
        self._jobs: deque[_Job] = deque()
        self._jobs_cond = threading.Condition()
        self.last_error: str | None = None
        self.batches = 0
        self.batched_items = 0

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self, wait: bool = False, timeout: float = 120.0) -> None:
        """Start the scoring lanes and the reload thread (which loads the deployments first)."""
        self._stop.clear()
        if not self._workers:
            self._workers = [
                threading.Thread(target=self._work, name=f"loopml-runtime-lane-{i}", daemon=True)
                for i in range(self.lanes)
            ]
            for worker in self._workers:
                worker.start()
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="loopml-runtime-reload", daemon=True)
            self._poller.start()
            if self._warm_up is not None:
                threading.Thread(target=self._warm, name="loopml-runtime-warm-up", daemon=True).start()
        if wait:
            self.wait_ready(timeout)

    def _warm(self) -> None:
        try:
            assert self._warm_up is not None
            self._warm_up()
        except Exception:  # noqa: BLE001 - only a warm-up: a real load reports its own error
            logger.exception("warming up the model stack failed; the first deployment loads it instead")
        finally:
            self.warmed.set()

    def wait_ready(self, timeout: float = 120.0) -> None:
        if not self._ready.wait(timeout):
            raise RuntimeNotReadyError(
                f"the deployments were not loaded within {timeout:.0f} s ({self.last_error or 'still loading'})"
            )

    def stop(self) -> None:
        """Stop the threads; queued jobs fail with RuntimeNotReadyError."""
        self._stop.set()
        with self._jobs_cond:
            self._jobs_cond.notify_all()
        for thread in (self._poller, *self._workers):
            if thread is not None:
                thread.join(5.0)
        self._poller, self._workers = None, []
        with self._jobs_cond:
            while self._jobs:
                self._jobs.popleft().future.set_exception(RuntimeNotReadyError("the model runtime stopped"))

    @property
    def ready(self) -> bool:
        """True once the deployments have been loaded at least once."""
        return self._ready.is_set()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def encoder_batch_size(self, encoder: Encoder) -> int:
        """Texts per encoder run: as given, else 16 on the CPU and ``max_batch_size`` on CUDA.

        On the CPU, MiniLM is fastest per text in runs of 4-16 (longer runs pad more: measured 140 texts/s at
        16, 100 at 64 on 2 cores); the encoder sorts a scoring batch by length before cutting it into runs.
        """
        if self._encoder_batch_size:
            return self._encoder_batch_size
        on_cuda = any("CUDA" in p for p in getattr(encoder, "providers", []))
        return self.max_batch_size if on_cuda else min(16, self.max_batch_size)

    @property
    def device(self) -> str:
        """``cuda`` when a loaded encoder runs on the CUDA provider, else ``cpu``."""
        ids = {fs.encoder_id for fs in self._snapshot.functions.values()}
        for encoder_id in ids:
            try:
                providers = getattr(get_encoder(encoder_id), "providers", [])
            except Exception:  # noqa: BLE001
                continue
            if any("CUDA" in p for p in providers):
                return "cuda"
        return "cpu"

    # --- reload ---------------------------------------------------------------------------------
    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                self.last_error = None
            except Exception as error:  # noqa: BLE001 - keep serving the old snapshot
                self.last_error = f"{type(error).__name__}: {error}"
                logger.exception("reloading the deployments failed; serving the previous snapshot")
            self._stop.wait(self.poll_interval_s)

    def refresh(self, force: bool = False) -> bool:
        """Reload when the deployment revision moved (or a failed load is due a retry); True if swapped."""
        with self._reload_lock:
            revision = self._deployments.revision()
            retry_due = self._retry_at is not None and time.monotonic() >= self._retry_at
            if not force and self._ready.is_set() and revision == self._snapshot.revision and not retry_due:
                return False
            self._snapshot = self._build(revision, self._deployments.all(), self._registry.list())
            self._ready.set()
            return True

    def _build(self, revision: int, states: list[DeploymentState], specs: list[FunctionSpec]) -> Snapshot:
        old = self._snapshot
        loaded: dict[str, Head] = {h.tag: h for fs in old.functions.values() for h in fs.heads}
        by_name = {spec.name: spec for spec in specs}
        functions: dict[str, FunctionServing] = {}
        failed = False
        for state in states:
            errors: list[str] = []
            previous = old.functions.get(state.function)
            primary = self._head(state.primary_tag, loaded, errors)
            if primary is None and state.primary_tag and previous is not None:
                primary = previous.primary  # keep answering with what worked
            canary = self._head(state.canary_tag, loaded, errors)
            spec = by_name.get(state.function)
            encoder_id = (
                (spec.encoder_id if spec else None) or (primary.encoder_id if primary else None) or DEFAULT_TEXT_ENCODER
            )
            failed = failed or bool(errors)
            functions[state.function] = FunctionServing(
                function=state.function,
                primary=primary,
                canary=canary,
                canary_weight=float(state.canary_weight if canary is not None else 0.0),
                encoder_id=encoder_id,
                revision=state.revision,
                error="; ".join(errors) or None,
            )
        for name, spec in by_name.items():
            if name not in functions:
                functions[name] = FunctionServing(name, None, None, 0.0, spec.encoder_id or DEFAULT_TEXT_ENCODER)
        broken = self._prepare_encoders(functions.values())
        for name, serving in list(functions.items()):
            needed = {serving.encoder_id} | {h.encoder_id for h in serving.heads if h.needs_embeddings}
            problems = [broken[e] for e in sorted(x for x in needed if x in broken)]
            if problems and serving.primary is not None:
                failed = True
                functions[name] = FunctionServing(
                    name, None, None, 0.0, serving.encoder_id, serving.revision, "; ".join(problems)
                )
        self._retry_at = time.monotonic() + self.retry_interval_s if failed else None
        return Snapshot(revision, functions, frozenset(by_name), time.time())

    def _head(self, tag: str | None, loaded: dict[str, Head], errors: list[str]) -> Head | None:
        if not tag:
            return None
        head = loaded.get(tag)
        if head is not None:
            return head
        try:
            classifier = self._load(tag)
        except Exception as error:  # noqa: BLE001 - one bad version must not stop the others
            logger.exception("could not load %s", tag)
            errors.append(f"{tag} could not be loaded: {type(error).__name__}: {error}")
            return None
        head = Head(
            tag,
            classifier,
            tuple(classifier.label_set),
            classifier.encoder_id or DEFAULT_TEXT_ENCODER,
            _prefetchable(classifier),
        )
        loaded[tag] = head
        return head

    def _prepare_encoders(self, functions: Any) -> dict[str, str]:
        """Load (and warm) every encoder a deployed function needs; returns {encoder id: error}."""
        ids: set[str] = set()
        for fs in functions:
            if fs.primary is None:
                continue
            ids.add(fs.encoder_id)
            ids.update(h.encoder_id for h in fs.heads if h.needs_embeddings and h.encoder_id)
        broken: dict[str, str] = {}
        for encoder_id in sorted(ids):
            try:
                encoder = get_encoder(encoder_id)
                if self.warm_encoders:
                    encoder.encode([warm_input(encoder_id)])
            except Exception as error:  # noqa: BLE001 - the functions on other encoders keep serving
                logger.exception("could not load encoder %s", encoder_id)
                broken[encoder_id] = f"encoder {encoder_id} could not be loaded: {type(error).__name__}: {error}"
        return broken

    # --- requests -------------------------------------------------------------------------------
    def resolve(self, function: str) -> FunctionServing:
        """What serves ``function`` now.

        Raises UnknownFunctionError, NotDeployedError or RuntimeNotReadyError.
        """
        if not self.ready:
            raise RuntimeNotReadyError("the serving process is still loading the deployments; retry shortly")
        snapshot = self._snapshot
        serving = snapshot.functions.get(function)
        if serving is None:
            names = set(snapshot.known)
            try:  # a function registered since the last reload is known but not deployed
                names.update(self._registry.names())
            except Exception:  # noqa: BLE001
                pass
            if function in names:
                raise NotDeployedError(function)
            raise UnknownFunctionError(function, sorted(names))
        if serving.primary is None:
            raise NotDeployedError(function, serving.error or "")
        return serving

    def submit(
        self,
        serving: FunctionServing,
        texts: Sequence[str],
        sticky_key: str | None = None,
        roles: Sequence[str] | None = None,
    ) -> Future[list[Scored]]:
        """Queue ``texts`` for scoring by ``serving``'s heads; the future gives one Scored per text."""
        if serving.primary is None:
            raise NotDeployedError(serving.function)
        if not self._workers:
            raise RuntimeNotReadyError("the model runtime is not started")
        texts = list(texts)
        job = _Job(
            serving,
            texts,
            list(roles) if roles is not None else choose_roles(serving, len(texts), sticky_key),
        )
        with self._jobs_cond:
            self._jobs.append(job)
            self._jobs_cond.notify()
        return job.future

    def predict(
        self, function: str, texts: Sequence[str], sticky_key: str | None = None, timeout: float = 60.0
    ) -> list[Scored]:
        """Resolve, route and score ``texts`` (blocking); for scripts and tests."""
        return self.submit(self.resolve(function), texts, sticky_key).result(timeout)

    def _take(self) -> list[_Job] | None:
        with self._jobs_cond:
            while not self._jobs:
                if self._stop.is_set():
                    return None
                self._jobs_cond.wait(0.5)
            jobs = [self._jobs.popleft()]
            size = len(jobs[0].texts)
            while self._jobs and size + len(self._jobs[0].texts) <= self.max_batch_size:
                job = self._jobs.popleft()
                jobs.append(job)
                size += len(job.texts)
            return jobs

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            with self._stats_lock:
                self._encoding += 1
                threads = usable_cores() if self._encoding == 1 else 1
            try:
                with encoder_threads(threads):
                    results = self._score(jobs)
            except Exception:  # noqa: BLE001 - isolate the failing job, answer the others
                logger.exception("scoring a batch of %d jobs failed; scoring them one by one", len(jobs))
                for job in jobs:
                    try:
                        job.future.set_result(self._score([job])[0])
                    except Exception as error:  # noqa: BLE001
                        job.future.set_exception(error)
                continue
            finally:
                with self._stats_lock:
                    self._encoding -= 1
            with self._stats_lock:
                self.batches += 1
                self.batched_items += sum(len(job.texts) for job in jobs)
            for job, result in zip(jobs, results, strict=True):
                job.future.set_result(result)

    def _score(self, jobs: list[_Job]) -> list[list[Scored]]:
        """Encode every text once per encoder, score every head once over its rows, assemble answers.

        The TF-IDF rows of each head are computed in helper threads while the encoders run.
        """
        sizes = [len(job.texts) for job in jobs]
        offsets = np.cumsum([0, *sizes])
        texts = [text for job in jobs for text in job.texts]

        def rows_of(job_ids: list[int]) -> list[str]:
            return [texts[r] for j in job_ids for r in range(offsets[j], offsets[j + 1])]

        def split(matrix: np.ndarray, job_ids: list[int]) -> dict[int, np.ndarray]:
            parts, start = {}, 0
            for j in job_ids:
                parts[j] = matrix[start : start + sizes[j]]
                start += sizes[j]
            return parts

        # each version once over all rows of all jobs it scores; start the TF-IDF halves now
        by_tag: dict[str, tuple[Head, list[int]]] = {}
        for j, job in enumerate(jobs):
            for head in job.serving.heads:
                by_tag.setdefault(head.tag, (head, []))[1].append(j)
        head_texts = {tag: rows_of(job_ids) for tag, (_, job_ids) in by_tag.items()}
        prefetches = [
            self._helpers.submit(head.prefetch.prefetch, head_texts[tag])
            for tag, (head, _) in by_tag.items()
            if head.prefetch is not None
        ]
        # encoders: the function's (logged) and any a head needs, each once over its rows
        needs: dict[str, list[int]] = {}
        for j, job in enumerate(jobs):
            ids = {job.serving.encoder_id}
            ids.update(h.encoder_id for h in job.serving.heads if h.needs_embeddings and h.encoder_id)
            for encoder_id in ids:
                needs.setdefault(encoder_id, []).append(j)
        embeddings: dict[str, dict[int, np.ndarray]] = {}
        for encoder_id, job_ids in needs.items():
            encoder: Encoder = get_encoder(encoder_id)
            chunk = self.encoder_batch_size(encoder)
            embeddings[encoder_id] = split(encoder.encode(rows_of(job_ids), batch_size=chunk), job_ids)
        for prefetch in prefetches:
            try:
                prefetch.result()
            except Exception:  # noqa: BLE001 - the head computes its rows itself (and reports any error)
                pass
        proba: dict[str, dict[int, np.ndarray]] = {}
        for tag, (head, job_ids) in by_tag.items():
            emb = None
            if head.needs_embeddings and head.encoder_id:
                emb = np.concatenate([embeddings[head.encoder_id][j] for j in job_ids])
            try:
                matrix = head.classifier.predict_proba(head_texts[tag], emb)
            except Exception:
                if any(jobs[j].serving.primary is head for j in job_ids):
                    raise
                logger.exception("canary %s failed to score; the primary answers", tag)
                continue
            proba[tag] = split(matrix, job_ids)
        # answers
        results: list[list[Scored]] = []
        for j, job in enumerate(jobs):
            serving = job.serving
            heads = [h for h in serving.heads if h.tag in proba]
            logged = embeddings[serving.encoder_id][j]
            items: list[Scored] = []
            for i, role in enumerate(job.roles):
                canary = serving.canary
                if role == ROLE_CANARY and canary is not None and canary.tag in proba:
                    head = canary
                else:
                    role, head = ROLE_PRIMARY, serving.primary
                assert head is not None
                row = proba[head.tag][j][i]
                best = int(np.argmax(row))
                items.append(
                    Scored(
                        role=role,
                        answered_by=head.tag,
                        label=head.label_set[best],
                        confidence=float(row[best]),
                        scores={label: float(p) for label, p in zip(head.label_set, row, strict=True)},
                        version_scores={h.tag: [float(p) for p in proba[h.tag][j][i]] for h in heads},
                        version_labels={h.tag: list(h.label_set) for h in heads},
                        embedding=logged[i],
                    )
                )
            results.append(items)
        return results
