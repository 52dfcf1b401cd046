"""Label Studio's REST API in memory, as much of it as :class:`LabelStudioClient` uses, behind an
``httpx.MockTransport``, with faults to inject: it isolates the client's retry logic from a real server.

Faults (:meth:`FakeLabelStudioAPI.fail`) act on the next requests matching a method and a path pattern:

- ``locked``: answer 500 "database is locked" without doing anything;
- ``locked-after``: do it, then answer 500 "database is locked" (Label Studio on SQLite committed, then failed);
- ``timeout-after``: do it, then time out (``httpx.ReadTimeout``);
- ``timeout-late``: time out at once, and do it after the *next* request was answered (a write that commits
  after the client has checked for it);
- ``refused``: the connection is refused (``httpx.ConnectError``), nothing is done;
- ``concurrent``: another client does the same just before (e.g. creates the same project), then this one;
- ``short`` (imports): create only the first half, answer 201 with what was created;
- ``lose-annotations`` (task imports): create the tasks without their annotations, answer 201 as if all were made.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx

from loopml.labelstudio import LabelStudioClient, RetryPolicy

URL = "http://labelstudio.test"
LOCKED = {"detail": "database is locked", "status_code": 500}
NO_WAIT = RetryPolicy(retries=3, first_wait_s=0.0, max_wait_s=0.0, budget_s=600.0, connect_retries=1)
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    mode: str
    times: int


@dataclass
class FakeProject:
    id: int
    title: str
    description: str
    label_config: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeTask:
    id: int
    project: int
    data: dict
    meta: dict
    updated_at: str
    annotations: list[dict] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)


def _json(status: int, body: Any = None) -> httpx.Response:
    return httpx.Response(status, json=body) if body is not None else httpx.Response(status)


class FakeLabelStudioAPI:
    """Projects, tasks, annotations and predictions in memory; ``requests`` logs ``(method, path)``."""

    def __init__(self) -> None:
        self.projects: dict[int, FakeProject] = {}
        self.tasks: dict[int, FakeTask] = {}
        self.requests: list[tuple[str, str]] = []
        self.webhooks: dict[int, dict[str, Any]] = {}
        self._faults: list[Fault] = []
        self._unique_ids: set[str] = set()
        self._late: list[Callable[[], Any]] = []
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)

    # --- for tests ----------------------------------------------------------------------------------------

    def fail(self, method: str, path: str, mode: str, times: int = 1) -> None:
        self._faults.append(Fault(method, re.compile(path), mode, times))

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.fullmatch(path, p))

    def client(self, **kwargs: Any) -> LabelStudioClient:
        kwargs.setdefault("retry", NO_WAIT)
        return LabelStudioClient(URL, "0" * 40, transport=httpx.MockTransport(self.handle), **kwargs)

    def add_project(self, title: str, description: str = "", label_config: str = "<View/>") -> int:
        project = FakeProject(next(self._ids), title, description, label_config)
        self.projects[project.id] = project
        return project.id

    def project_tasks(self, project_id: int) -> list[FakeTask]:
        return [t for t in self.tasks.values() if t.project == project_id]

    # --- the transport ------------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        late, self._late = self._late, []
        try:
            return self._answer(request, path)
        finally:
            for action in late:
                action()

    def _fault(self, method: str, path: str) -> str | None:
        for fault in self._faults:
            if fault.times > 0 and fault.method == method and fault.path.fullmatch(path):
                fault.times -= 1
                return fault.mode
        return None

    def _answer(self, request: httpx.Request, path: str) -> httpx.Response:
        method = request.method
        mode = self._fault(method, path)
        if mode == "locked":
            return _json(500, LOCKED)
        if mode == "refused":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        route = self._route(method, path)
        if route is None:
            return _json(404, {"detail": "Not found."})
        handler, args = route
        body = json.loads(request.content) if request.content else None
        query = {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()}
        if mode == "concurrent":
            handler(*args, body=body, query=query, mode=None)
        if mode == "timeout-late":
            self._late.append(lambda: handler(*args, body=body, query=query, mode=None))
            raise httpx.ReadTimeout("timed out", request=request)
        response = handler(*args, body=body, query=query, mode=mode)
        if mode == "locked-after":
            return _json(500, LOCKED)
        if mode == "timeout-after":
            raise httpx.ReadTimeout("timed out", request=request)
        return response

    def _route(self, method: str, path: str) -> tuple[Callable[..., httpx.Response], tuple] | None:
        routes: list[tuple[str, str, Callable[..., httpx.Response]]] = [
            ("GET", r"/health", self._health),
            ("GET", r"/api/projects/", self._list_projects),
            ("POST", r"/api/projects/", self._create_project),
            ("GET", r"/api/projects/(\d+)/", self._get_project),
            ("PATCH", r"/api/projects/(\d+)/", self._update_project),
            ("DELETE", r"/api/projects/(\d+)/", self._delete_project),
            ("POST", r"/api/projects/(\d+)/import", self._import_tasks),
            ("POST", r"/api/projects/(\d+)/import/predictions", self._import_predictions),
            ("GET", r"/api/tasks/", self._list_tasks),
            ("GET", r"/api/tasks/(\d+)/", self._get_task),
            ("DELETE", r"/api/tasks/(\d+)/", self._delete_task),
            ("GET", r"/api/tasks/(\d+)/annotations/", self._list_annotations),
            ("POST", r"/api/tasks/(\d+)/annotations/", self._create_annotation),
            ("GET", r"/api/annotations/(\d+)/", self._get_annotation),
            ("PATCH", r"/api/annotations/(\d+)/", self._update_annotation),
            ("DELETE", r"/api/annotations/(\d+)/", self._delete_annotation),
            ("GET", r"/api/predictions/", self._list_predictions),
            ("GET", r"/api/webhooks/", self._list_webhooks),
            ("POST", r"/api/webhooks/", self._create_webhook),
            ("DELETE", r"/api/webhooks/(\d+)/", self._delete_webhook),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                return handler, tuple(int(g) for g in match.groups())
        return None

    def _now(self) -> str:
        return (_EPOCH + timedelta(microseconds=next(self._clock))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    # --- webhooks -----------------------------------------------------------------------------------------

    def _list_webhooks(self, *, query: dict[str, str], **_: Any) -> httpx.Response:
        project = int(query["project"]) if query.get("project") else None
        return _json(200, [h for h in self.webhooks.values() if project is None or h["project"] == project])

    def _create_webhook(self, *, body: dict, **_: Any) -> httpx.Response:
        hook = {"id": next(self._ids), "organization": 1, **body}
        self.webhooks[hook["id"]] = hook
        return _json(201, hook)

    def _delete_webhook(self, hook_id: int, **_: Any) -> httpx.Response:
        return _json(204) if self.webhooks.pop(hook_id, None) else _json(404, {"detail": "Not found."})

    # --- projects -----------------------------------------------------------------------------------------

    def _health(self, **_: Any) -> httpx.Response:
        return _json(200, {"status": "UP"})

    def _project_json(self, project: FakeProject) -> dict[str, Any]:
        return {
            "id": project.id,
            "title": project.title,
            "description": project.description,
            "label_config": project.label_config,
            "task_number": len(self.project_tasks(project.id)),
            **project.extra,
        }

    def _list_projects(self, *, query: dict[str, str], **_: Any) -> httpx.Response:
        title = query.get("title", "").lower()
        found = [
            self._project_json(p)
            for p in sorted(self.projects.values(), key=lambda p: -p.id)
            if title in p.title.lower()
        ]
        page, size = int(query.get("page", 1)), int(query.get("page_size", 30))
        results = found[(page - 1) * size : page * size]
        if page > 1 and not results:
            return _json(404, {"detail": "Invalid page."})
        more = page * size < len(found)
        return _json(
            200,
            {
                "count": len(found),
                "next": f"{URL}/api/projects/?page={page + 1}" if more else None,
                "previous": None,
                "results": results,
            },
        )

    def _create_project(self, *, body: dict, **_: Any) -> httpx.Response:
        project_id = self.add_project(body["title"], body.get("description", ""), body.get("label_config", ""))
        return _json(201, self._project_json(self.projects[project_id]))

    def _get_project(self, project_id: int, **_: Any) -> httpx.Response:
        if project_id not in self.projects:
            return _json(404, {"detail": "Not found."})
        return _json(200, self._project_json(self.projects[project_id]))

    def _update_project(self, project_id: int, *, body: dict, **_: Any) -> httpx.Response:
        if project_id not in self.projects:
            return _json(404, {"detail": "Not found."})
        project = self.projects[project_id]
        for key, value in body.items():
            if key in ("title", "description", "label_config"):
                setattr(project, key, value)
            else:
                project.extra[key] = value
        return _json(200, self._project_json(project))

    def _delete_project(self, project_id: int, **_: Any) -> httpx.Response:
        if self.projects.pop(project_id, None) is None:
            return _json(404, {"detail": "Not found."})
        for task in self.project_tasks(project_id):
            del self.tasks[task.id]
        return _json(204)

    # --- tasks --------------------------------------------------------------------------------------------

    def _import_tasks(self, project_id: int, *, body: list[dict], mode: str | None, **_: Any) -> httpx.Response:
        if project_id not in self.projects:
            return _json(404, {"detail": "Not found."})
        batch = body[: len(body) // 2] if mode == "short" else body
        ids, annotations = [], 0
        for raw in batch:
            task = FakeTask(next(self._ids), project_id, raw["data"], dict(raw.get("meta") or {}), self._now())
            if mode != "lose-annotations":
                for annotation in raw.get("annotations") or []:
                    task.annotations.append(self._annotation(task, annotation))
            annotations += len(raw.get("annotations") or [])
            self.tasks[task.id] = task
            ids.append(task.id)
        return _json(
            201, {"task_count": len(ids), "annotation_count": annotations, "prediction_count": 0, "task_ids": ids}
        )

    def _counts(self, task: FakeTask) -> tuple[int, int]:
        cancelled = sum(1 for a in task.annotations if a["was_cancelled"])
        return len(task.annotations) - cancelled, cancelled

    def _matches(self, task: FakeTask, item: dict[str, Any]) -> bool:
        name = item["filter"].removeprefix("filter:tasks:")
        if name == "predictions_model_versions":  # like the server: any version containing one of the values
            return any(str(v) in str(p.get("model_version")) for v in item["value"] for p in task.predictions)
        total, cancelled = self._counts(task)
        actual = {
            "id": task.id,
            "meta": json.dumps(task.meta),
            "updated_at": task.updated_at,
            "total_annotations": total,
            "cancelled_annotations": cancelled,
        }[name]
        value, operator = item["value"], item["operator"]
        if operator == "contains":
            return str(value).lower() in str(actual).lower()
        if operator == "in_list":
            return actual in value
        compare = {
            "equal": lambda a, b: a == b,
            "greater": lambda a, b: a > b,
            "greater_or_equal": lambda a, b: a >= b,
            "less_or_equal": lambda a, b: a <= b,
        }[operator]
        return compare(actual, value)

    def _task_json(self, task: FakeTask, fields: str, include: str | None) -> dict[str, Any]:
        total, cancelled = self._counts(task)
        full: dict[str, Any] = {
            "id": task.id,
            "data": task.data,
            "meta": task.meta,
            "updated_at": task.updated_at,
            "created_at": task.updated_at,
            "total_annotations": total,
            "cancelled_annotations": cancelled,
        }
        if fields == "all":
            full["annotations"] = [self._public(a) for a in task.annotations]
            full["predictions"] = task.predictions
            full["annotations_ids"] = ",".join(str(a["id"]) for a in task.annotations)
        keep = set(include.split(",")) if include else set(full)
        return {k: v for k, v in full.items() if k in keep}

    def _list_tasks(self, *, query: dict[str, str], **_: Any) -> httpx.Response:
        spec = json.loads(query.get("query") or "{}")
        items = (spec.get("filters") or {}).get("items") or []
        found = [
            t
            for t in self.tasks.values()
            if t.project == int(query["project"]) and all(self._matches(t, item) for item in items)
        ]
        if spec.get("ordering") == ["-tasks:updated_at"]:
            found.sort(key=lambda t: t.updated_at, reverse=True)
        else:
            found.sort(key=lambda t: t.id)
        size = int(query.get("page_size", 100))
        tasks = [self._task_json(t, query.get("fields", "task_only"), query.get("include")) for t in found[:size]]
        return _json(200, {"total": len(found), "tasks": tasks})

    def _get_task(self, task_id: int, **_: Any) -> httpx.Response:
        if task_id not in self.tasks:
            return _json(404, {"detail": "Not found."})
        return _json(200, self._task_json(self.tasks[task_id], "all", None))

    def _delete_task(self, task_id: int, **_: Any) -> httpx.Response:
        if self.tasks.pop(task_id, None) is None:
            return _json(404, {"detail": "Not found."})
        return _json(204)

    # --- annotations and predictions ----------------------------------------------------------------------

    def _annotation(self, task: FakeTask, raw: dict[str, Any]) -> dict[str, Any]:
        now = self._now()
        task.updated_at = now
        return {
            "id": next(self._ids),
            "task": task.id,
            "result": raw.get("result") or [],
            "was_cancelled": bool(raw.get("was_cancelled")),
            "completed_by": raw.get("completed_by", 1),
            "created_at": now,
            "updated_at": now,
            "unique_id": raw.get("unique_id"),
        }

    @staticmethod
    def _public(annotation: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in annotation.items() if k != "unique_id"}

    def _find_annotation(self, annotation_id: int) -> tuple[FakeTask, dict[str, Any]] | None:
        for task in self.tasks.values():
            for annotation in task.annotations:
                if annotation["id"] == annotation_id:
                    return task, annotation
        return None

    def _list_annotations(self, task_id: int, **_: Any) -> httpx.Response:
        if task_id not in self.tasks:
            return _json(404, {"detail": "Not found."})
        return _json(200, [self._public(a) for a in self.tasks[task_id].annotations])

    def _create_annotation(self, task_id: int, *, body: dict, **_: Any) -> httpx.Response:
        if task_id not in self.tasks:
            return _json(404, {"detail": "Not found."})
        unique_id = body.get("unique_id")
        if unique_id in self._unique_ids:
            return _json(409, {"detail": "Annotation with this unique id already exists", "status_code": 409})
        if unique_id:
            self._unique_ids.add(unique_id)
        task = self.tasks[task_id]
        annotation = self._annotation(task, body)
        task.annotations.append(annotation)
        return _json(201, self._public(annotation))

    def _get_annotation(self, annotation_id: int, **_: Any) -> httpx.Response:
        found = self._find_annotation(annotation_id)
        return _json(200, self._public(found[1])) if found else _json(404, {"detail": "Not found."})

    def _update_annotation(self, annotation_id: int, *, body: dict, **_: Any) -> httpx.Response:
        found = self._find_annotation(annotation_id)
        if found is None:
            return _json(404, {"detail": "Not found."})
        task, annotation = found
        annotation.update(result=body.get("result", annotation["result"]), updated_at=self._now())
        task.updated_at = annotation["updated_at"]
        return _json(200, self._public(annotation))

    def _delete_annotation(self, annotation_id: int, **_: Any) -> httpx.Response:
        found = self._find_annotation(annotation_id)
        if found is None:
            return _json(404, {"detail": "Not found."})
        task, annotation = found
        task.annotations.remove(annotation)
        task.updated_at = self._now()
        return _json(204)

    def _import_predictions(self, project_id: int, *, body: list[dict], mode: str | None, **_: Any) -> httpx.Response:
        for raw in body:
            task = self.tasks.get(raw["task"])
            if task is None or task.project != project_id:
                return _json(400, {"detail": f"task {raw['task']} is not in project {project_id}"})
        batch = body[: len(body) // 2] if mode == "short" else body
        for raw in batch:
            self.tasks[raw["task"]].predictions.append({"id": next(self._ids), **raw})
        return _json(201, {"created": len(batch)})

    def _list_predictions(self, *, query: dict[str, str], **_: Any) -> httpx.Response:
        task = self.tasks.get(int(query["task"]))
        return _json(200, task.predictions if task else [])
