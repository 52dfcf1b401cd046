"""A thin typed client over label-studio-sdk 2.x for LoopML's Label Studio projects.

Facts measured on Label Studio 1.23.2 (see tests/test_labelstudio.py):

- Creating, editing, deleting an annotation and skipping a task (a cancelled annotation) each bump the task's
  ``updated_at``; so does the Data Manager's bulk "delete annotations". Deleting a *task* leaves no trace, so
  callers detect removed tasks by set difference with :meth:`LabelStudioClient.annotated_task_ids`.
- Cursors are task ``updated_at`` values formatted ``%Y-%m-%dT%H:%M:%S.%fZ`` (UTC, microseconds): the only
  format the server's Datetime filters accept, fixed width, so they also compare correctly as strings.
- :meth:`LabelStudioClient.changed_tasks` returns only tasks updated up to a snapshot of the newest
  ``updated_at`` taken before it starts listing, and pages by task id, so taking ``max(task.updated_at)`` of
  its result as the next cursor cannot skip an update made while it was listing.
- Timings with 2,000 annotated tasks (2-core CPU, SQLite): ``changed_tasks(None)`` about 3 s (server-bound,
  about 1.4 ms a task; pages of 1,000), ``annotated_task_ids`` about 1 s, ``latest_task_update`` and
  ``task_fingerprint`` about 25 ms.

Writes and retries. Label Studio on SQLite answers 500 "database is locked" under load, sometimes *after* it
committed the write (a project was created, then the request failed), and a timed-out request may still commit.
So the SDK's own retries are off (it would resend any POST) and this client retries by its own policy
(:class:`RetryPolicy`, ``tenacity``: doubling waits with jitter, a bounded number of attempts and total time):

- reads are retried on transport errors, timeouts and 5xx/408/429 answers; a refused connection (Label Studio
  down) only ``connect_retries`` times, so "start it with `loopml up`" comes quickly;
- a write is resent only where that is provably safe: updates that set values (PATCH) are idempotent; creating a
  project first looks for one with the same title and description; deletes check whether the object is gone;
  annotations carry a client ``unique_id`` (the server answers 409 to a second POST with it); task imports
  mark every task's ``meta`` with ``loopml_import = "<batch key>:<index>"`` and, after a short or failed
  answer, list the batch (a Data Manager filter on ``meta``) and import only the missing tasks (and delete
  copies if an ambiguous attempt committed after that check); tasks imported with inline annotations are
  always checked, and missing annotations created (an import has answered 201 and created none); predictions
  are not sent for a task that already has one of the same model version and label.

Facts measured on Label Studio 1.23.2 for these checks (tests/test_labelstudio.py, tests/test_functions.py):
the projects ``title`` filter is a case-insensitive substring match (exact titles are compared here);
``filter:tasks:meta`` with ``contains`` matches the JSON text of ``meta``; a second annotation POST with the same
``unique_id`` answers 409. Listing a 1,000-task batch with ``annotations_ids`` (counted from the annotation rows,
unlike the ``total_annotations`` counter) takes about 0.6 s against about 0.9 s for importing it with one
annotation each; the predictions check of a 256-task chunk takes about 25-150 ms against 0.3-1 s for the import.

The SDK (about 2 s to import) is imported on the first API call, not by :meth:`health`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import httpx
    from label_studio_sdk import LabelStudio
    from tenacity import RetryCallState, Retrying

    from loopml.config import Settings

T = TypeVar("T")

CURSOR_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# ``include`` restricts the serialized fields, of the nested annotations too (REST flex fields): listing only
# these makes task listings about 2.5x faster than ``fields=all``.
TASK_FIELDS = "id,updated_at,data,meta,annotations,result,was_cancelled,completed_by,created_at"
# task meta: "<batch key>:<index in the batch>", how a retried import finds the tasks it already created
IMPORT_META = "loopml_import"
PROJECT_FIELDS = "id,title,description,task_number"
IDS_PER_FILTER = 200  # task ids per ``in_list`` filter (keeps the query string short)
# namespace of the unique_ids of annotations created to repair an import (deterministic: a repair is idempotent)
_REPAIR_NAMESPACE = uuid.UUID("6f1d2c1e-8a51-4a57-9f0e-3c4b1f0a7d21")


class LabelStudioUnavailable(RuntimeError):
    """Label Studio cannot be reached (not running, refused, timed out)."""

    def __init__(self, message: str, *, url: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason

    @classmethod
    def at(cls, url: str, reason: str) -> LabelStudioUnavailable:
        return cls(
            f"Label Studio is not reachable at {url} ({reason}); start it with `loopml up`",
            url=url,
            reason=reason,
        )


class LabelStudioError(RuntimeError):
    """Label Studio answered, but the call failed."""


class IncompleteWrite(LabelStudioError):
    """Label Studio accepted a bulk write but created less than was sent (still so after the retries)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How :class:`LabelStudioClient` retries: at most ``retries`` more attempts, waits doubling from ``first_wait_s``
    (plus up to ``first_wait_s`` of jitter) up to ``max_wait_s``, no wait that would end past ``budget_s`` after
    the first attempt began; a refused connection is retried ``connect_retries`` times only (at most ``retries``).
    Reads and writes inside a retried write (its checks) run under their own budget."""

    retries: int = 4
    first_wait_s: float = 0.25
    max_wait_s: float = 4.0
    budget_s: float = 60.0
    connect_retries: int = 1


@dataclass(frozen=True)
class ProjectInfo:
    project_id: int
    title: str
    description: str
    task_count: int


@dataclass(frozen=True)
class AnnotationRecord:
    annotation_id: int
    task_id: int
    label: str | None
    was_cancelled: bool
    completed_by: int | None
    created_at: str
    updated_at: str
    must_pass: bool = False


MUST_PASS_CONTROL = "must_pass"


@dataclass(frozen=True)
class TaskRecord:
    task_id: int
    data: dict
    updated_at: str
    annotations: list[AnnotationRecord]
    meta: dict


@dataclass(frozen=True)
class Prediction:
    """A model's answer on a task, shown to annotators as a pre-annotation."""

    task_id: int
    label: str
    score: float
    model_version: str
    from_name: str = "label"
    to_name: str = "text"

    def request(self) -> dict[str, Any]:
        return {
            "task": self.task_id,
            "result": choice_result(self.label, self.from_name, self.to_name),
            "score": round(float(self.score), 4),
            "model_version": self.model_version,
        }


