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

The SDK (about 2 s to import) is imported on the first API call, not by :meth:`health`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

    from loopml.config import Settings

CURSOR_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# ``include`` restricts the serialized fields, of the nested annotations too (REST flex fields): listing only
# these makes task listings about 2.5x faster than ``fields=all``.
TASK_FIELDS = "id,updated_at,data,meta,annotations,result,was_cancelled,completed_by,created_at"


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
    raws = [a if isinstance(a, dict) else a.model_dump() for a in (item.annotations or [])]
    return TaskRecord(
        task_id=int(item.id),
        data=dict(item.data or {}),
        updated_at=format_timestamp(item.updated_at),
        annotations=[_annotation(a, int(item.id), from_name) for a in raws],
        meta=dict(item.meta or {}),
    )


class LabelStudioClient:
    """LoopML's operations on Label Studio; every failure is a :class:`LabelStudioUnavailable` or
    :class:`LabelStudioError`."""

    page_size = 1000  # tasks per listing request (with annotations)
    id_page_size = 10_000  # task ids per listing request
    import_batch = 1000  # tasks per import request

    def __init__(self, url: str, api_key: str, timeout: float = 10.0, *, max_retries: int = 1) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.bulk_timeout = max(30.0, timeout)  # imports and large listings take seconds on the server
        self._api_key = api_key
        self._max_retries = max_retries
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
    def sdk(self) -> LabelStudio:
        """The underlying ``label_studio_sdk.LabelStudio`` (created on first use)."""
        if self._client is None:
            from label_studio_sdk import LabelStudio

            self._client = LabelStudio(
                base_url=self.url, api_key=self._api_key, timeout=self.timeout, max_retries=self._max_retries
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
            hint = (
                "; the API key in secrets/labelstudio.json was rejected" if error.status_code == 401 else ""
            )
            raise LabelStudioError(
                f"Label Studio: {what} failed (HTTP {error.status_code}): {_short(error.body)}{hint}"
            ) from error

    # --- reachability -------------------------------------------------------------------------------------

    def _probe(self) -> str | None:
        """``None`` if ``/health`` answers 200, else the reason it does not."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=min(self.timeout, 5.0)) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code} from /health"
        except urllib.error.URLError as error:
            return str(error.reason)
        except (OSError, ValueError) as error:
            return str(error) or type(error).__name__

    def health(self) -> bool:
        """Whether ``GET /health`` answers 200 (never raises)."""
        return self._probe() is None

    def ensure_reachable(self) -> None:
        """Raise :class:`LabelStudioUnavailable` unless ``/health`` answers."""
        reason = self._probe()
        if reason is not None:
            raise LabelStudioUnavailable.at(self.url, reason)

    # --- projects -------------------------------------------------------------------------------------------

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        with self._api(f"create project {title!r}"):
            return int(
                self.sdk.projects.create(title=title, label_config=label_config, description=description).id
            )

    def delete_project(self, project_id: int) -> None:
        with self._api(f"delete project {project_id}"):
            self.sdk.projects.delete(id=project_id)

    def get_label_config(self, project_id: int) -> str:
        with self._api(f"read the label config of project {project_id}"):
            return str(self.sdk.projects.get(id=project_id).label_config)

    def update_label_config(self, project_id: int, label_config: str) -> None:
        """Replace the label config (the server does not check it against existing annotations)."""
        with self._api(f"update the label config of project {project_id}"):
            self.sdk.projects.update(id=project_id, label_config=label_config)

    # --- tasks ----------------------------------------------------------------------------------------------

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        """Import ``[{"data": {...}, "meta": {...}}, ...]`` in batches; returns how many were created."""
        created = 0
        for start in range(0, len(tasks), self.import_batch):
            batch = tasks[start : start + self.import_batch]
            with self._api(f"import {len(batch)} tasks into project {project_id}"):
                response = self.sdk.projects.import_tasks(
                    id=project_id, request=batch, request_options={"timeout": self.bulk_timeout}
                )
            created += int(response.task_count or 0)
        return created

    def _page(
        self, project_id: int, query: dict[str, Any], *, include: str, with_annotations: bool, size: int
    ) -> tuple[list[Any], int]:
        """One page of tasks (the first ``size`` matching ``query``) and how many tasks match in all."""
        with self._api(f"list tasks of project {project_id}"):
            pager = self.sdk.tasks.list(
                project=project_id,
                fields="all" if with_annotations else "task_only",
                include=include,
                page=1,
                page_size=size,
                query=json.dumps(query),
                request_options={"timeout": self.bulk_timeout if size > 100 else self.timeout},
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
            batch, total = self._page(
                project_id, query, include=include, with_annotations=with_annotations, size=size
            )
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
        self, project_id: int, since: str | None, *, from_name: str = "label"
    ) -> list[TaskRecord]:
        """Tasks updated strictly after ``since`` (every task with an annotation, skipped ones included, when
        ``None``), with all their annotations, in id order.

        Bounded by the newest ``updated_at`` seen when the call starts, so ``max(t.updated_at)`` of the result
        is a safe next cursor. A task whose annotations were all deleted comes back with ``annotations=[]``.
        """
        upper = self.latest_task_update(project_id)
        if upper is None:
            return []
        bound = _filter("updated_at", "less_or_equal", "Datetime", upper)
        if since is not None:
            after = _filter("updated_at", "greater", "Datetime", format_timestamp(since))
            items = self._task_items(project_id, [after, bound])
        else:
            by_id = {
                t.id: t
                for t in self._task_items(
                    project_id, [_filter("total_annotations", "greater", "Number", 0), bound]
                )
            }
            for t in self._task_items(
                project_id, [_filter("cancelled_annotations", "greater", "Number", 0), bound]
            ):
                by_id.setdefault(t.id, t)
            items = [by_id[i] for i in sorted(by_id)]
        return [_task(item, from_name) for item in items]

    def _task_items(self, project_id: int, filters: list[dict[str, Any]]) -> list[Any]:
        return self._list(
            project_id, filters, include=TASK_FIELDS, with_annotations=True, page_size=self.page_size
        )

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

    def task_texts(self, project_id: int) -> dict[int, str]:
        """``{task id: text}`` of every task in the project (for de-duplicating new tasks)."""
        items = self._list(
            project_id, [], include="id,data", with_annotations=False, page_size=self.id_page_size
        )
        return {int(item.id): str((item.data or {}).get("text", "")) for item in items}

    # --- predictions (pre-annotations) ---------------------------------------------------------------------

    def import_predictions(self, project_id: int, predictions: list[Prediction]) -> int:
        """Attach model predictions to existing tasks, in bulk; returns how many were created."""
        created = 0
        for start in range(0, len(predictions), self.import_batch):
            batch = [p.request() for p in predictions[start : start + self.import_batch]]
            with self._api(f"import {len(batch)} predictions into project {project_id}"):
                response = self.sdk.projects.import_predictions(
                    id=project_id, request=batch, request_options={"timeout": self.bulk_timeout}
                )
            created += int(getattr(response, "created", None) or len(batch))
        return created

    def set_model_version(self, project_id: int, model_version: str) -> None:
        """Show ``model_version``'s predictions as pre-annotations in the labelling UI, and queue the tasks it is
        least sure of first ("Label All Tasks" follows Label Studio's uncertainty sampling: lowest prediction
        score of that version first)."""
        with self._api(f"set the model version of project {project_id}"):
            self.sdk.projects.update(
                id=project_id, model_version=model_version, show_collab_predictions=True, sampling=UNCERTAINTY_SAMPLING
            )

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        """The predictions on one task: ``[{"model_version", "score", "label"}]``."""
        with self._api(f"list predictions of task {task_id}"):
            found = self.sdk.predictions.list(task=task_id)
        return [
            {"model_version": p.model_version, "score": p.score, "label": extract_label(p.result)} for p in found
        ]

    # --- annotations --------------------------------------------------------------------------------------

    def create_annotation(
        self, task_id: int, label: str, *, from_name: str = "label", to_name: str = "text", must_pass: bool = False
    ) -> int:
        with self._api(f"annotate task {task_id}"):
            created = self.sdk.annotations.create(
                id=task_id, result=choice_result(label, from_name, to_name, must_pass=must_pass), was_cancelled=False
            )
        return int(created.id)

    def update_annotation(
        self, annotation_id: int, label: str, *, from_name: str = "label", to_name: str = "text"
    ) -> None:
        with self._api(f"update annotation {annotation_id}"):
            self.sdk.annotations.update(id=annotation_id, result=choice_result(label, from_name, to_name))

    def delete_annotation(self, annotation_id: int) -> None:
        with self._api(f"delete annotation {annotation_id}"):
            self.sdk.annotations.delete(id=annotation_id)

    def skip_task(self, task_id: int) -> int:
        """Record a skip: a cancelled annotation with an empty result; returns its id."""
        with self._api(f"skip task {task_id}"):
            created = self.sdk.annotations.create(id=task_id, result=[], was_cancelled=True)
        return int(created.id)