def format_timestamp(value: datetime | str) -> str:
    """A server timestamp (datetime or ISO string) as a cursor string, ``%Y-%m-%dT%H:%M:%S.%fZ`` in UTC."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(CURSOR_FORMAT)


def choice_result(
    label: str, from_name: str = "label", to_name: str = "text", *, must_pass: bool = False
) -> list[dict[str, Any]]:
    """The annotation ``result`` of a single-choice classification (and the must-pass mark, if set)."""
    result = [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}]
    if must_pass:
        result.append(
            {"from_name": MUST_PASS_CONTROL, "to_name": to_name, "type": "choices", "value": {"choices": ["must pass"]}}
        )
    return result


def extract_label(result: list[dict[str, Any]] | None, from_name: str = "label") -> str | None:
    """The first choice of the ``from_name`` control in an annotation result, if any."""
    for region in result or []:
        if region.get("from_name") != from_name:
            continue
        choices = (region.get("value") or {}).get("choices") or []
        if choices:
            return str(choices[0])
    return None


UNCERTAINTY_SAMPLING = "Uncertainty sampling"  # Label Studio's active-learning queue (by prediction score)
# task meta: the model version whose answer a task was imported with (calls sent for review carry the primary's)
PREFILLED_META = "loopml_prefilled"


def _filter(field: str, operator: str, kind: str, value: Any) -> dict[str, Any]:
    return {"filter": f"filter:tasks:{field}", "operator": operator, "type": kind, "value": value}


def _status(error: BaseException) -> int | None:
    from label_studio_sdk.core.api_error import ApiError

    return error.status_code if isinstance(error, ApiError) else None


def _refused(error: BaseException | None) -> bool:
    """The request never reached Label Studio (connection refused, no route): resending it is always safe."""
    import httpx

    return isinstance(error, httpx.ConnectError)


def _transient(error: BaseException | None) -> bool:
    """A failure that may pass: transport errors, timeouts, 5xx, 408 and 429 answers (e.g. "database is locked")."""
    import httpx

    if isinstance(error, httpx.TransportError):
        return True
    status = _status(error) if error is not None else None
    return status is not None and (status >= 500 or status in (408, 429))


def _import_index(meta: dict | None, key: str) -> int | None:
    """The index in the batch ``key`` of a task with this ``meta`` (``None`` for a task of another batch)."""
    batch, _, index = str((meta or {}).get(IMPORT_META, "")).rpartition(":")
    return int(index) if batch == key and index.isdigit() else None


def _canonical(result: list[dict[str, Any]] | None, was_cancelled: bool) -> str:
    """An annotation's identity for de-duplication: its regions' control, type and value, and whether skipped."""
    regions = sorted(
        json.dumps({k: r.get(k) for k in ("from_name", "to_name", "type", "value")}, sort_keys=True)
        for r in result or []
    )
    return json.dumps([regions, bool(was_cancelled)])


def _prediction_key(task_id: int, model_version: str | None, result: list[dict[str, Any]] | None) -> tuple:
    return task_id, str(model_version), _canonical(result, False)


def _short(body: Any, limit: int = 300) -> str:
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _annotation(raw: dict[str, Any], task_id: int, from_name: str) -> AnnotationRecord:
    completed_by = raw.get("completed_by")
    if isinstance(completed_by, dict):  # some serializers expand the user
        completed_by = completed_by.get("id")
    return AnnotationRecord(
        annotation_id=int(raw["id"]),
        task_id=task_id,
        label=extract_label(raw.get("result"), from_name),
        was_cancelled=bool(raw.get("was_cancelled")),
        completed_by=completed_by,
        created_at=format_timestamp(raw["created_at"]),
        updated_at=format_timestamp(raw["updated_at"]),
        must_pass=extract_label(raw.get("result"), MUST_PASS_CONTROL) is not None,
    )


def _task(item: Any, from_name: str) -> TaskRecord:
    """A listed task; its ``meta`` without LoopML's import marker."""
    raws = [a if isinstance(a, dict) else a.model_dump() for a in (item.annotations or [])]
    return TaskRecord(
        task_id=int(item.id),
        data=dict(item.data or {}),
        updated_at=format_timestamp(item.updated_at),
        annotations=[_annotation(a, int(item.id), from_name) for a in raws],
        meta={k: v for k, v in (item.meta or {}).items() if k != IMPORT_META},
    )


def _dump(item: Any) -> dict[str, Any]:
    return item if isinstance(item, dict) else item.model_dump()


class LabelStudioClient:
    """LoopML's operations on Label Studio; every failure is a :class:`LabelStudioUnavailable` or
    :class:`LabelStudioError`. Transient failures are retried by ``retry`` (see the module docstring for which
    writes are resent and why that is safe); ``max_retries``, if given, overrides ``retry.retries``.
    ``transport`` replaces the HTTP transport (tests)."""

    page_size = 1000  # tasks per listing request (with annotations)
    id_page_size = 10_000  # task ids per listing request
    import_batch = 1000  # tasks per import request

    def __init__(
        self,
        url: str,
        api_key: str,
        timeout: float = 10.0,
        *,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.bulk_timeout = max(30.0, timeout)  # imports and large listings take seconds on the server
        policy = retry or RetryPolicy()
        self.retry = policy if max_retries is None else replace(policy, retries=max_retries)
        self._api_key = api_key
        self._transport = transport
        self._http: httpx.Client | None = None
        self._client: LabelStudio | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelStudioClient:
        """A client for ``settings.labelstudio_url`` with the key saved by ``loopml up``."""
        from loopml.labelstudio_server import credentials_path, load_credentials

        try:
            creds = load_credentials(settings)
        except (ValueError, KeyError) as error:
            raise LabelStudioError(f"unreadable {credentials_path(settings)}: {error}") from error
        if creds is None:
            raise LabelStudioUnavailable.at(
                settings.labelstudio_url,
                f"no credentials in {credentials_path(settings)}; it was never started",
            )
        return cls(settings.labelstudio_url, creds.api_key)

    @property
    def http(self) -> httpx.Client:
        """The HTTP client under the SDK and the health probe."""
        if self._http is None:
            import httpx

            # A new connection per request: Label Studio's server (Django's runserver) writes a response's head
            # and body in separate packets, so on a kept-alive connection every answer waits for the client's
            # delayed ACK (Nagle): about 45 ms per call against 6 ms on a fresh loopback connection.
            self._http = httpx.Client(
                timeout=self.timeout,
                follow_redirects=True,
                transport=self._transport,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._http

    @property
    def sdk(self) -> LabelStudio:
        """The underlying ``label_studio_sdk.LabelStudio`` (created on first use; its own retries are off)."""
        if self._client is None:
            from label_studio_sdk import LabelStudio

            self._client = LabelStudio(
                base_url=self.url, api_key=self._api_key, timeout=self.timeout, max_retries=0, httpx_client=self.http
            )
        return self._client

    @contextmanager
    def _api(self, what: str) -> Iterator[None]:
        """Transport errors become :class:`LabelStudioUnavailable`, HTTP errors :class:`LabelStudioError`."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            yield
        except httpx.TimeoutException as error:
            raise LabelStudioUnavailable.at(self.url, f"timed out: {what}") from error
        except httpx.TransportError as error:
            raise LabelStudioUnavailable.at(self.url, str(error) or type(error).__name__) from error
        except ApiError as error:
            hint = "; the API key in secrets/labelstudio.json was rejected" if error.status_code == 401 else ""
            raise LabelStudioError(
                f"Label Studio: {what} failed (HTTP {error.status_code}): {_short(error.body)}{hint}"
            ) from error

    # --- retries ------------------------------------------------------------------------------------------

    def _retrying(self, retry_on: Callable[[BaseException], bool] = _transient) -> Retrying:
        """A ``tenacity.Retrying`` for one call under :attr:`retry`, retrying the failures ``retry_on`` accepts."""
        from tenacity import Retrying, retry_if_exception, wait_exponential_jitter

        policy = self.retry
        end = time.monotonic() + policy.budget_s

        def stop(state: RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome is not None else None
            if _refused(error):
                return state.attempt_number > min(policy.connect_retries, policy.retries)
            return state.attempt_number > policy.retries or time.monotonic() + (state.upcoming_sleep or 0) > end

        return Retrying(
            retry=retry_if_exception(retry_on),
            stop=stop,
            wait=wait_exponential_jitter(
                initial=policy.first_wait_s, max=policy.max_wait_s, jitter=policy.first_wait_s
            ),
            reraise=True,
        )

    def _read(self, what: str, call: Callable[[], T]) -> T:
        """A read, retried on transient failures."""
        with self._api(what):
            return self._retrying()(call)

    def _write(
        self,
        what: str,
        call: Callable[[], T],
        *,
        idempotent: bool = False,
        find: Callable[[], T | None] | None = None,
    ) -> T:
        """A write. Resent after a refused connection (it never reached the server); after an ambiguous failure
        (timeout, dropped connection, 5xx, 408, 429: the server may have committed it) only if ``idempotent`` (two
        of it have the effect of one) or through ``find``: a read that returns the result of an earlier attempt
        that took effect, or ``None``; the write is resent only when it finds nothing."""
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and find is not None:
                found = find()
                if found is not None:
                    return found
            return call()

        def safe(error: BaseException) -> bool:
            return _refused(error) or (_transient(error) and (idempotent or find is not None))

        with self._api(what):
            return self._retrying(safe)(attempt)

    def _exists(self, what: str, call: Callable[[], object]) -> bool:
        """Whether ``call`` (a GET of one object) finds it: ``False`` on 404."""

        def probe() -> bool:
            try:
                call()
            except Exception as error:
                if _status(error) == 404:
                    return False
                raise
            return True

        return self._read(what, probe)

    # --- reachability -------------------------------------------------------------------------------------

    def _probe(self) -> str | None:
        """``None`` if ``/health`` answers 200, else the reason it does not."""
        import httpx

        try:
            response = self.http.get(f"{self.url}/health", timeout=min(self.timeout, 5.0))
        except httpx.TimeoutException:
            return "timed out"
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as error:
            return str(error) or type(error).__name__
        return None if response.status_code == 200 else f"HTTP {response.status_code} from /health"

    def health(self) -> bool:
        """Whether ``GET /health`` answers 200 (never raises)."""
        return self._probe() is None

    def ensure_reachable(self) -> None:
        """Raise :class:`LabelStudioUnavailable` unless ``/health`` answers."""
        reason = self._probe()
        if reason is not None:
            raise LabelStudioUnavailable.at(self.url, reason)

    # --- projects -------------------------------------------------------------------------------------------

    def projects_titled(self, title: str) -> list[ProjectInfo]:
        """The projects titled exactly ``title``, oldest (lowest id) first, with their task counts."""
        found: list[ProjectInfo] = []
        page = 1
        while True:
            listing = self._read(
                f"list projects titled {title!r}",
                partial(self.sdk.projects.list, title=title, include=PROJECT_FIELDS, page=page, page_size=100),
            )
            found += [
                ProjectInfo(int(p.id), str(p.title), str(p.description or ""), int(p.task_number or 0))
                for p in listing.items or []
                if p.title == title
            ]
            if not listing.response.next:
                return sorted(found, key=lambda p: p.project_id)
            page += 1

    def project_exists(self, project_id: int) -> bool:
        return self._exists(f"read project {project_id}", partial(self.sdk.projects.get, id=project_id))

    def _project_with(self, title: str, description: str) -> int | None:
        ids = [p.project_id for p in self.projects_titled(title) if p.description == description]
        return ids[0] if ids else None

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        """Create a project, or return the oldest one with exactly this title and description: idempotent, so a
        create that Label Studio committed but answered with an error (or never answered) is adopted, not
        repeated. Concurrent creates can still make two; see :meth:`remove_duplicate_projects`."""
        existing = self._project_with(title, description)
        if existing is not None:
            return existing

        def create() -> int:
            return int(self.sdk.projects.create(title=title, label_config=label_config, description=description).id)

        return self._write(f"create project {title!r}", create, find=partial(self._project_with, title, description))

    def remove_duplicate_projects(
        self, keep: int, title: str, same: Callable[[ProjectInfo], bool] = lambda _: True
    ) -> list[ProjectInfo]:
        """Delete the projects titled ``title`` that ``same`` accepts, other than ``keep``, that have no tasks;
        return the ones left because they have tasks (oldest first)."""
        left: list[ProjectInfo] = []
        for project in self.projects_titled(title):
            if project.project_id == keep or not same(project):
                continue
            if project.task_count:
                left.append(project)
            else:
                self.delete_project(project.project_id)
        return left

    def delete_project(self, project_id: int) -> None:
        """Delete a project (a retry after an ambiguous failure first checks whether it is gone)."""

        def delete() -> bool:
            self.sdk.projects.delete(id=project_id)
            return True

        def gone() -> bool | None:
            return None if self.project_exists(project_id) else True

        self._write(f"delete project {project_id}", delete, find=gone)

    def get_label_config(self, project_id: int) -> str:
        return self._read(
            f"read the label config of project {project_id}",
            lambda: str(self.sdk.projects.get(id=project_id).label_config),
        )

    def update_label_config(self, project_id: int, label_config: str) -> None:
        """Replace the label config (the server does not check it against existing annotations)."""
        self._write(
            f"update the label config of project {project_id}",
            partial(self.sdk.projects.update, id=project_id, label_config=label_config),
            idempotent=True,
        )

    # --- tasks ----------------------------------------------------------------------------------------------

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        """Import ``[{"data": {...}, "meta": {...}}, ...]`` in batches; returns how many were created (all of them,
        or it raises). Retried safely: each task's ``meta`` carries ``loopml_import = "<batch key>:<index>"``; when
        Label Studio answers short or fails ambiguously, the batch's tasks are listed and only the missing ones are
        sent again (copies an ambiguous attempt made anyway are deleted). Inline ``annotations`` are counted on the
        created tasks and the missing ones created through the annotations API."""
        created = 0
        for start in range(0, len(tasks), self.import_batch):
            created += self._import_batch(project_id, tasks[start : start + self.import_batch])
        return created

    def _batch_tasks(self, project_id: int, key: str, include: str = "id,meta") -> dict[int, list[Any]]:
        """The tasks of import batch ``key`` by index in the batch (more than one: copies)."""
        items = self._list(
            project_id,
            [_filter("meta", "contains", "String", key)],
            include=include,
            with_annotations="annotations_ids" in include,
            page_size=self.id_page_size,
        )
        found: dict[int, list[Any]] = {}
        for item in items:
            index = _import_index(item.meta, key)
            if index is not None:
                found.setdefault(index, []).append(item)
        return found

    def _import_batch(self, project_id: int, batch: list[dict]) -> int:
        key = uuid.uuid4().hex
        marked = [
            {**task, "meta": {**(task.get("meta") or {}), IMPORT_META: f"{key}:{i}"}} for i, task in enumerate(batch)
        ]
        what = f"import {len(batch)} tasks into project {project_id}"
        attempts = 0
        ambiguous = False

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            present = self._batch_tasks(project_id, key) if attempts > 1 else {}
            missing = [task for i, task in enumerate(marked) if i not in present]
            if not missing:
                return
            response = self.sdk.projects.import_tasks(
                id=project_id, request=missing, request_options={"timeout": self.bulk_timeout}
            )
            if int(response.task_count or 0) < len(missing):
                raise IncompleteWrite(f"{what}: Label Studio created {response.task_count} of {len(missing)}")

        def retry_on(error: BaseException) -> bool:
            nonlocal ambiguous
            ambiguous = ambiguous or (_transient(error) and not _refused(error))
            return _transient(error) or isinstance(error, IncompleteWrite)

        with self._api(what):
            self._retrying(retry_on)(attempt)
        if ambiguous:
            self._remove_copies(project_id, key)
        if any(task.get("annotations") for task in batch):
            self._repair_annotations(project_id, key, marked)
        return len(batch)

    def _remove_copies(self, project_id: int, key: str) -> None:
        """Delete the tasks of batch ``key`` imported twice (a failed attempt that committed after the check)."""
        for copies in self._batch_tasks(project_id, key).values():
            for item in sorted(copies, key=lambda t: int(t.id))[1:]:
                self.delete_task(int(item.id))

    def delete_task(self, task_id: int) -> None:
        """Delete a task (a retry after an ambiguous failure first checks whether it is gone)."""

        def delete() -> bool:
            self.sdk.tasks.delete(id=str(task_id))
            return True

        def gone() -> bool | None:
            return None if self._exists(f"read task {task_id}", partial(self.sdk.tasks.get, id=str(task_id))) else True

        self._write(f"delete task {task_id}", delete, find=gone)

    def _repair_annotations(self, project_id: int, key: str, marked: list[dict]) -> int:
        """Create, through the annotations API, the inline annotations of batch ``key`` that the import did not
        create (Label Studio on SQLite has answered 201 and created none); returns how many it created."""
        repaired = 0
        for index, items in self._batch_tasks(project_id, key, "id,meta,annotations_ids").items():
            sent = [a for a in marked[index].get("annotations") or [] if isinstance(a, dict)]
            have = [x for x in str(items[0].annotations_ids or "").split(",") if x.strip()]
            if len(have) >= len(sent):
                continue
            task_id = int(items[0].id)
            existing = Counter(
                _canonical(a.get("result"), bool(a.get("was_cancelled"))) for a in self._task_annotations(task_id)
            )
            shortfall = len(sent) - sum(existing.values())
            for number, annotation in enumerate(sent):
                identity = _canonical(annotation.get("result"), bool(annotation.get("was_cancelled")))
                if existing[identity] > 0:
                    existing[identity] -= 1
                    continue
                if shortfall <= 0:
                    break
                completed_by = annotation.get("completed_by")
                self._create_annotation(
                    task_id,
                    annotation.get("result") or [],
                    was_cancelled=bool(annotation.get("was_cancelled")),
                    unique_id=str(uuid.uuid5(_REPAIR_NAMESPACE, f"{key}:{index}:{number}")),
                    completed_by=completed_by if isinstance(completed_by, int) else None,
                )
                shortfall -= 1
                repaired += 1
        return repaired

    def _page(
        self, project_id: int, query: dict[str, Any], *, include: str, with_annotations: bool, size: int
    ) -> tuple[list[Any], int]:
        """One page of tasks (the first ``size`` matching ``query``) and how many tasks match in all."""
        pager = self._read(
            f"list tasks of project {project_id}",
            partial(
                self.sdk.tasks.list,
                project=project_id,
                fields="all" if with_annotations else "task_only",
                include=include,
                page=1,
                page_size=size,
                query=json.dumps(query),
                request_options={"timeout": self.bulk_timeout if size > 100 else self.timeout},
            ),
        )
        return list(pager.items or []), int(pager.response.total)

    def _list(
        self,
        project_id: int,
        filters: list[dict[str, Any]],
        *,
        include: str,
        with_annotations: bool,
        page_size: int,
        limit: int | None = None,
    ) -> list[Any]:
        """Tasks matching all ``filters`` in id order, paged by id (no skips while tasks change)."""
        found: list[Any] = []
        last_id = 0
        while limit is None or len(found) < limit:
            size = page_size if limit is None else min(page_size, limit - len(found))
            items = filters + ([_filter("id", "greater", "Number", last_id)] if last_id else [])
            query = {"filters": {"conjunction": "and", "items": items}} if items else {}
            batch, total = self._page(project_id, query, include=include, with_annotations=with_annotations, size=size)
            found.extend(batch)
            if len(batch) >= total or len(batch) < size:
                break
            last_id = int(batch[-1].id)
        return found

    def task_fingerprint(self, project_id: int) -> tuple[str | None, int]:
        """``(latest_task_update, number of tasks)`` from one cheap call (about 25 ms).

        It changes whenever an annotation is created, edited, skipped or deleted, and when a task is added or
        deleted: a cheap "anything to pull?" signal, cheaper than :meth:`annotated_task_ids`.
        """
        items, total = self._page(
            project_id,
            {"ordering": ["-tasks:updated_at"]},
            include="id,updated_at",
            with_annotations=False,
            size=1,
        )
        return (format_timestamp(items[0].updated_at) if items else None), total

    def annotated_task_count(self, project_id: int) -> int:
        """How many tasks have at least one (non-skipped) annotation; one cheap call."""
        query = {"filters": {"conjunction": "and", "items": [_filter("total_annotations", "greater", "Number", 0)]}}
        _, total = self._page(project_id, query, include="id", with_annotations=False, size=1)
        return total

    def has_annotations(self, project_id: int) -> bool:
        return self.annotated_task_count(project_id) > 0

    def latest_task_update(self, project_id: int) -> str | None:
        """The newest task ``updated_at`` in the project as a cursor string (``None`` without tasks)."""
        return self.task_fingerprint(project_id)[0]

    def changed_tasks(
        self, project_id: int, since: str | None, *, from_name: str = "label", upper: str | None = None
    ) -> list[TaskRecord]:
        """Tasks updated strictly after ``since`` (every task with an annotation, skipped ones included, when
        ``None``), with all their annotations, in id order.

        Bounded by the newest ``updated_at`` seen when the call starts, so ``max(t.updated_at)`` of the result
        is a safe next cursor. A task whose annotations were all deleted comes back with ``annotations=[]``.
        ``upper``: that newest ``updated_at`` when the caller has just read it (:meth:`task_fingerprint`), which
        spares one call.
        """
        upper = upper or self.latest_task_update(project_id)
        if upper is None:
            return []
        bound = _filter("updated_at", "less_or_equal", "Datetime", upper)
        if since is not None:
            after = _filter("updated_at", "greater", "Datetime", format_timestamp(since))
            items = self._task_items(project_id, [after, bound])
        else:
            by_id = {
                t.id: t
                for t in self._task_items(project_id, [_filter("total_annotations", "greater", "Number", 0), bound])
            }
            for t in self._task_items(project_id, [_filter("cancelled_annotations", "greater", "Number", 0), bound]):
                by_id.setdefault(t.id, t)
            items = [by_id[i] for i in sorted(by_id)]
        return [_task(item, from_name) for item in items]

    def _task_items(self, project_id: int, filters: list[dict[str, Any]]) -> list[Any]:
        return self._list(project_id, filters, include=TASK_FIELDS, with_annotations=True, page_size=self.page_size)

    def annotated_task_ids(self, project_id: int) -> set[int]:
        """Ids of the tasks that currently have at least one annotation, skipped (cancelled) ones included."""
        ids: set[int] = set()
        for field in ("total_annotations", "cancelled_annotations"):
            items = self._list(
                project_id,
                [_filter(field, "greater", "Number", 0)],
                include="id",
                with_annotations=False,
                page_size=self.id_page_size,
            )
            ids.update(int(item.id) for item in items)
        return ids

    def unlabeled_tasks(self, project_id: int, limit: int) -> list[TaskRecord]:
        """Up to ``limit`` tasks without any annotation (not even a skip), in id order."""
        if limit <= 0:
            return []
        items = self._list(
            project_id,
            [
                _filter("total_annotations", "equal", "Number", 0),
                _filter("cancelled_annotations", "equal", "Number", 0),
            ],
            include="id,updated_at,data,meta",
            with_annotations=False,
            page_size=self.page_size,
            limit=limit,
        )
        return [_task(item, "label") for item in items]

    def task_texts(self, project_id: int, key: str = "text") -> dict[int, str]:
        """``{task id: data[key]}`` of every task in the project (for de-duplicating new tasks); ``key`` is the
        function's input (``text`` or ``image``)."""
        items = self._list(project_id, [], include="id,data", with_annotations=False, page_size=self.id_page_size)
        return {int(item.id): str((item.data or {}).get(key, "")) for item in items}

    # --- predictions (pre-annotations) ---------------------------------------------------------------------

    def prediction_keys(self, project_id: int, task_ids: set[int], model_versions: set[str]) -> set[tuple]:
        """``(task id, model version, canonical result)`` of the predictions of these model versions on these
        tasks (one cheap call per version and 200 tasks when none has one yet: about 25 ms)."""
        keys: set[tuple] = set()
        ordered = sorted(task_ids)
        for version in sorted(model_versions):
            for start in range(0, len(ordered), IDS_PER_FILTER):
                items = self._list(
                    project_id,
                    [
                        _filter("id", "in_list", "Number", ordered[start : start + IDS_PER_FILTER]),
                        _filter("predictions_model_versions", "contains", "List", [version]),  # a substring match
                    ],
                    include="id,predictions",
                    with_annotations=True,
                    page_size=self.page_size,
                )
                for item in items:
                    for raw in map(_dump, item.predictions or []):
                        if raw.get("model_version") == version:
                            keys.add(_prediction_key(int(item.id), version, raw.get("result")))
        return keys

    def import_predictions(self, project_id: int, predictions: list[Prediction]) -> int:
        """Attach model predictions to existing tasks, in bulk; returns how many were created.

        Idempotent: a prediction is not sent when its task already has one of the same model version and label
        (nor twice in one call), so a retry after a short or ambiguous answer, or a second call, adds only what
        is missing."""
        created = 0
        for start in range(0, len(predictions), self.import_batch):
            created += self._import_prediction_batch(project_id, predictions[start : start + self.import_batch])
        return created

    def _import_prediction_batch(self, project_id: int, batch: list[Prediction]) -> int:
        requests = {_prediction_key(p.task_id, p.model_version, p.request()["result"]): p.request() for p in batch}
        task_ids, versions = {p.task_id for p in batch}, {p.model_version for p in batch}
        before = self.prediction_keys(project_id, task_ids, versions) & requests.keys()
        what = f"import {len(requests)} predictions into project {project_id}"
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            present = before if attempts == 1 else self.prediction_keys(project_id, task_ids, versions)
            missing = [request for key, request in requests.items() if key not in present]
            if not missing:
                return
            response = self.sdk.projects.import_predictions(
                id=project_id, request=missing, request_options={"timeout": self.bulk_timeout}
            )
            made = getattr(response, "created", None)
            if made is not None and int(made) < len(missing):
                raise IncompleteWrite(f"{what}: Label Studio created {made} of {len(missing)}")

        with self._api(what):
            self._retrying(lambda error: _transient(error) or isinstance(error, IncompleteWrite))(attempt)
        return len(requests) - len(before)

    def set_model_version(self, project_id: int, model_version: str) -> None:
        """Show ``model_version``'s predictions as pre-annotations in the labelling UI, and queue the tasks it is
        least sure of first ("Label All Tasks" follows Label Studio's uncertainty sampling: lowest prediction
        score of that version first)."""
        self._write(
            f"set the model version of project {project_id}",
            partial(
                self.sdk.projects.update,
                id=project_id,
                model_version=model_version,
                show_collab_predictions=True,
                sampling=UNCERTAINTY_SAMPLING,
            ),
            idempotent=True,
        )

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        """The predictions on one task: ``[{"model_version", "score", "label"}]``."""
        found = self._read(f"list predictions of task {task_id}", partial(self.sdk.predictions.list, task=task_id))
        return [{"model_version": p.model_version, "score": p.score, "label": extract_label(p.result)} for p in found]

    # --- webhooks -----------------------------------------------------------------------------------------

    def project_webhooks(self, project_id: int) -> list[Any]:
        """The webhooks registered on one project (the SDK's ``Webhook`` objects)."""
        hooks = self._read(
            f"list the webhooks of project {project_id}", lambda: self.sdk.webhooks.list(project=str(project_id))
        )
        return [hook for hook in hooks if hook.project == project_id]

    def create_webhook(self, project_id: int, url: str, headers: dict[str, str], actions: list[str]) -> int:
        """Register a webhook on the project for ``actions`` (no payload); idempotent: a retry after an ambiguous
        failure adopts the hook with this URL and headers if the first attempt made it."""

        def find() -> int | None:
            hooks = self.project_webhooks(project_id)
            return next((int(h.id) for h in hooks if h.url == url and (h.headers or {}) == headers), None)

        def create() -> int:
            return int(
                self.sdk.webhooks.create(
                    url=url,
                    project=project_id,
                    headers=headers,
                    actions=actions,
                    send_for_all_actions=False,
                    send_payload=False,
                    is_active=True,
                ).id
            )

        return self._write(f"register a webhook on project {project_id}", create, find=find)

    def delete_webhook(self, hook_id: int) -> None:
        """Delete a webhook (a retry after an ambiguous failure first checks whether it is gone)."""

        def delete() -> bool:
            self.sdk.webhooks.delete(id=hook_id)
            return True

        def gone() -> bool | None:
            return None if self._exists(f"read webhook {hook_id}", lambda: self.sdk.webhooks.get(id=hook_id)) else True

        self._write(f"delete webhook {hook_id}", delete, find=gone)

    # --- annotations --------------------------------------------------------------------------------------

    def _task_annotations(self, task_id: int) -> list[dict[str, Any]]:
        """Every annotation of a task (skips included), oldest first, as dicts."""
        found = self._read(f"list annotations of task {task_id}", partial(self.sdk.annotations.list, id=task_id))
        return sorted((_dump(a) for a in found), key=lambda a: int(a["id"]))

    def _create_annotation(
        self,
        task_id: int,
        result: list[dict[str, Any]],
        *,
        was_cancelled: bool,
        unique_id: str | None = None,
        completed_by: int | None = None,
    ) -> int:
        """Create an annotation with a client ``unique_id``: the server refuses a second one with it (409), so
        resending after an ambiguous failure cannot duplicate it; a 409 returns the newest annotation of the task
        with this result (the earlier attempt's)."""
        unique_id = unique_id or str(uuid.uuid4())
        extra: dict[str, Any] = {} if completed_by is None else {"completed_by": completed_by}
        identity = _canonical(result, was_cancelled)

        def create() -> int:
            try:
                created = self.sdk.annotations.create(
                    id=task_id, result=result, was_cancelled=was_cancelled, unique_id=unique_id, **extra
                )
            except Exception as error:
                if _status(error) != 409:
                    raise
                same = [
                    a
                    for a in self._task_annotations(task_id)
                    if _canonical(a.get("result"), bool(a.get("was_cancelled"))) == identity
                ]
                if not same:
                    raise
                return int(same[-1]["id"])
            return int(created.id)

        return self._write(f"annotate task {task_id}", create, idempotent=True)

    def create_annotation(
        self, task_id: int, label: str, *, from_name: str = "label", to_name: str = "text", must_pass: bool = False
    ) -> int:
        return self._create_annotation(
            task_id, choice_result(label, from_name, to_name, must_pass=must_pass), was_cancelled=False
        )

    def update_annotation(
        self, annotation_id: int, label: str, *, from_name: str = "label", to_name: str = "text"
    ) -> None:
        self._write(
            f"update annotation {annotation_id}",
            partial(self.sdk.annotations.update, id=annotation_id, result=choice_result(label, from_name, to_name)),
            idempotent=True,
        )

    def delete_annotation(self, annotation_id: int) -> None:
        """Delete an annotation (a retry after an ambiguous failure first checks whether it is gone)."""

        def delete() -> bool:
            self.sdk.annotations.delete(id=annotation_id)
            return True

        def gone() -> bool | None:
            exists = self._exists(
                f"read annotation {annotation_id}", partial(self.sdk.annotations.get, id=annotation_id)
            )
            return None if exists else True

        self._write(f"delete annotation {annotation_id}", delete, find=gone)

    def skip_task(self, task_id: int) -> int:
        """Record a skip: a cancelled annotation with an empty result; returns its id."""
        return self._create_annotation(task_id, [], was_cancelled=True)
